"""The docs run: every page is followed as a learner follows it, and its output compared.

Convention for README.md, stage*/README.md and docs/*.md:

- A fenced block with the info string `sh verify` is a command a learner types in their
  second terminal. All of a page's commands run in ONE bash session, in page order, from
  the root of a clone (`set -e -o pipefail`, 60 s a block): what one block exports or
  changes, every later block still has, as in the learner's terminal.
- If the next fenced block has the info string `text expected`, the command's output
  (stdout and stderr, colour codes removed) must match it: line by line, exactly, after
  trailing whitespace is stripped; a line `...` stands for any number of lines and
  `<any>` inside a line for any text (ids, timestamps, refs).
- A block `sh serve` is what the learner leaves running in the first terminal (one `make`
  command, such as `make stage2 NODES=3 DISCOVERY=manual`). The test runs it in the
  background on the ports it chose and waits until its nodes answer. A later `sh serve`
  is a restart: the running one gets Ctrl-C (SIGINT) and ends first, and the blocks after
  it run against the new one, in the same session.
- A block `sh terminal` is a command the learner starts in a terminal of its own and leaves
  running (Redis, one node, one `docker run -it`). The test runs it on a pseudo-terminal
  (`script`), as a terminal window does, and waits until what it listens on answers
  (`PORT=4000`, Redis's `port 6379`, Docker's `-p 127.0.0.1:4000:4000`). A later `sh serve`
  first presses Ctrl-C in every such terminal, newest first; so does the end of the page.
- A block `text browser` says what the browser shows: one line per tab, its URL, then
  fields two spaces apart, each named by the page element's id (`self`, `nodes`, `redis`,
  `connection`), e.g. `http://localhost:4000  self: a@localhost  nodes: [a@localhost]`.
  The test opens each URL in Chromium (a tab stays open for the rest of the page, and
  follows restarts as a learner's does) and waits until every field reads so.
- A page names the setup its commands need with an HTML comment,
  `<!-- verify-with: stage1 -->`: a key of ENVIRONMENTS below, which picks free ports,
  says how to rewrite the documented ones (`localhost:4000` becomes the port the test
  chose) and what the first terminal runs when the page has no `sh serve` before its
  first command and no `sh terminal` at all. A page without the comment runs its commands with nothing started.

Commands run from the repository's root; a stage 2 page's from a scratch clone whose
entries link to the repository's, with a `.stage2/` of its own, so that a docs run never
touches the cookie of a real `make stage2`. The served `make` never rebuilds `.venv`,
which the test itself runs from.

Also checked: relative links and repository paths in backticks exist, and `make help`
lists every target the pages mention.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page as BrowserPage
from playwright.sync_api import expect

from stage2_cluster.launch import CONSOLE_OFFSET
from stage3_k8s import compose_lab, standin
from tests.helpers import containers, docs_runner
from tests.helpers.browser import ChatPages
from tests.helpers.docs_runner import ROOT, Page, Serve, Tab, Terminal
from tests.helpers.ports import free_port, free_ports, port_open
from tests.helpers.requirements import require
from tests.helpers.waits import wait_until

pytestmark = pytest.mark.slow

COMMAND_TIMEOUT = 60.0
SERVE_DEADLINE = 90.0  # a served `make` and its nodes, on a loaded machine
STOP_DEADLINE = 30.0  # Ctrl-C: every node drains and says goodbye, then Redis stops
BROWSER_DEADLINE_MS = 10_000  # the navbar polls /api/nodes every 3 s

# Files that another test writes, checked there: the browser test's screenshot.
GENERATED = {"docs/img/stage1.png"}
# Not linked into the scratch clone: the launcher's state, which the pages' runs make anew.
UNLINKED = {".stage2"}


@dataclass
class DocsEnv:
    replacements: dict[str, str] = field(default_factory=dict)  # text in a command -> text to run
    env: dict[str, str] = field(default_factory=dict)  # extra environment for both terminals
    serve_vars: str = ""  # appended to a served `make` command: the ports the test chose
    default_serve: str | None = None  # the first terminal's command, when the page shows none
    ready: list[str] = field(default_factory=list)  # URLs that answer 200 once served
    http_ports: set[int] = field(default_factory=set)  # chosen ports where a node answers /healthz
    # Whether what a served command starts has settled as the page's log shows it, e.g.
    # nodes that discover each other are connected; the learner reads that log first.
    settled: Callable[[str], bool] = lambda _command: True
    clone: bool = False  # run from a scratch clone, for state that a real run keeps in the folder
    # Removes what the page's commands made beyond the first terminal (containers, say),
    # whether the page passed or not.
    cleanup: Callable[[], None] = lambda: None


def stage1() -> DocsEnv:
    """`make stage1` on a free port."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    return DocsEnv(
        replacements={"localhost:4000": address, "127.0.0.1:4000": address},
        serve_vars=f"PORT={port}",
        default_serve="make stage1",
        ready=[f"http://{address}/healthz"],
    )


