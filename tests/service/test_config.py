"""Configuration: flags override WEIGHTGEN_* environment variables, which override the defaults;
invalid configurations stop the server at start-up with a clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from weightgen.server import config
from weightgen.server.config import Config


def test_defaults_serve_on_localhost():
    loaded = config.load([], {})
    assert loaded == Config()
    assert (loaded.host, loaded.port, loaded.devices) == ("127.0.0.1", 50051, "auto")


def test_env_overrides_default_and_flag_overrides_env():
    env = {"WEIGHTGEN_PORT": "6000", "WEIGHTGEN_GRACE_SECONDS": "2.5", "WEIGHTGEN_LOG_FORMAT": "text"}
    loaded = config.load([], env)
    assert (loaded.port, loaded.grace_seconds, loaded.log_format) == (6000, 2.5, "text")
    loaded = config.load(["--port", "7000", "--max-sessions", "3"], env)
    assert (loaded.port, loaded.grace_seconds, loaded.max_sessions) == (7000, 2.5, 3)
    assert config.load(["--log-format", "json"], env).log_format == "json"


def test_environment_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("WEIGHTGEN_MAX_VARIABLES_PER_REQUEST", "12")
    assert config.load([]).max_variables_per_request == 12


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--devices", "many"], {}, "--devices must be 'auto' or a positive count"),
        (["--devices", "0"], {}, "--devices"),
        (["--tls-cert", "cert.pem"], {}, "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], {}, "--tls-client-ca"),
        (["--log-format", "xml"], {}, "--log-format must be json or text"),
        (["--max-concurrent-streams", "0"], {}, "--max-concurrent-streams must be positive"),
        (["--warm-precisions", "float8"], {}, "unknown precision 'float8'"),
        ([], {"WEIGHTGEN_PORT": "high"}, "WEIGHTGEN_PORT expects int, got 'high'"),
        ([], {"WEIGHTGEN_MAX_SESSIONS": "-1"}, "--max-sessions must be positive"),
        (["--cache-bytes", "-1"], {}, "--cache-bytes must be 0 (off) or positive"),
        ([], {"WEIGHTGEN_DIGEST_CACHE_ENTRIES": "-2"}, "--digest-cache-entries must be 0 (off) or positive"),
    ],
)
def test_invalid_configuration_exits_with_a_message(argv, env, message):
    with pytest.raises(SystemExit) as raised:
        config.load(argv, env)
    assert message in str(raised.value.code)


def test_bad_flag_value_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as raised:
        config.load(["--port", "eighty"], {})
    assert raised.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_server_refuses_an_invalid_configuration_at_start():
    result = subprocess.run(
        [sys.executable, "-m", "weightgen.server", "--max-bytes-per-request", "0", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    assert "weightgen: invalid configuration: --max-bytes-per-request must be positive" in result.stderr
