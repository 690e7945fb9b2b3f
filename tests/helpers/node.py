"""A real node process (`python -m stage1_dev`, `stage2_cluster`, `stage3_k8s`) on a real port.

Every process started here is ended by its own PID, and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import httpx

from tests.helpers.paths import ROOT
from tests.helpers.ports import free_port

STARTUP_DEADLINE = 20.0


@dataclass
class NodeProcess:
    """A `python -m <module>` node with its log collected in memory."""

    module: str
    env: dict[str, str]
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    # A command to run the node under, e.g. ["ip", "netns", "exec", "ns1"]; the node's
    # address may then be unreachable from here, so readiness is its log line alone.
    prefix: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/socket/websocket?vsn=2.0.0"

    def start(self) -> NodeProcess:
        if not self.port:
            self.port = free_port(self.host)
        env = {**os.environ, "PORT": str(self.port), "HOST": self.host, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", self.module],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._collect, daemon=True).start()
        self.wait_ready()
        return self

    def _collect(self) -> None:
        assert self.proc and self.proc.stdout
        # Closed at EOF, once the process has ended: a pipe left to the garbage collector
        # raises a ResourceWarning, an error in whichever later test it surfaces.
        with self.proc.stdout as stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))

    def wait_ready(self, deadline: float = STARTUP_DEADLINE) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}:\n" + "\n".join(self.lines))
            if any('"node ready"' in line or "node ready" in line for line in self.lines):
                if self.prefix:
                    return
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                        return
            time.sleep(0.05)
        raise TimeoutError(f"{self.module} not ready after {deadline}s:\n" + "\n".join(self.lines))

    def logs(self) -> list[dict[str, object]]:
        """The JSON log lines (the node logs JSON when stdout is not a terminal)."""
        out = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def running_node(module: str, env: Mapping[str, str] | None = None, **kwargs: object) -> Iterator[NodeProcess]:
    node = NodeProcess(module, dict(env or {}), **kwargs)  # type: ignore[arg-type]
    try:
        yield node.start()
    finally:
        node.stop()