def stage2() -> DocsEnv:
    """`make stage2`, or Redis and nodes started by hand: free ports for the documented
    ones (nodes on 4000.., their consoles on 4100.., Redis on 6379). CHAT_URL points
    `chatctl` at node a, as the page's prerequisites tell a learner whose ports moved.
    GOSSIP_SECRET keeps gossip among this run's nodes: the group and port are fixed, and
    other runs on this machine may be gossiping at the same time."""
    base = node_and_console_ports(5)
    redis_port = base + 4  # Redis too: the nodes connect to it while later ones start
    nodes = [f"http://127.0.0.1:{base + offset}" for offset in range(3)]

    def settled(command: str) -> bool:
        """With discovery on, every node that `make stage2` started lists all three."""
        if not command.startswith("make stage2") or "DISCOVERY=manual" in command:
            return True
        try:
            return all(len(httpx.get(f"{url}/api/nodes", timeout=2).json()["nodes"]) == 3 for url in nodes)
        except httpx.HTTPError:
            return False

    redis_address = f"127.0.0.1:{redis_port}"
    replacements = {"localhost:6379": redis_address, "127.0.0.1:6379": redis_address, "port 6379": f"port {redis_port}"}
    for offset in range(4):
        node, console = base + offset, base + CONSOLE_OFFSET + offset
        address = f"127.0.0.1:{node}"
        replacements |= {f"localhost:{4000 + offset}": address, f"127.0.0.1:{4000 + offset}": address}
        replacements |= {f"PORT={4000 + offset}": f"PORT={node}", f"PORT={4100 + offset}": f"PORT={console}"}
        replacements |= {f"port {4100 + offset}": f"port {console}"}
    return DocsEnv(
        replacements=replacements,
        env={"CHAT_URL": f"http://{replacements['localhost:4000']}", "GOSSIP_SECRET": secrets.token_urlsafe(24)},
        serve_vars=f"BASE_PORT={base} REDIS_PORT={redis_port}",
        default_serve="make stage2 NODES=3 DISCOVERY=manual",
        ready=[f"{url}/healthz" for url in nodes],
        http_ports={base + offset for offset in range(4)},
        settled=settled,
        clone=True,
    )


