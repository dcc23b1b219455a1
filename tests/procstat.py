"""A process's resident memory and thread count, from /proc (Linux), for the tests that check that
the server returns to its baseline."""

from __future__ import annotations

from pathlib import Path


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def rss(pid: int) -> int:
    """Resident set size in bytes."""
    return _status(pid, "VmRSS") << 10


def peak_rss(pid: int) -> int:
    """The highest resident set size so far (VmHWM), in bytes."""
    return _status(pid, "VmHWM") << 10


def threads(pid: int) -> int:
    return _status(pid, "Threads")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (all its threads), in seconds."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: proc(5) fields 14, 15
