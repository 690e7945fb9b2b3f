"""Reading one sample from a node's `/metrics` page (Prometheus text format), and a process's memory."""

from __future__ import annotations


def metric(text: str, name: str, *, default: float | None = None, **labels: str) -> float:
    """The value of the sample `name{labels}` in `text`; `default` when it is absent (a labelled
    counter appears only once counted), else KeyError."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    if default is None:
        raise KeyError(f"{want} missing from /metrics")
    return default


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's memory from /proc, in MB: `VmRSS` resident now, `VmHWM` its peak so far."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")