def node_and_console_ports(count: int) -> int:
    """The first of `count` consecutive free ports whose consoles, CONSOLE_OFFSET (100)
    above, are free too (`make stage2` puts node i's console on BASE_PORT + 100 + i).

    Below the kernel's ephemeral range: the nodes start one after another, and a port in
    that range may meanwhile become the local end of an earlier node's connection to
    Redis, after which the later node cannot listen on it ("Address already in use")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        base = random.randrange(10_000, low - 200)
        wanted = [base + offset for offset in range(count)] + [
            base + CONSOLE_OFFSET + offset for offset in range(count)
        ]
        with contextlib.ExitStack() as stack:
            try:
                for port in wanted:
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {count} free ports below {low} with free ports CONSOLE_OFFSET above")


# What the containers page starts by hand with `docker run` and `docker network create`.
BY_HAND_CONTAINERS = ("chatlab-a", "chatlab-b", "chatlab-redis")
BY_HAND_NETWORK = "chatlab-net"


def compose() -> DocsEnv:
    """The real Docker engine for the containers page: `docker build`, `docker run`, then
    `docker compose` and `make stage3-compose` under a project of their own (`chatlab-docs`,
    its secrets in `.stage3/chatlab-docs.env`), so that a learner's `chatlab` is left alone.

    Nothing is pulled: the stand-in base images and the image are built first (the first
    time, over a minute: longer than one block may take), and the page's `docker build`
    and Redis image are rewritten to those, so its build finds every layer cached. Docker
    gets a configuration folder of its own, empty: `docker compose` works only once the
    page's own step has linked the plugin into it, as on a learner's machine without one.
    The containers and the network are removed at the end, as the page's clean-up does."""
    require("docker")
    if reason := containers.docker_unavailable():
        pytest.skip(reason)  # a failure under CI=true (tests/helpers/skip_rule.py)
    base, _seconds = containers.stand_in_images()
    project = "chatlab-docs"
    compose_lab.Lab(project).build(base)
    config = Path(tempfile.mkdtemp(prefix="chatlab-docker-config-"))
    env = {**containers.TEST_ENV, "COMPOSE_PROJECT_NAME": project, "DOCKER_CONFIG": str(config)}
    first = free_ports(2)
    chat_ports = [first, first + 1]
    replacements = {
        ".stage3/chatlab.env": f".stage3/{project}.env",
        "redis:7.4.6-alpine": standin.REDIS_IMAGE,
        "docker build -f": f"docker build --network host --build-arg BASE_IMAGE={base} -f",
    }
    for offset, port in enumerate(chat_ports):
        replacements |= {
            f"localhost:{4000 + offset}": f"127.0.0.1:{port}",
            f"127.0.0.1:{4000 + offset}": f"127.0.0.1:{port}",
        }

    def settled(command: str) -> bool:
        """Every chat container started by hand lists every other one."""
        try:
            up = [port for port in chat_ports if port_open(port)]
            return all(
                len(httpx.get(f"http://127.0.0.1:{port}/api/nodes", timeout=2).json()["nodes"]) == len(up)
                for port in up
            )
        except (httpx.HTTPError, ValueError):
            return False

    def cleanup() -> None:
        try:
            subprocess.run(
                ["docker", "rm", "--force", *BY_HAND_CONTAINERS], capture_output=True, check=False, timeout=60
            )
            subprocess.run(["docker", "network", "rm", BY_HAND_NETWORK], capture_output=True, check=False, timeout=60)
            compose_lab.down(compose_lab.Lab(project, env=env))
        finally:
            shutil.rmtree(config, ignore_errors=True)

    return DocsEnv(replacements=replacements, env=env, http_ports=set(chat_ports), settled=settled, cleanup=cleanup)


ENVIRONMENTS: dict[str, Callable[[], DocsEnv]] = {
    "stage1": stage1,
    "stage2": stage2,
    "compose": compose,
}

PAGES = docs_runner.pages()
PAGE_IDS = [page.name for page in PAGES]


def learner_environment() -> dict[str, str]:
    """Our environment as a learner's fresh terminal has it: not inside `make test`, whose
    variables would make a nested `make` print "Entering directory" lines, and without a
    cluster cookie or node URL that only an earlier block should have set."""
    dropped = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "CLUSTER_COOKIE", "CHAT_URL"}
    return {name: value for name, value in os.environ.items() if name not in dropped}


def scratch_clone(folder: Path) -> Path:
    """A clone for the pages' commands: every top-level entry linked, the state folders its own."""
    clone = folder / "clone"
    clone.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in UNLINKED:
            (clone / entry.name).symlink_to(entry)
    return clone


