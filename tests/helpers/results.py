"""What tests measure, printed and kept under test-results/ (docs/reliability.md and the
timing tables are written from these files). Numbers are reported, never asserted as a
performance claim."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from tests.helpers.paths import RESULTS

_lock = threading.Lock()


def _keep(into: str, name: str, fields: dict[str, Any]) -> None:
    with _lock:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / into
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[name] = {**fields, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def report_timing(name: str, seconds: float, *, into: str = "stage2-timings.json", **details: Any) -> None:
    """Show a measured time (`pytest -s` or `-rA` prints it) and keep it in test-results/`into`."""
    print(f"TIMING {name}: {seconds:.3f}s" + "".join(f" {k}={v}" for k, v in details.items()), flush=True)
    _keep(into, name, {"seconds": round(seconds, 3), **details})


def record(row: str, **fields: Any) -> None:
    """Keep the measured outcome of one fault or attack in test-results/reliability.json (and print it)."""
    print(f"RELIABILITY {row}: {json.dumps(fields, sort_keys=True)}", flush=True)
    _keep("reliability.json", row, fields)
