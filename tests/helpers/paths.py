"""Where the project is, and where tests put what they measure."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "test-results"  # measured numbers and screenshots; `make test` leaves the tree clean
