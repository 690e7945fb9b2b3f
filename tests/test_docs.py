"""The docs run: every documented command is executed and its output compared.

Convention for README.md, stage*/README.md and docs/*.md:

- A fenced block with the info string `sh verify` is a command a learner types, run with
  bash from the repository root (`set -e -o pipefail`, 60 s at most).
- If the next fenced block has the info string `text expected`, the command's output
  (stdout and stderr, colour codes removed) must match it: line by line, exactly, after
  trailing whitespace is stripped; a line `...` stands for any number of lines and
  `<any>` inside a line for any text (ids, timestamps, refs).
- A page declares what its commands need with an HTML comment, `<!-- verify-with: stage1 -->`.
  Each name is a key of ENVIRONMENTS below: a context manager that starts what the page
  needs and yields the text to rewrite in the commands (`localhost:4000` becomes the port
  the test chose) and extra environment variables. The commands of a page run in order
  against one environment, so a later block sees what an earlier one did. A page without
  the comment runs its commands with nothing started. A later stage teaches the docs its
  own setup (Redis and three nodes, say) by adding an entry to ENVIRONMENTS.

Also checked: relative links and repository paths in backticks exist, and `make help`
lists every target the pages mention.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stage3_k8s import compose_lab
from tests import containers, docs_runner
from tests.cluster import Cluster, RedisServer
from tests.docs_runner import ROOT, Page
from tests.support import running_node

COMMAND_TIMEOUT = 60.0

# Files that another test writes, checked there: the browser test's screenshot.
GENERATED = {"docs/img/stage1.png"}


@dataclass
class DocsEnv:
    replacements: dict[str, str] = field(default_factory=dict)  # text in a command -> text to run
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the commands

    def merge(self, other: DocsEnv) -> None:
        self.replacements.update(other.replacements)
        self.env.update(other.env)


@contextlib.contextmanager
def stage1() -> Iterator[DocsEnv]:
    """A real `python -m stage1_dev`, as `make stage1` runs it, on a free port."""
    with running_node("stage1_dev") as node:
        address = f"127.0.0.1:{node.port}"
        yield DocsEnv({"localhost:4000": address, "127.0.0.1:4000": address})


@contextlib.contextmanager
def stage2() -> Iterator[DocsEnv]:
    """What `make stage2 NODES=3 DISCOVERY=manual` starts: a real redis-server and nodes
    a@localhost, b@localhost, c@localhost (`python -m stage2_cluster`), not yet connected,
    on free ports, sharing a known cookie. The cookie is exported as a learner who ran
    `export CLUSTER_COOKIE=$(cat .stage2/cookie)` has it; CHAT_URL points `chatctl` at
    node a, where it looks by default."""
    with RedisServer() as redis, Cluster(redis, discovery="manual") as cluster:
        cluster.start("a", "b", "c")
        redis_address = f"127.0.0.1:{redis.port}"
        replacements = {"localhost:6379": redis_address, "127.0.0.1:6379": redis_address}
        for name, documented in zip("abc", (4000, 4001, 4002), strict=True):
            address = f"127.0.0.1:{cluster.node(name).port}"
            replacements |= {f"localhost:{documented}": address, f"127.0.0.1:{documented}": address}
        env = {"CLUSTER_COOKIE": cluster.cookie, "CHAT_URL": f"http://{replacements['localhost:4000']}"}
        yield DocsEnv(replacements, env)


@contextlib.contextmanager
def compose() -> Iterator[DocsEnv]:
    """The real Docker engine for `make stage3-compose` and `docker compose`, under a project
    of its own (`chatlab-docs`, its secrets in `.stage3/chatlab-docs.env`), so that a learner's
    `chatlab` is left alone. Nothing is pulled: the stand-in base images are built first
    (once; over a minute, longer than one command may take). Whatever the page started is
    removed at the end, as `make stage3-compose-down` does."""
    if reason := containers.docker_unavailable():
        pytest.skip(reason)
    containers.stand_in_images()
    project = "chatlab-docs"
    with tempfile.TemporaryDirectory(prefix="chatlab-docker-config-") as config:
        env = {**containers.TEST_ENV, "COMPOSE_PROJECT_NAME": project}
        env |= containers.compose_as_docker_plugin(Path(config))
        try:
            yield DocsEnv({".stage3/chatlab.env": f".stage3/{project}.env"}, env)
        finally:
            compose_lab.down(compose_lab.Lab(project, env=env))


ENVIRONMENTS: dict[str, Callable[[], AbstractContextManager[DocsEnv]]] = {
    "stage1": stage1,
    "stage2": stage2,
    "compose": compose,
}

PAGES = docs_runner.pages()
PAGE_IDS = [page.name for page in PAGES]


def learner_environment() -> dict[str, str]:
    """Our environment as a learner's terminal has it: not inside `make test`, whose
    variables would make a nested `make` print "Entering directory" lines."""
    make_vars = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}
    return {name: value for name, value in os.environ.items() if name not in make_vars}


def run(command: str, docs_env: DocsEnv) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", docs_runner.rewrite(command, docs_env.replacements)],
        cwd=ROOT,
        env={**learner_environment(), **docs_env.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("page", [p for p in PAGES if p.checks], ids=lambda p: p.name)
def test_documented_commands_print_what_the_page_says(page: Page) -> None:
    unknown = [name for name in page.needs if name not in ENVIRONMENTS]
    assert not unknown, f"{page.name}: verify-with names no environment: {unknown}; known: {sorted(ENVIRONMENTS)}"
    with contextlib.ExitStack() as stack:
        docs_env = DocsEnv()
        for name in page.needs:
            docs_env.merge(stack.enter_context(ENVIRONMENTS[name]()))
        for check in page.checks:
            result = run(check.command, docs_env)
            where = f"{page.name}:{check.line}"
            assert result.returncode == 0, f"{where}: exit {result.returncode}\n{check.command}\n{result.stdout}"
            if check.expected is not None:
                assert docs_runner.matches(check.expected, result.stdout), (
                    f"{where}: output differs\n--- expected\n{check.expected}--- actual\n{result.stdout}"
                )


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_expected_block_follows_a_command(page: Page) -> None:
    for before, fence in zip([None, *page.fences], page.fences, strict=False):
        if fence.info.split() == ["text", "expected"]:
            assert before is not None and before.info.split() == ["sh", "verify"], (
                f"{page.name}:{fence.line}: a `text expected` block must follow a `sh verify` block"
            )


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_relative_links_point_to_files_that_exist(page: Page) -> None:
    missing = []
    for target in docs_runner.relative_links(page):
        path = (page.path.parent / target).resolve()
        if path.relative_to(ROOT).as_posix() not in GENERATED and not path.exists():
            missing.append(target)
    assert not missing, f"{page.name} links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_repository_paths_in_backticks_exist(page: Page) -> None:
    missing = [
        path
        for path in docs_runner.repo_paths(page)
        if path.rstrip("/") not in GENERATED and not (ROOT / path).exists() and not git_ignored(path)
    ]
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def test_make_help_lists_every_target_the_docs_mention() -> None:
    result = subprocess.run(
        ["make", "help"], cwd=ROOT, env=learner_environment(), capture_output=True, text=True, timeout=30, check=True
    )
    listed = {line.split()[0] for line in docs_runner.normalize(result.stdout) if line.strip()}
    mentioned = {(page.name, target) for page in PAGES for target in docs_runner.make_targets(page)}
    missing = sorted(f"{name}: make {target}" for name, target in mentioned if target not in listed)
    assert not missing, "`make help` does not list:\n" + "\n".join(missing)


def git_ignored(path: str) -> bool:
    """Generated output (`.stage2/cookie`, results) is named in the docs but not in the repository."""
    try:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False).returncode == 0
    except FileNotFoundError:
        return False


# The convention itself ------------------------------------------------------------------


def test_expected_output_allows_any_text_where_it_says_any() -> None:
    assert docs_runner.matches('{"id":"<any>","user":"alice"}\n', '{"id":"1700000000000-0","user":"alice"}\n')
    assert not docs_runner.matches('{"id":"<any>","user":"alice"}\n', '{"id":"1","user":"bob"}\n')


def test_expected_output_allows_any_lines_where_it_says_dots() -> None:
    assert docs_runner.matches("first\n...\nlast\n", "first\nlast\n")
    assert docs_runner.matches("first\n...\nlast\n", "first\na\nb\nlast\n")
    assert not docs_runner.matches("first\n...\nlast\n", "first\na\n")


def test_commands_are_rewritten_to_the_chosen_port_only_where_the_port_is_whole() -> None:
    replacements = {"localhost:4000": "127.0.0.1:40001", "127.0.0.1:4000": "127.0.0.1:40001"}
    assert (
        docs_runner.rewrite("curl localhost:4000/a 127.0.0.1:4000/b localhost:40001", replacements)
        == "curl 127.0.0.1:40001/a 127.0.0.1:40001/b localhost:40001"
    )


def test_the_top_level_readme_is_among_the_pages() -> None:
    assert ROOT / "README.md" in [page.path for page in PAGES]
