"""Settings.from_env: defaults, typed values, and one clear error naming each bad variable.

Each stage reads its own variables: the core's `Settings`, stage 2's `ClusterSettings`
(Redis, the cookie, heartbeats, gossip), stage 3's `K8sSettings` (DNS, the pod's address).
`K8sSettings` reads every variable, so the value checks run through it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.server import load_settings
from shared.settings import DISCOVERY_HOMES, ConfigError, Settings
from stage2_cluster.settings import ClusterSettings
from stage3_k8s.settings import K8sSettings
from tests.helpers.paths import ROOT

COOKIE = "0123456789abcdef-cookie"
CLUSTER = {"REDIS_URL": "redis://127.0.0.1:6379/0", "CLUSTER_COOKIE": COOKIE}

# Every variable the settings read; the real-process test removes them from the inherited environment.
CONFIG_VARS = (
    "PORT",
    "HOST",
    "NODE_NAME",
    "REDIS_URL",
    "CLUSTER_COOKIE",
    "DISCOVERY",
    "DNS_SERVICE",
    "NODE_BASENAME",
    "POD_IP",
    "DNS_POLL_INTERVAL",
    "DNS_NAMESERVER",
    "PING_INTERVAL",
    "HISTORY_SIZE",
    "ALLOWED_ORIGINS",
    "RATE_LIMIT",
    "MAX_CONNECTIONS",
    "ENTERED_NAMES",
    "NODE_DOWN_AFTER",
    "GOSSIP_SECRET",
    "CONSOLE_PORT",
)


def test_empty_environment_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})

    assert settings.port == 4000
    assert settings.host == "127.0.0.1"
    assert settings.node_name == "nonode@nohost"
    assert settings.discovery == "none"
    assert settings.ping_interval == 5
    assert settings.history_size == 100
    assert settings.allowed_origins == ()
    assert settings.rate_limit == (10.0, 20)
    assert settings.max_connections == 1000
    assert settings.entered_names == 10
    assert settings.console_port is None  # no console


def test_each_stage_adds_its_own_defaults() -> None:
    cluster = ClusterSettings.from_env(CLUSTER)
    assert cluster.discovery == "redis"
    assert cluster.node_down_after == 5
    assert cluster.gossip_secret is None
    pod = K8sSettings.from_env(CLUSTER)
    assert pod.discovery == "dns"
    assert pod.dns_service == "chat-nodes"
    assert pod.node_basename == "chat"
    assert pod.pod_ip is None
    assert pod.dns_poll_interval == 5
    assert pod.dns_nameserver is None


def test_the_core_reads_only_what_the_core_uses() -> None:
    core = set(Settings.__dataclass_fields__)
    assert not core & {"redis_url", "cluster_cookie", "node_down_after", "gossip_secret", "pod_ip", "dns_service"}
    assert not set(ClusterSettings.__dataclass_fields__) & {"pod_ip", "dns_service", "dns_nameserver"}


@pytest.mark.parametrize(
    ("settings_class", "stage"),
    [(Settings, "stage 1"), (ClusterSettings, "stage 2"), (K8sSettings, "stage 3")],
    ids=["stage1", "stage2", "stage3"],
)
def test_a_discovery_mode_of_another_stage_names_the_stage_that_has_it(
    settings_class: type[Settings], stage: str
) -> None:
    for mode, home in DISCOVERY_HOMES.items():
        if mode in settings_class.DISCOVERY_MODES:
            continue
        with pytest.raises(ConfigError) as raised:
            settings_class.from_env({**CLUSTER, "DISCOVERY": mode})
        assert raised.value.var == "DISCOVERY"
        assert str(raised.value) == (
            f"DISCOVERY: {mode} is a mode of {home}; this node has {', '.join(settings_class.DISCOVERY_MODES)}"
        )
        assert not home.startswith(stage)


def test_stage_defaults_apply_when_the_variable_is_unset() -> None:
    settings = Settings.from_env({}, node_name="a@localhost", discovery="none")

    assert settings.node_name == "a@localhost"


def test_blank_variable_means_the_default() -> None:
    settings = Settings.from_env({"PORT": "  ", "HISTORY_SIZE": ""})

    assert settings.port == 4000
    assert settings.history_size == 100


def test_variables_are_parsed_into_typed_values() -> None:
    settings = K8sSettings.from_env(
        {
            **CLUSTER,
            "PORT": " 4001 ",
            "HOST": "0.0.0.0",
            "NODE_NAME": "b@localhost",
            "DNS_SERVICE": "chat-nodes.default.svc.cluster.local",
            "NODE_BASENAME": "chatlab",
            "POD_IP": "10.0.0.7",
            "DNS_POLL_INTERVAL": "0.5",
            "DNS_NAMESERVER": "127.0.0.1:5353",
            "PING_INTERVAL": "0",
            "HISTORY_SIZE": "7",
            "ALLOWED_ORIGINS": "http://localhost:4000, https://chat.example/",
            "RATE_LIMIT": "2.5/7",
            "MAX_CONNECTIONS": "250",
            "ENTERED_NAMES": "0",
            "NODE_DOWN_AFTER": "3",
            "CONSOLE_PORT": " 4100 ",
        }
    )

    assert settings.port == 4001
    assert settings.host == "0.0.0.0"
    assert settings.node_name == "b@localhost"
    assert settings.dns_service == "chat-nodes.default.svc.cluster.local"
    assert settings.node_basename == "chatlab"
    assert settings.pod_ip == "10.0.0.7"
    assert settings.dns_poll_interval == 0.5
    assert settings.dns_nameserver == ("127.0.0.1", 5353)
    assert settings.ping_interval == 0
    assert settings.history_size == 7
    assert settings.allowed_origins == ("http://localhost:4000", "https://chat.example")
    assert settings.rate_limit == (2.5, 7)
    assert settings.max_connections == 250
    assert settings.entered_names == 0
    assert settings.node_down_after == 3
    assert settings.console_port == 4100


def test_allowed_origins_accepts_a_star() -> None:
    assert Settings.from_env({"ALLOWED_ORIGINS": "*"}).allowed_origins == ("*",)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "0"),
        ("PORT", "65536"),
        ("PORT", "-1"),
        ("PORT", "80.5"),
        ("HOST", "bad host"),
        ("HOST", "host/with/slash"),
        ("NODE_NAME", "bad"),
        ("NODE_NAME", "a@"),
        ("NODE_NAME", "a b@localhost"),
        ("REDIS_URL", "http://x"),
        ("REDIS_URL", "redis://"),
        ("DISCOVERY", "bogus"),
        ("DISCOVERY", "none"),
        ("DNS_SERVICE", "chat nodes"),
        ("DNS_SERVICE", "chat/nodes"),
        ("NODE_BASENAME", "chat app"),
        ("POD_IP", "10.0.0"),
        ("DNS_POLL_INTERVAL", "0"),
        ("DNS_POLL_INTERVAL", "often"),
        ("DNS_NAMESERVER", "resolver.local:53"),
        ("DNS_NAMESERVER", "127.0.0.1:99999"),
        ("PING_INTERVAL", "-1"),
        ("PING_INTERVAL", "soon"),
        ("PING_INTERVAL", "nan"),
        ("HISTORY_SIZE", "-1"),
        ("HISTORY_SIZE", "1.5"),
        ("HISTORY_SIZE", "many"),
        ("ALLOWED_ORIGINS", "ftp://x"),
        ("ALLOWED_ORIGINS", "http://localhost:4000,example.com"),
        ("ALLOWED_ORIGINS", "http://x/path"),
        ("RATE_LIMIT", "x"),
        ("RATE_LIMIT", "10"),
        ("RATE_LIMIT", "0/20"),
        ("RATE_LIMIT", "10/0"),
        ("MAX_CONNECTIONS", "0"),
        ("MAX_CONNECTIONS", "1e3"),
        ("MAX_CONNECTIONS", "lots"),
        ("ENTERED_NAMES", "-1"),
        ("ENTERED_NAMES", "1001"),
        ("ENTERED_NAMES", "2.5"),
        ("NODE_DOWN_AFTER", "0"),
        ("GOSSIP_SECRET", "short"),
        ("CONSOLE_PORT", "0"),
        ("CONSOLE_PORT", "70000"),
        ("CONSOLE_PORT", "abc"),
        ("CONSOLE_PORT", ""),
        ("CONSOLE_PORT", "  "),
    ],
)
def test_bad_value_raises_config_error_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        K8sSettings.from_env({**CLUSTER, var: value})

    assert raised.value.var == var
    message = str(raised.value)
    assert message.startswith(f"{var}: ")
    assert "\n" not in message


@pytest.mark.parametrize("env", [{"REDIS_URL": "redis://127.0.0.1:6379/0"}, {"DISCOVERY": "manual"}])
def test_clustered_node_without_cookie_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as raised:
        ClusterSettings.from_env(env)

    assert raised.value.var == "CLUSTER_COOKIE"
    assert str(raised.value).startswith("CLUSTER_COOKIE: ")


@pytest.mark.parametrize("cookie", ["short", "x" * 15, "0123456789abcdef\x07"])
def test_clustered_node_with_short_or_unprintable_cookie_is_refused(cookie: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ClusterSettings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0", "CLUSTER_COOKIE": cookie})

    assert raised.value.var == "CLUSTER_COOKIE"


def test_clustered_node_with_a_long_cookie_starts_and_hides_the_cookie_from_repr() -> None:
    settings = ClusterSettings.from_env(CLUSTER)

    assert settings.cluster_cookie == COOKIE
    assert COOKIE not in repr(settings)


def test_stage1_refuses_a_redis_url() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(Settings, CLUSTER)

    assert raised.value.var == "REDIS_URL"


def test_stage1_refuses_discovery() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(Settings, {"DISCOVERY": "manual", "CLUSTER_COOKIE": COOKIE})

    assert raised.value.var == "DISCOVERY"


def test_clustered_stage_requires_a_redis_url() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(ClusterSettings, {"DISCOVERY": "manual", "CLUSTER_COOKIE": COOKIE})

    assert raised.value.var == "REDIS_URL"


def run_node(module: str, env: dict[str, str]) -> tuple[int, list[str]]:
    """`python -m module` with `env` instead of any settings inherited from ours: its exit
    code and the lines it printed."""
    clean = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    result = subprocess.run(
        [sys.executable, "-m", module], cwd=ROOT, env=clean | env, capture_output=True, text=True, timeout=30
    )
    return result.returncode, [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize(("var", "value"), [("PORT", "abc"), ("HISTORY_SIZE", "-1")])
def test_node_process_with_bad_config_exits_nonzero_with_one_line_naming_the_variable(var: str, value: str) -> None:
    code, lines = run_node("stage1_dev", {var: value})

    assert code != 0
    assert len(lines) == 1, lines
    assert var in lines[0]
    assert value in lines[0]


@pytest.mark.slow
def test_stage2_with_dns_discovery_stops_with_one_line_naming_stage3() -> None:
    """It used to pass validation and then discover nothing: stage 2 has no `dns` branch."""
    code, lines = run_node("stage2_cluster", {**CLUSTER, "DISCOVERY": "dns"})

    assert code == 2
    assert lines == [
        "config error: DISCOVERY: dns is a mode of stage 3 (python -m stage3_k8s); this node has manual, redis, gossip"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("value", ["0", "70000", "abc", ""])
def test_a_bad_console_port_stops_the_node_with_one_line(value: str) -> None:
    """Blank too, unlike the other variables: blank would mean no console, which is not
    what someone who set CONSOLE_PORT meant."""
    code, lines = run_node("stage1_dev", {"CONSOLE_PORT": value})

    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("config error: CONSOLE_PORT: must be ")
    assert lines[0].endswith(f"between 1 and 65535, got {value!r}")
