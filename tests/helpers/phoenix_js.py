"""Running `tests/js/conformance.mjs`, the official phoenix JS client under Node.js, and
reading the facts it prints (one JSON object a line)."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.paths import ROOT

JS_DIR = ROOT / "tests" / "js"
SCRIPT = JS_DIR / "conformance.mjs"
CLIENTS = ["phoenix-1.7", "phoenix-1.8"]
MESSAGE_ID = re.compile(r"^\d+-\d+$")

Fact = dict[str, Any]


def socket_url(node: NodeProcess) -> str:
    return f"ws://{node.host}:{node.port}/socket"  # the client appends /websocket?vsn=2.0.0


def steps(facts: list[Fact], step: str) -> list[Fact]:
    return [fact for fact in facts if fact["step"] == step]


def one(facts: list[Fact], step: str) -> Fact:
    found = steps(facts, step)
    assert len(found) == 1, f"expected one {step!r} in {facts}"
    return found[0]


class BackgroundScript:
    """The conformance script left running, its facts read one by one as they are printed."""

    def __init__(self, node_bin: str, client: str, url: str, scenario: str, *more_urls: str) -> None:
        self.name = f"{scenario} ({client})"
        self.proc = subprocess.Popen(
            [node_bin, str(SCRIPT), client, url, scenario, *more_urls],
            cwd=JS_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.facts: list[Fact] = []
        self._lines: queue.Queue[str | None] = queue.Queue()  # None: stdout ended
        self._stderr: list[str] = []
        assert self.proc.stdout and self.proc.stderr
        self._readers = [
            threading.Thread(target=_pump, args=(self.proc.stdout, self._lines.put), daemon=True),
            threading.Thread(target=_pump, args=(self.proc.stderr, self._stderr.append), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _failure(self, why: str) -> str:
        stderr = "\n".join(line for line in self._stderr if line)
        return f"{self.name}: {why}\nfacts: {self.facts}\nstderr: {stderr}"

    def _next(self, deadline: float) -> Fact | None:
        """The next fact, or None once the script's stdout has ended."""
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(self._failure("no output before the deadline"))
        if line is None:
            return None
        self.facts.append(json.loads(line))
        return self.facts[-1]

    def expect(self, step: str, timeout: float) -> Fact:
        deadline = time.monotonic() + timeout
        while (fact := self._next(deadline)) is not None:
            if fact["step"] == step:
                return fact
        pytest.fail(self._failure(f"ended before {step!r}"))

    def finish(self, timeout: float) -> list[Fact]:
        """Every fact up to the script's exit, which must be a success."""
        deadline = time.monotonic() + timeout
        while self._next(deadline) is not None:
            pass
        code = self.proc.wait(max(0.0, deadline - time.monotonic()))
        assert code == 0, self._failure(f"exited {code}")
        return self.facts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for reader in self._readers:  # they end at EOF, which the exit brings
            reader.join(10)
        assert self.proc.stdout and self.proc.stderr
        self.proc.stdout.close()
        self.proc.stderr.close()


def _pump(stream: IO[str], sink: Callable[[str | None], None]) -> None:
    for line in stream:
        sink(line.rstrip("\n"))
    sink(None)
