"""torchrun for tests: N CPU ranks (gloo) of a script, with every rank's own output kept, so that a
rank that dies (a signal, an abort in native code) says where: faulthandler dumps every thread's
Python stack on a fatal signal, and the failure message carries each rank's stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def torchrun(ranks: int, script: Path | str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `script` on `ranks` local ranks; AssertionError with every rank's stderr if any fails."""
    with tempfile.TemporaryDirectory(prefix="torchrun-") as logs:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        command += ["--log-dir", logs, "--redirects", "3", "--tee", "3", str(script), *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if result.returncode != 0:
            ranks_said = []
            for path in sorted(Path(logs).rglob("stderr.log")):
                ranks_said.append(f"--- {path.relative_to(logs)} ---\n{path.read_text(errors='replace')[-6000:]}")
            said = "\n".join(ranks_said)
            head = f"torchrun exited {result.returncode}\n--- torchrun ---\n{result.stderr[-4000:]}"
            raise AssertionError(f"{head}\n{said}")
        return result