def stop_group(proc: subprocess.Popen[str] | subprocess.Popen[bytes], sig: int, deadline: float) -> None:
    """Send `sig` to the process group we started `proc` in; SIGKILL it if it outlives `deadline`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        proc.wait(deadline)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class Shell:
    """The learner's second terminal: one bash for every command of a page.

    Each block is written to a file and sourced, its output to a file of its own; bash then
    prints a marker on its stdout. With `set -e`, a failing command ends the shell, and its
    exit status is the block's."""

    def __init__(self, cwd: Path, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.count = 0
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.markers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout as stream:
            for line in stream:
                self.markers.put(line.rstrip("\n"))
        self.markers.put(None)

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """The block's exit status and output."""
        self.count += 1
        script, output = self.folder / f"block{self.count}.sh", self.folder / f"block{self.count}.out"
        script.write_text(command)
        marker = f"block {self.count} done"
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            f"set -e -o pipefail; source {shlex.quote(str(script))} >{shlex.quote(str(output))} 2>&1 </dev/null;"
            f" echo {shlex.quote(marker)}\n"
        )
        self.proc.stdin.flush()
        try:
            line = self.markers.get(timeout=timeout)
        except queue.Empty:
            self.close()
            return 124, output.read_text() + f"\n(no end after {timeout:.0f} s)"
        if line is None:
            return self.proc.wait(5), output.read_text()
        assert line == marker, f"unexpected output of the session itself: {line!r}"
        return 0, output.read_text()

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):  # a shell that a failing block ended
                self.proc.stdin.close()
        stop_group(self.proc, signal.SIGTERM, 5)


class FirstTerminal:
    """What the learner leaves running: one served command at a time, Ctrl-C between."""

    def __init__(self, cwd: Path, env: dict[str, str], docs_env: DocsEnv) -> None:
        self.cwd, self.env, self.docs_env = cwd, env, docs_env
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def serve(self, command: str) -> None:
        words = command.split()
        assert words[:1] == ["make"] and "\n" not in command, f"a `sh serve` block is one make command: {command!r}"
        self.stop()
        if "DISCOVERY=gossip" in words:
            require("multicast")  # the learner's nodes gossip over loopback
        # `-o`: the scratch clone's `.venv` is the test's own, never rebuilt from here.
        served = f"make -o .venv/.installed {' '.join(words[1:])} {self.docs_env.serve_vars}"
        self.lines = []
        self.proc = subprocess.Popen(
            ["bash", "-c", docs_runner.rewrite(served, self.docs_env.replacements)],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._collect, args=(self.proc, self.lines), daemon=True).start()
        wait_until(lambda: self._ready() and self.docs_env.settled(command), SERVE_DEADLINE, command, step=0.2)

    @staticmethod
    def _collect(proc: subprocess.Popen[str], lines: list[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout as stream:
            for line in stream:
                lines.append(line.rstrip("\n"))

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}:\n" + "\n".join(self.lines))
        try:
            return all(httpx.get(url, timeout=2).status_code == 200 for url in self.docs_env.ready)
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGINT, STOP_DEADLINE)
            self.proc = None


