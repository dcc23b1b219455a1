"""bench/gpu/gpu_check.py, the prepared GPU check, run here on the CPU: its shipped reference must
match what this machine computes exactly, or the check would report false differences on a GPU."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_matches_the_shipped_reference():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu/gpu_check.py"), "compare"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["platform"] == "cpu"
    assert report["raw_bits_identical"] is True
    families = {name for name in report["cases"] if not name.startswith("bits/")}
    assert families == {f"{f}/{p}" for f in ("uniform", "normal", "truncated_normal") for p in ("float32", "float64")}
    for name in families:
        assert report["cases"][name]["identical"], name
        assert report["cases"][name]["max_ulp"] == 0, name
