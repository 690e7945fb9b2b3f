"""The public interface is documented: every name a user depends on appears in the pages.

The names come from the product contract, SPEC.md (kept beside the repository, not in
it): its configuration table, its HTTP table, its channel protocol and its make
targets. They are copied below once, as data, so that this test needs no file outside
the repository; when the contract changes, change them here. The pages are the ones the
docs test reads (README.md, stage*/README.md, docs/*.md), code blocks included.

The second half ties the copied names to the code, so the list cannot drift into names
that exist nowhere: each variable is read by `shared/settings.py`, each route is served,
each target is listed by `make help`.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib

import pytest

from shared import endpoint
from tests.helpers import docs_runner
from tests.helpers.docs_runner import ROOT

# From SPEC.md, "Configuration": every environment variable (GOSSIP_SECRET is named in
# the DISCOVERY row).
ENV_VARS = (
    "PORT",
    "HOST",
    "NODE_NAME",
    "REDIS_URL",
    "CLUSTER_COOKIE",
    "DISCOVERY",
    "GOSSIP_SECRET",
    "DNS_SERVICE",
    "NODE_BASENAME",
    "POD_IP",
    "DNS_POLL_INTERVAL",
    "DNS_NAMESERVER",
    "PING_INTERVAL",
    "HISTORY_SIZE",
    "ALLOWED_ORIGINS",
    "RATE_LIMIT",
    "CONSOLE_PORT",  # "Added 2026-12-05"
)

# From SPEC.md, "HTTP": method and route, as the pages should write them.
ENDPOINTS = (
    "GET /",
    "GET /socket/websocket?vsn=2.0.0",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /api/nodes",
    "POST /api/nodes/connect",
    "DELETE /api/nodes/<name>",
    "POST /api/drain",
)

# From SPEC.md, "Make targets", and the options it gives them.
MAKE_TARGETS = (
    "help",
    "stage1",
    "stage2",
    "stage3",
    "stage3-scale",
    "stage3-status",
    "stage3-down",
    "test",
    "test-fast",
    "bench",
    "lint",
)
MAKE_OPTIONS = ("NODES", "BASE_PORT", "DISCOVERY", "K8S", "REPLICAS")

# From SPEC.md, "Channel protocol": events, refusal reasons and close codes; and the CLI.
EVENTS = (
    "phx_join",
    "phx_reply",
    "phx_leave",
    "phx_close",
    "heartbeat",
    "new:msg",
    "user:entered",
    "join",
    "presence_state",
    "presence_diff",
)
REASONS = ("unauthorized", "unmatched topic", "rate_limited", "unavailable")
CLOSE_CODES = ("1001", "1007", "1009")
CLI_COMMANDS = ("chatctl nodes", "chatctl connect", "chatctl disconnect", "chatctl drain", "chatctl console")

PAGES = docs_runner.pages()
DOCS = "\n".join(page.text for page in PAGES)


def undocumented(names: tuple[str, ...] | list[str], pattern: str) -> list[str]:
    """The names for which `pattern` (with `{}` standing for the escaped name) finds nothing."""
    return [name for name in names if not re.search(pattern.format(re.escape(name)), DOCS)]


def settings_variables() -> set[str]:
    """The variables each stage's settings read."""
    sources = [
        ROOT / "shared" / "settings.py",
        ROOT / "stage2_cluster" / "settings.py",
        ROOT / "stage3_k8s" / "settings.py",
    ]
    return {name for source in sources for name in re.findall(r'get\("([A-Z_]+)"\)', source.read_text())}


def served_routes() -> set[str]:
    """Routes declared with `@bp.get("/...")` and the like in the core and the node API,
    and the socket endpoint in front of them."""
    sources = [ROOT / "shared" / "app.py", ROOT / "stage2_cluster" / "api.py"]
    found = {f"GET {endpoint.PATH}"}
    for source in sources:
        for method, path in re.findall(r'@bp\.(get|post|delete|websocket)\("([^"]+)"\)', source.read_text()):
            found.add(f"{'GET' if method == 'websocket' else method.upper()} {path}")
    return found