class Terminals:
    """The terminals the learner opens beside the first, one `sh terminal` command each.

    Each runs on a pseudo-terminal of its own (`script`), as in a terminal window, so that
    `docker run -it` works and Ctrl-C is what a terminal sends for it: the byte 0x03."""

    def __init__(self, cwd: Path, env: dict[str, str], docs_env: DocsEnv) -> None:
        self.cwd, self.env, self.docs_env = cwd, env, docs_env
        self.running: list[tuple[subprocess.Popen[bytes], list[str]]] = []

    def open(self, command: str) -> None:
        run = docs_runner.rewrite(command, self.docs_env.replacements)
        proc = subprocess.Popen(
            ["script", "--quiet", "--return", "--flush", "--command", run, "/dev/null"],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        lines: list[str] = []
        threading.Thread(target=self._collect, args=(proc, lines), daemon=True).start()
        self.running.append((proc, lines))
        ports = docs_runner.listening_ports(run)
        wait_until(
            lambda: self._listening(proc, lines, ports) and self.docs_env.settled(command),
            SERVE_DEADLINE,
            command,
            step=0.2,
        )

    @staticmethod
    def _collect(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout as stream:
            for line in stream:
                lines.append(line.decode(errors="replace").rstrip())

    def _listening(self, proc: subprocess.Popen[bytes], lines: list[str], ports: list[int]) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n" + "\n".join(lines))
        for port in ports:
            if port not in self.docs_env.http_ports:
                if not port_open(port):
                    return False
                continue
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        return True

    def stop(self) -> None:
        """Ctrl-C in each terminal, the newest first (the nodes before their Redis)."""
        while self.running:
            proc, _lines = self.running.pop()
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(b"\x03")
                    proc.stdin.flush()
            try:
                proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                stop_group(proc, signal.SIGKILL, 5)
            if proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()


class Tabs:
    """The learner's browser tabs, opened the first time a `text browser` block names a URL."""

    def __init__(self, request: pytest.FixtureRequest, docs_env: DocsEnv) -> None:
        self.request, self.docs_env = request, docs_env
        self.opened: dict[str, BrowserPage] = {}

    def look(self, tab: Tab) -> None:
        url = docs_runner.rewrite(tab.url, self.docs_env.replacements)
        if url not in self.opened:
            pages: ChatPages = self.request.getfixturevalue("pages")
            self.opened[url] = pages.visit(url)
        page = self.opened[url]
        for name, value in tab.fields.items():
            wanted = docs_runner.line_pattern(docs_runner.rewrite(value, self.docs_env.replacements))
            expect(page.locator(f"#{name}")).to_have_text(
                re.compile(rf"^{wanted.pattern}$"), timeout=BROWSER_DEADLINE_MS
            )


def follow(page: Page, request: pytest.FixtureRequest, folder: Path) -> None:
    """Do what the page says, in order, in one session; fail at the first step that differs."""
    assert len(page.needs) <= 1, f"{page.name}: one verify-with environment per page, got {page.needs}"
    unknown = [name for name in page.needs if name not in ENVIRONMENTS]
    assert not unknown, f"{page.name}: verify-with names no environment: {unknown}; known: {sorted(ENVIRONMENTS)}"
    docs_env = ENVIRONMENTS[page.needs[0]]() if page.needs else DocsEnv()
    with contextlib.ExitStack() as stack:
        stack.callback(docs_env.cleanup)
        clone = scratch_clone(folder) if docs_env.clone else ROOT
        env = {**learner_environment(), **docs_env.env}
        first = FirstTerminal(clone, env, docs_env)
        stack.callback(first.stop)
        terminals = Terminals(clone, env, docs_env)
        stack.callback(terminals.stop)
        shell = Shell(clone, folder, env)
        stack.callback(shell.close)
        tabs = Tabs(request, docs_env)
        by_hand = any(isinstance(step, Terminal) for step in page.steps)
        if docs_env.default_serve and not by_hand and not isinstance(page.steps[0], Serve):
            first.serve(docs_env.default_serve)
        for step in page.steps:
            where = f"{page.name}:{step.line}"
            if isinstance(step, Terminal):
                try:
                    terminals.open(step.command)
                except (AssertionError, TimeoutError) as error:
                    raise AssertionError(f"{where}: {step.command}: {error}") from None
            elif isinstance(step, Serve):
                terminals.stop()
                try:
                    first.serve(step.command)
                except (AssertionError, TimeoutError) as error:
                    raise AssertionError(f"{where}: {step.command}: {error}") from None
            elif isinstance(step, Tab):
                try:
                    tabs.look(step)
                except AssertionError as error:
                    raise AssertionError(f"{where}: the tab on {step.url} shows otherwise: {error}") from None
            else:
                code, output = shell.run(docs_runner.rewrite(step.command, docs_env.replacements))
                assert code == 0, f"{where}: exit {code}\n{step.command}\n{output}"
                if step.expected is not None:
                    assert docs_runner.matches(step.expected, output), (
                        f"{where}: output differs\n--- expected\n{step.expected}--- actual\n{output}"
                    )


@pytest.mark.parametrize("page", [p for p in PAGES if p.steps], ids=lambda p: p.name)
def test_a_page_followed_in_one_session_prints_what_it_says(
    page: Page, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    follow(page, request, tmp_path)


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
        workflow = re.fullmatch(r"\.\./\.\./actions/workflows/([\w.-]+\.yml)(/badge\.svg)?", target)
        if page.path.parent == ROOT and workflow:
            # GitHub resolves this from the root README to the copy's own Actions page (the
            # workflow badge); what must exist is the workflow.
            path = ROOT / ".github" / "workflows" / workflow[1]
            if not path.exists():
                missing.append(target)
            continue
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


def write_page(folder: Path, *blocks: tuple[str, str]) -> Page:
    """A page of fenced blocks, `(info, text)` each, as the docs test reads it."""
    path = folder / "page.md"
    path.write_text("".join(f"```{info}\n{text}```\n\n" for info, text in blocks))
    return docs_runner.parse(path)


def test_the_blocks_of_a_page_share_one_shell(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    page = write_page(
        tmp_path,
        ("sh verify", "export GREETING=hello\ncd docs\n"),
        ("sh verify", 'echo "$GREETING from $(basename "$PWD")"\n'),
        ("text expected", "hello from docs\n"),
    )
    follow(page, request, tmp_path)


def test_a_page_that_only_works_in_fresh_shells_fails(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    page = write_page(
        tmp_path,
        ("sh verify", "export GREETING=stale\n"),
        ("sh verify", 'echo "${GREETING:-fresh}"\n'),
        ("text expected", "fresh\n"),
    )
    with pytest.raises(AssertionError, match="output differs"):
        follow(page, request, tmp_path)


def test_a_failing_command_fails_the_page_with_its_exit_status(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    page = write_page(tmp_path, ("sh verify", "echo before\n(exit 3)\necho after\n"))
    with pytest.raises(AssertionError, match=r"page\.md:1: exit 3") as failure:
        follow(page, request, tmp_path)
    output = str(failure.value).split("echo after", 1)[1]  # past the command, its output
    assert "before" in output and "after" not in output


# The Kubernetes lab by hand and `make stage3`: one set of steps --------------------------

KUBERNETES_LAB = ROOT / "docs" / "04-kubernetes.md"
STEPS = {"cluster", "entry point", "build", "load", "secret", "apply"}


def stage3_plan(cluster: str) -> str:
    """`make stage3 DRY_RUN=1` for `cluster`: every command it would run, none run."""
    kept = ["-o", ".venv/.installed", "-o", ".venv/.installed-stage3"]  # never reinstalled from a test
    result = subprocess.run(
        ["make", "--no-print-directory", *kept, "stage3", "DRY_RUN=1", f"K8S={cluster}"],
        cwd=ROOT,
        env=learner_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@pytest.mark.parametrize("cluster", ["kind", "minikube"])
def test_the_kubernetes_lab_by_hand_creates_loads_and_applies_what_make_stage3_does(cluster: str) -> None:
    plan = stage3_plan(cluster)
    planned = docs_runner.effects(docs_runner.plan_commands(plan), plan)
    assert {effect[0] for effect in planned} == STEPS, f"the plan's steps no longer read as commands:\n{plan}"
    by_hand = docs_runner.effects(docs_runner.lab_commands(docs_runner.parse(KUBERNETES_LAB), cluster))
    assert by_hand == planned, "docs/04-kubernetes.md by hand and `make stage3` differ"


def test_a_lab_that_skips_loading_the_image_differs_from_the_plan(tmp_path: Path) -> None:
    lab = docs_runner.parse(KUBERNETES_LAB)
    skipped = [fence for fence in lab.fences if "docker-image" not in fence.text]
    page = write_page(tmp_path, *((fence.info, fence.text) for fence in skipped))
    plan = stage3_plan("kind")
    by_hand = docs_runner.effects(docs_runner.lab_commands(page, "kind"))
    planned = docs_runner.effects(docs_runner.plan_commands(plan), plan)
    assert [effect for effect in planned if effect not in by_hand] == [("load", "kind", "chatlab", "chatlab")]
