"""A process that would compute other values than the contract refuses to serve."""

import os
import subprocess
import sys


def test_fast_math_stops_the_server_at_warm_up(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_enable_fast_math=true"}
    args = [
        sys.executable,
        "-m",
        "weightgen.server",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--devices",
        "1",
        "--warm-precisions",
        "float32",
        "--log-format",
        "text",
    ]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "self-check failed: random_normal values differ from weightgen/2" in result.stderr


def test_the_engine_passes_its_self_check_here():
    from weightgen.server.engine import Engine, WorkerPool

    engine = Engine(WorkerPool(cache_bytes=0))
    try:
        engine.self_check()
    finally:
        engine.close()