def make_help_targets() -> set[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    return {line.split()[0] for line in docs_runner.normalize(result.stdout) if line.strip()}


# The pages name every public name ------------------------------------------------------


def test_the_pages_are_found() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "docs/README.md", "docs/protocol.md"} <= names


def test_every_environment_variable_is_documented() -> None:
    # Variables the settings read beyond the contract (NODE_DOWN_AFTER) are public too.
    names = sorted(set(ENV_VARS) | settings_variables())
    missing = undocumented(names, r"(?<![A-Z0-9_]){}(?![A-Z0-9_])")
    assert not missing, f"environment variables no page mentions: {missing}"


def test_every_endpoint_is_documented_with_its_method() -> None:
    missing = undocumented(ENDPOINTS, r"{}(?![\w/.-])")
    assert not missing, f"endpoints no page mentions as `METHOD /path`: {missing}"


def test_every_make_target_is_documented_as_a_command() -> None:
    mentioned = {target for page in PAGES for target in docs_runner.make_targets(page)}
    missing = sorted(set(MAKE_TARGETS) - mentioned)
    assert not missing, f"make targets no page shows as `make <target>`: {missing}"


def test_every_make_option_is_documented_with_a_value() -> None:
    missing = undocumented(MAKE_OPTIONS, r"(?<![A-Z0-9_]){}=\S")
    assert not missing, f"make options no page shows as NAME=value: {missing}"


def test_every_event_reason_and_close_code_is_documented() -> None:
    missing = undocumented(EVENTS, r"[`\"]{}[`\"]") + undocumented(REASONS, r"[`\"]{}[`\"]")
    missing += undocumented(CLOSE_CODES, r"(?<!\d){}(?!\d)")
    assert not missing, f"protocol names no page mentions: {missing}"


def test_every_chatctl_command_is_documented() -> None:
    missing = undocumented(CLI_COMMANDS, r"{}\b")
    assert not missing, f"chatctl commands no page mentions: {missing}"


# The copied names are the code's names ----------------------------------------------------


@pytest.mark.parametrize("name", ENV_VARS)
def test_each_listed_variable_is_read_by_the_settings(name: str) -> None:
    assert name in settings_variables()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_each_listed_endpoint_is_served(endpoint: str) -> None:
    assert endpoint.split("?")[0] in served_routes()


@pytest.mark.slow  # runs `make help`
def test_each_listed_make_target_is_in_make_help() -> None:
    missing = sorted(set(MAKE_TARGETS) - make_help_targets())
    assert not missing, f"listed make targets that `make help` does not list: {missing}"


def test_each_listed_make_option_is_set_in_the_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text()
    missing = [name for name in MAKE_OPTIONS if not re.search(rf"^{name} \?=", makefile, re.MULTILINE)]
    assert not missing, f"listed make options the Makefile does not set: {missing}"


def test_the_pages_python_scripts_need_only_what_make_stage1_installs() -> None:
    """A learner who ran only `make stage1` or `make stage2` has the runtime dependencies,
    not the test extras: every module the pages' `.venv/bin/python` scripts import must be
    the standard library's or come with a runtime dependency."""
    runtime = {
        re.split(r"[=<>;\[ ]", requirement, maxsplit=1)[0].lower()
        for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    providers = importlib.metadata.packages_distributions()
    script = re.compile(r"\.venv/bin/python - <<'EOF'\n(?P<code>.*?)\nEOF", re.DOTALL)
    imported: set[str] = set()
    for page in docs_runner.pages():
        for match in script.finditer(page.text):
            for node in ast.walk(ast.parse(match["code"])):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported.add(node.module.split(".")[0])
    assert {"websockets", "json"} <= imported, "the walker sees the pages' scripts"
    outside = sorted(
        name
        for name in imported
        if name not in sys.stdlib_module_names
        and not {dist.lower() for dist in providers.get(name, [])} & runtime
        and name not in ("shared", "stage1_dev", "stage2_cluster", "stage3_k8s")
    )
    assert outside == [], "imported by a page's script but not installed by make stage1"
