"""Server configuration: an embedded default that serves on localhost with no file, overridden by
``WEIGHTGEN_*`` environment variables, overridden by command-line flags.

Every field below is a flag (``--metrics-port``) and an environment variable
(``WEIGHTGEN_METRICS_PORT``); `describe()` prints them with their defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from weightgen.v1 import wire

ENV_PREFIX = "WEIGHTGEN_"
MAX_SESSION_BYTES = (wire.MAX_MESSAGE_BYTES - (64 << 10)) * 3 // 7
"""The reply to OpenSession holds the defaults twice: as given, and base64 (4/3) in the id."""


@dataclass(frozen=True)
class Config:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (0.0.0.0 or [::] for all)"})
    port: int = field(default=50051, metadata={"help": "gRPC port; 0 picks a free one"})
    metrics_port: int = field(
        default=9090, metadata={"help": "Prometheus /metrics port; 0 disables, -1 picks a free one"}
    )
    metrics_threads: int = field(
        default=4,
        metadata={
            "help": "threads that answer /metrics, whatever the number of connections; connections that find "
            "them all busy and the small queue full are closed at once"
        },
    )
    port_file: str = field(default="", metadata={"help": "write the bound gRPC and metrics ports here as JSON"})
    devices: str = field(
        default="auto",
        metadata={"help": "'auto' (every GPU; on a CPU host one device per core) or a count N (the first N)"},
    )
    threads_per_device: int = field(default=1, metadata={"help": "concurrent kernel calls per device"})
    warm_precisions: str = field(
        default="float32,float64", metadata={"help": "compute precisions compiled before SERVING"}
    )
    cache_bytes: int = field(
        default=128 << 20,
        metadata={"help": "bytes of generated blocks kept for identical requests (herds); 0 disables"},
    )
    chunk_cache_bytes: int = field(
        default=128 << 20,
        metadata={
            "help": "bytes of serialized chunk messages kept, so streams of the same request (herds, repeats) "
            "send them without building them again; 0 disables"
        },
    )
    digest_cache_entries: int = field(
        default=4096,
        metadata={"help": "finished variable digests kept, so a repeat of the same bytes hashes nothing; 0 disables"},
    )
    compilation_cache_dir: str = field(
        default="", metadata={"help": "persistent XLA compilation cache directory ('' = off)"}
    )
    # Limits (RESOURCE_EXHAUSTED past them).
    max_elements_per_variable: int = field(default=1 << 34, metadata={"help": "elements in one variable"})
    max_bytes_per_request: int = field(default=1 << 40, metadata={"help": "bytes one Materialize may deliver"})
    max_variables_per_request: int = field(default=100_000, metadata={"help": "variables in one Materialize"})
    max_concurrent_streams: int = field(default=256, metadata={"help": "Materialize streams served at once"})
    max_streams_per_peer: int = field(
        default=32, metadata={"help": "Materialize streams served at once for one client address"}
    )
    max_validations: int = field(
        default=2, metadata={"help": "requests parsed and planned at once (CPU-bound; the rest queue)"}
    )
    max_sessions: int = field(
        default=10_000,
        metadata={"help": "sessions this server keeps verified in its cache, and sequential sessions it counts for"},
    )
    session_keys_file: str = field(
        default="",
        metadata={
            "help": "keys that sign session ids, one per line, shared by every replica (the first signs); "
            "'' = a random key per process: sessions then work only on this process"
        },
    )
    session_cache_bytes: int = field(
        default=64 << 20, metadata={"help": "bytes of verified session ids (and their defaults) kept parsed"}
    )
    max_health_watchers: int = field(
        default=256, metadata={"help": "health Watch streams open at once (Check is not limited)"}
    )
    max_reflection_streams: int = field(default=16, metadata={"help": "server reflection streams open at once"})
    reflection_idle_seconds: float = field(
        default=60.0, metadata={"help": "a reflection stream that sends no request for this long is closed"}
    )
    max_structured_elements: int = field(
        default=1 << 24, metadata={"help": "elements of a whole-tensor initializer (orthogonal, identity, dirac)"}
    )
    max_structured_builds: int = field(
        default=2, metadata={"help": "whole-tensor initializers built at once (each holds its full size)"}
    )
    whole_cache_bytes: int = field(
        default=256 << 20,
        metadata={"help": "bytes of built whole tensors kept, so slices and herds build them once; 0 disables"},
    )
    memory_budget: int = field(
        default=0,
        metadata={
            "help": "bytes the server may hold for streams, validations, sessions and caches; 0 = 3/4 of the "
            "container's (else the machine's) memory less 512 MiB"
        },
    )
    budget_wait_seconds: float = field(
        default=10.0, metadata={"help": "how long a request waits for memory budget before RESOURCE_EXHAUSTED"}
    )
    max_session_bytes: int = field(
        default=1 << 20, metadata={"help": "largest default initializer a session may hold (a broadcast base)"}
    )
    stream_idle_seconds: float = field(
        default=60.0,
        metadata={"help": "end a stream whose client reads nothing for this long (DEADLINE_EXCEEDED); 0 = never"},
    )
    keepalive_seconds: float = field(
        default=30.0, metadata={"help": "HTTP/2 keepalive ping interval: a client that stops answering is dropped"}
    )
    keepalive_timeout_seconds: float = field(default=10.0, metadata={"help": "time to wait for a ping's answer"})
    connection_idle_seconds: float = field(
        default=900.0, metadata={"help": "close a connection with no RPC for this long"}
    )
    max_request_bytes: int = field(default=64 << 20, metadata={"help": "largest request message (broadcast bases)"})
    session_ttl_seconds: int = field(default=3600, metadata={"help": "default lifetime of a session, from its opening"})
    max_session_ttl_seconds: int = field(default=7 * 24 * 3600, metadata={"help": "largest TTL a client may ask"})
    # Lifecycle.
    grace_seconds: float = field(default=30.0, metadata={"help": "on SIGTERM, time in-flight streams get to finish"})
    # Security.
    tls_cert: str = field(default="", metadata={"help": "PEM server certificate chain (enables TLS)"})
    tls_key: str = field(default="", metadata={"help": "PEM server private key"})
    tls_client_ca: str = field(default="", metadata={"help": "PEM CA for client certificates (enables mutual TLS)"})
    auth_token_file: str = field(
        default="", metadata={"help": "file of accepted bearer tokens, one per line (enables auth)"}
    )
    # Logging.
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    log_format: str = field(default="json", metadata={"help": "json (one object per line) or text"})

    def warm_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.warm_precisions.split(",") if p.strip())


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _convert(kind: type, raw: str, name: str):
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"weightgen: {name} expects {kind.__name__}, got {raw!r}") from None


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration from defaults, then `environ` (default os.environ), then `argv` flags."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="weightgen serve",
        description="Serve weightgen over gRPC. Every flag can also be set as WEIGHTGEN_<FLAG> in the environment.",
    )
    from weightgen.v1.version import describe

    parser.add_argument("--version", action="version", version=describe("server"))
    values = {}
    types = {"int": int, "float": float, "str": str}
    for f in fields(Config):
        kind = types[f.type] if isinstance(f.type, str) else f.type
        default = f.default
        env = environ.get(_env_name(f.name))
        if env is not None:
            default = _convert(kind, env, _env_name(f.name))
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=default,
            help=f"{f.metadata.get('help', '')} [env {_env_name(f.name)}; default {f.default!r}]",
        )
    args = parser.parse_args(argv)
    for f in fields(Config):
        values[f.name] = getattr(args, f.name)
    config = Config(**values)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Refuse configurations that cannot work, at start-up rather than at the first request."""
    problems = []
    if bool(config.tls_cert) != bool(config.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    if config.tls_client_ca and not config.tls_cert:
        problems.append("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if config.devices != "auto" and not (config.devices.isdigit() and int(config.devices) > 0):
        problems.append(f"--devices must be 'auto' or a positive count, got {config.devices!r}")
    if config.log_format not in ("json", "text"):
        problems.append(f"--log-format must be json or text, got {config.log_format!r}")
    for name in (
        "max_elements_per_variable",
        "max_bytes_per_request",
        "max_variables_per_request",
        "max_concurrent_streams",
        "max_sessions",
        "threads_per_device",
        "max_request_bytes",
        "max_streams_per_peer",
        "max_validations",
        "max_structured_builds",
        "max_session_bytes",
        "keepalive_seconds",
        "keepalive_timeout_seconds",
        "connection_idle_seconds",
        "metrics_threads",
        "max_health_watchers",
        "max_reflection_streams",
        "reflection_idle_seconds",
    ):
        if getattr(config, name) <= 0:
            problems.append(f"--{name.replace('_', '-')} must be positive")
    if config.max_session_bytes > MAX_SESSION_BYTES:
        problems.append(
            f"--max-session-bytes must be at most {MAX_SESSION_BYTES} (a session's id carries its defaults, and the "
            "reply with both must fit a 4 MiB message)"
        )
    for name in (
        "cache_bytes",
        "chunk_cache_bytes",
        "session_cache_bytes",
        "digest_cache_entries",
        "whole_cache_bytes",
        "memory_budget",
        "budget_wait_seconds",
        "stream_idle_seconds",
    ):
        if getattr(config, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be 0 (off) or positive")
    for p in config.warm_list():
        if p not in ("float32", "float64"):
            problems.append(f"--warm-precisions: unknown precision {p!r}")
    if problems:
        raise SystemExit("weightgen: invalid configuration: " + "; ".join(problems))


def replace(config: Config, **changes) -> Config:
    new = dataclasses.replace(config, **changes)
    validate(new)
    return new
