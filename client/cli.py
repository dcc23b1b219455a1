"""The ``weightgen`` command: fetch, spec, list, inspect, verify, explain and serve.

    weightgen fetch examples/specs/gpt2-small.json -o gpt2.safetensors --seed 42
    weightgen fetch --hf-config config.json -o seed-ckpt/ --seed 42   # a Hugging Face seed checkpoint
    weightgen spec --hf-config config.json -o spec.json               # its request, as a spec file
    weightgen list
    weightgen inspect gpt2.safetensors
    weightgen verify gpt2.safetensors
    weightgen explain --module mypackage.model:build --rules rules.json
    weightgen serve --port 50051          # the server (needs weightgen[server])

Exit status: 0 on success, 1 when the server refuses or a verification fails, 2 for a usage error
(bad arguments, unreadable spec or file). Errors print as ``error: <STATUS>: <message>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire
from weightgen.v1.version import describe

from .client import DEFAULT_TARGET, Client
from .errors import WeightgenError
from .files import Manifest, read_header, read_manifest, tensor_stats
from .specfile import SpecFileError, read_spec
from .specs import planned_bytes
from .verify import verify_file

SERVER_ENV = "WEIGHTGEN_SERVER"
SPEC_HELP = """\
spec files (examples/specs/ has an MLP, ResNet-50 and GPT-2 small):
  protobuf JSON, "variables" a list (the API's MaterializeRequest):
    {"seed": 42, "variables": [{"name": "fc.weight", "shape": [256, 784],
      "dtype": "DTYPE_BFLOAT16", "initializer": {"heNormal": {}}}]}
  shorthand, "variables" an object, one entry per variable:
    {"seed": 42, "dtype": "bfloat16", "layout": "channels_first",
     "variables": {"conv.weight": "64x3x7x7 kaiming_normal(mode=fan_out, nonlinearity=relu)",
                   "conv.bias": "64 zeros float32",
                   "head": {"shape": [10, 64], "init": {"heNormal": {}}, "slice": [[0, 5], [0, 64]]}}}
  a string is SHAPE [INITIALIZER] [DTYPE] [LAYOUT] [seed=N]; top-level "dtype", "layout" and "init"
  are defaults. Run `weightgen list` for every initializer and its parameters.
  either form may add "zeroRows": {"name": [row, ...]}: rows zeroed after the fetch (padding rows;
  `weightgen spec --hf-config` writes them), recorded in the file's manifest.
"""


class UsageError(Exception):
    """A problem with the command line or its files (exit status 2)."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


class BinarySpeedColumn(ProgressColumn):
    """Transfer speed in the binary units of DownloadColumn(binary_units=True) and of the summary
    (rich's TransferSpeedColumn speaks decimal MB/s beside them)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{human_bytes(speed)}/s", style="progress.data.speed")


def _seeds(manifest: Manifest) -> str:
    seeds = manifest.seeds
    if len(seeds) <= 3:
        return ", ".join(str(s) for s in seeds)
    return f"{len(seeds)} seeds ({seeds[0]}, {seeds[1]}, ...)"


# -- connection options ------------------------------------------------------------------------


def _add_connection(parser: argparse.ArgumentParser, default: str = DEFAULT_TARGET) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=None,
        help=f"HOST:PORT of the server, or replicas to balance over: IP:PORT,IP:PORT or dns:///NAME:PORT "
        f"[env {SERVER_ENV}; default {default}]",
    )
    group.add_argument("--token-file", help="file holding the bearer token (first non-comment line)")
    group.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca-file)")
    group.add_argument("--ca-file", help="PEM CA certificate(s) that sign the server's certificate (implies --tls)")
    group.add_argument("--cert-file", help="PEM client certificate, for mutual TLS (with --key-file)")
    group.add_argument("--key-file", help="PEM client private key, for mutual TLS")
    group.add_argument("--timeout", type=float, default=None, help="seconds each call may take (default: no limit)")
    group.add_argument(
        "--retry-seconds",
        type=float,
        default=120.0,
        help="keep retrying a call (a restarting, warming or draining server) until it made no progress for "
        "this long (default 120)",
    )


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None


def _client(args: argparse.Namespace, fallback: str = DEFAULT_TARGET, **kwargs) -> Client:
    """A Client for --server, else $WEIGHTGEN_SERVER, else `fallback`."""
    token = None
    if args.token_file:
        lines = (_read(args.token_file, "token file") or b"").decode().splitlines()
        token = next((t.strip() for t in lines if t.strip() and not t.strip().startswith("#")), None)
        if token is None:
            raise UsageError(f"{args.token_file} holds no token")
    tls: bool | object = bool(args.tls or args.ca_file or args.cert_file)
    if args.cert_file or args.key_file:
        if not (args.cert_file and args.key_file):
            raise UsageError("--cert-file and --key-file go together")
        import grpc

        tls = grpc.ssl_channel_credentials(
            root_certificates=_read(args.ca_file, "CA file"),
            private_key=_read(args.key_file, "key file"),
            certificate_chain=_read(args.cert_file, "certificate file"),
        )
    return Client(
        args.server or os.environ.get(SERVER_ENV) or fallback,
        tls=tls,
        root_certificates=_read(args.ca_file, "CA file") if tls is True else None,
        token=token,
        timeout=args.timeout,
        retry_seconds=args.retry_seconds,
        **kwargs,
    )


# -- commands ----------------------------------------------------------------------------------


def _from_hf_config(args: argparse.Namespace, build: Callable[..., Any], **kwargs: Any) -> Any:
    """`build(args.hf_config, ...)` (a weightgen.client.hf function), its missing dependencies and
    bad configs as one-line usage errors."""
    try:
        return build(args.hf_config, model_class=args.hf_class, **kwargs)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("torch", "transformers"):
            raise
        raise UsageError(
            f"--hf-config needs torch and transformers on this machine ({e.name} is missing): "
            "pip install torch transformers"
        ) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"--hf-config {args.hf_config}: {e}") from None


def _hf_checkpoint(args: argparse.Namespace) -> Any:
    """The seed checkpoint of --hf-config (needs torch and transformers)."""
    from . import hf

    return _from_hf_config(args, hf.seed_checkpoint, dtype=args.hf_dtype)


def _source(args: argparse.Namespace) -> tuple[pb.MaterializeRequest, dict[str, list[int]], Any]:
    """The request and zero rows of a spec file or of --hf-config (and the seed checkpoint, or None)."""
    if (args.spec is None) == (args.hf_config is None):
        raise UsageError("give either a spec file or --hf-config CONFIG")
    if args.hf_config is None:
        if args.hf_class or args.hf_dtype:
            raise UsageError("--hf-class and --hf-dtype go with --hf-config")
        try:
            spec = read_spec(args.spec)
        except (OSError, SpecFileError) as e:
            raise UsageError(str(e)) from None
        return spec.request, spec.zero_rows, None
    checkpoint = _hf_checkpoint(args)
    return checkpoint.request(), checkpoint.zero_rows, checkpoint


def _zero_rows_text(zero_rows: dict[str, list[int]]) -> str:
    return "; ".join(f"{name} {rows}" for name, rows in zero_rows.items())


def cmd_fetch(args: argparse.Namespace, out: Console, err: Console) -> int:
    request, zero_rows, checkpoint = _source(args)
    output, folder = Path(args.output), None
    if checkpoint is not None:
        from .hf import checkpoint_paths

        try:
            output, folder = checkpoint_paths(args.output)
        except (OSError, ValueError) as e:
            raise UsageError(str(e)) from None
    else:
        _check_output(output)
    if args.seed is not None:
        request.seed = args.seed
    if args.chunk_bytes is not None:
        request.chunk_bytes = args.chunk_bytes
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        BinarySpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=args.no_progress,
        transient=False,
    )
    with _client(args, retries=args.retries, verify=not args.no_verify, digest=args.digest) as client, progress:
        task = progress.add_task(output.name, total=None)

        def advance(received: int, total: int) -> None:
            progress.update(task, completed=received, total=total)

        started = time.perf_counter()
        manifest = client.materialize_to_file(
            request, output, streams=args.streams, progress=advance, zero_rows=zero_rows, record_time=args.record_time
        )
        seconds = time.perf_counter() - started
    if folder is not None:
        from .hf import save_config

        save_config(checkpoint.config, folder, args.hf_config)
    table = _manifest_table(escape(f"weightgen fetch → {output}"), manifest)
    if checkpoint is not None:
        table.add_row("model", escape(_model_text(checkpoint)))
    if zero_rows:
        table.add_row("zero rows", escape(_zero_rows_text(zero_rows)))
    if folder is not None:
        table.add_row("config", escape(str(folder / "config.json")))
    table.add_row("time", f"{seconds:.2f} s ({human_bytes(manifest.total_bytes / max(seconds, 1e-9))}/s)")
    out.print(table)
    return 0


def _check_output(output: Path) -> None:
    """Refuse an -o that cannot be written before anything is fetched."""
    if output.is_dir():
        raise UsageError(f"-o {output} is a directory: give the file to write, e.g. {output / 'weights.safetensors'}")
    parent = output.parent
    if not parent.is_dir():
        raise UsageError(f"-o {output}: the directory {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"-o {output}: the directory {parent} is not writable")


def _model_text(checkpoint: Any) -> str:
    from .hf import family

    return f"{type(checkpoint.model).__name__}, {family(checkpoint.model).name} init (preset hf)"


def cmd_spec(args: argparse.Namespace, out: Console, err: Console) -> int:
    checkpoint = _hf_checkpoint(args)
    data = checkpoint.spec(seed=args.seed or 0)
    text = json.dumps(data, indent=2) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror}") from None
    size = sum(planned_bytes(v) for v in checkpoint.request().variables)
    table = Table(title=escape(f"weightgen spec → {args.output}"), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", escape(_model_text(checkpoint)))
    table.add_row("variables", str(len(checkpoint.variables)))
    table.add_row("bytes", f"{human_bytes(size)} ({size:,})")
    if checkpoint.zero_rows:
        table.add_row("zero rows", escape(_zero_rows_text(checkpoint.zero_rows)))
    out.print(table)
    return 0


def _manifest_table(title: str, manifest: Manifest) -> Table:
    """The summary rows every command shows for a manifest (fetch's result, inspect's file)."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("variables", str(len(manifest.variables)))
    table.add_row("bytes", f"{human_bytes(manifest.total_bytes)} ({manifest.total_bytes:,})")
    table.add_row("seed", _seeds(manifest))
    table.add_row("generator", escape(manifest.generator))
    table.add_row("server", escape(manifest.server))
    return table


def cmd_list(args: argparse.Namespace, out: Console, err: Console) -> int:
    with _client(args) as client:
        response = client.list_initializers()
    if args.json:
        out.print_json(json_format.MessageToJson(response))
        return 0
    table = Table(title=f"initializers ({response.generator})")
    table.add_column("name", style="bold")
    table.add_column("JSON")
    table.add_column("parameters (defaults)")
    table.add_column("kind")
    table.add_column("formula")
    for info in response.initializers:
        params = []
        for p in info.parameters:
            text = p.name if not p.default_value else f"{p.name}={p.default_value}"
            if p.choices:
                text += f" [{'|'.join(p.choices)}]"
            params.append(text)
        kind = ", ".join(k for k, on in (("random", info.random), ("fan-based", info.fan_based)) if on) or "fixed"
        table.add_row(info.name, info.json_name, escape("\n".join(params) or "-"), kind, escape(info.formula))
    out.print(table)
    dtypes = ", ".join(wire.dtype_name(d) for d in response.dtypes if d in wire.DTYPES)
    out.print(f"dtypes: {dtypes}")
    return 0


def _format(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.6g}"


def cmd_inspect(args: argparse.Namespace, out: Console, err: Console) -> int:
    try:
        metadata, tensors = read_header(args.file)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {args.file}: {e}") from None
    manifest = Manifest.from_json(metadata["weightgen"]) if "weightgen" in metadata else None
    if manifest is not None:  # the request's order rather than the file's (which is by alignment)
        order = {v.name: i for i, v in enumerate(manifest.variables)}
        tensors = sorted(tensors, key=lambda t: order.get(t.name, len(order)))
    rows = []
    for tensor in tensors:
        try:
            stats = tensor_stats(args.file, tensor)
        except ValueError:
            stats = None
        rows.append((tensor, stats))
    if args.json:
        out.print_json(
            json.dumps(
                {
                    "tensors": [
                        {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
                        | ({} if s is None else {"min": s.min, "max": s.max, "mean": s.mean, "std": s.std})
                        for t, s in rows
                    ],
                    "manifest": manifest.to_dict() if manifest else None,
                }
            )
        )
        return 0
    table = Table(title=escape(str(args.file)))
    for column in ("name", "dtype", "shape", "min", "max", "mean", "std"):
        table.add_column(column, justify="right" if column in ("min", "max", "mean", "std") else "left")
    for tensor, stats in rows:
        numbers = ["-"] * 4 if stats is None else [_format(v) for v in (stats.min, stats.max, stats.mean, stats.std)]
        table.add_row(escape(tensor.name), tensor.dtype, "x".join(map(str, tensor.shape)) or "scalar", *numbers)
    out.print(table)
    if manifest is None:
        out.print("no weightgen manifest in this file")
        return 0
    summary = _manifest_table("manifest", manifest)
    if manifest.session is not None:
        mode = "sequential" if manifest.session.rng_mode == pb.RNG_MODE_SEQUENTIAL else "by name"
        summary.add_row("session", f"seed {manifest.session.seed}, {mode}")
    if manifest.created:
        summary.add_row("created", f"{manifest.created} ({manifest.seconds:.2f} s)")
    out.print(summary)
    return 0


def cmd_verify(args: argparse.Namespace, out: Console, err: Console) -> int:
    try:
        recorded = read_manifest(args.file).server  # by default, the server that wrote the file
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot verify {args.file}: {e}") from None
    with _client(args, fallback=recorded or DEFAULT_TARGET) as client:
        try:
            checks = verify_file(client, args.file)
        except ValueError as e:
            raise UsageError(f"{args.file}: {e}") from None
    bad = [c for c in checks if not c.ok]
    table = Table(title=escape(f"weightgen verify {args.file}"))
    table.add_column("name")
    table.add_column("bytes", justify="right")
    table.add_column("result")
    for check in checks if args.all else bad:
        result = "[green]ok[/green]" if check.ok else "[red]" + escape("; ".join(check.problems)) + "[/red]"
        table.add_row(escape(check.name), f"{check.byte_size:,}", result)
    if table.row_count:
        out.print(table)
    total = sum(c.byte_size for c in checks)
    if bad:
        out.print(f"[red]FAILED[/red]: {len(bad)} of {len(checks)} tensors differ from the server's")
        return 1
    out.print(f"[green]OK[/green]: {len(checks)} tensors, {human_bytes(total)}, identical to the server's, bit for bit")
    return 0


def _load_module(target: str):
    """`pkg.module:factory` -> the module the factory builds on the meta device."""
    try:
        import torch
    except ImportError:
        raise UsageError("explain needs PyTorch in this environment: pip install torch") from None
    import importlib

    name, _, attr = target.partition(":")
    if not name or not attr:
        raise UsageError(f"--module {target!r}: expected 'package.module:factory' (a callable with no arguments)")
    sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(name), attr)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"--module {target!r}: {e}") from None
    finally:
        sys.path.remove(os.getcwd())
    with torch.device("meta"):
        return factory()


def _hf_model(args: argparse.Namespace) -> Any:
    """The model of --hf-config on the meta device (needs torch and transformers)."""
    from . import hf

    return _from_hf_config(args, hf.meta_model)


def _load_rules(path: str | None) -> dict[str, object] | None:
    if path is None:
        return None
    try:
        rules = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--rules {path}: {e}") from None
    if not isinstance(rules, dict):
        raise UsageError(f"--rules {path}: expected a JSON object {{\"<state-dict key glob>\": <initializer>}}")
    return rules


def cmd_explain(args: argparse.Namespace, out: Console, err: Console) -> int:
    import warnings

    from .torch import RuleOverrideWarning, module_variables

    module = _hf_model(args) if args.hf_config is not None else _load_module(args.module)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuleOverrideWarning)
        choices = module_variables(module, rules=_load_rules(args.rules), preset=args.preset, explain=True)
    if args.json:
        rows = [
            {
                "key": c.key,
                "shape": list(c.shape),
                "dtype": c.dtype,
                "initializer": json_format.MessageToDict(c.variable.to_proto().initializer) if c.variable else None,
                "rule": c.source,
                "overrides": c.overrides or None,
                "tied_to": c.tied or None,
            }
            for c in choices.values()
        ]
        out.print_json(json.dumps(rows))
    else:
        table = Table("tensor", "shape", "dtype", "initializer", "chosen by", box=None)
        for c in choices.values():
            rule = c.source + (f" [yellow](overrides {escape(c.overrides)})[/yellow]" if c.overrides else "")
            table.add_row(escape(c.key), "x".join(map(str, c.shape)) or "scalar", c.dtype, escape(c.what), rule)
        out.print(table)
    for warning in caught:
        err.print(f"warning: {warning.message}", markup=False, highlight=False, soft_wrap=True)
    return 0


SERVER_MODULES = ("jax", "grpc_health.v1.health", "grpc_reflection.v1alpha.reflection", "prometheus_client")
"""What the server extra installs; a client-only install lacks them."""


def cmd_serve(argv: Sequence[str]) -> int:
    import importlib

    for name in SERVER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UsageError(
                f"weightgen serve needs the server extra ({name.split('.')[0]} is not installed): "
                "pip install 'weightgen[server]' (from a checkout: pip install -e '.[server]')"
            ) from None
    from weightgen.server.__main__ import main as serve

    return serve(list(argv))


def _add_hf(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_argument_group(
        "Hugging Face seed checkpoints" + ("" if required else " (instead of a spec file)"),
        "the model's initial weights as its family's _init_weights draws them (preset hf), from its config "
        "alone: the model is built on the meta device, nothing is downloaded; needs torch and transformers",
    )
    group.add_argument(
        "--hf-config", required=required, metavar="CONFIG", help="the model's config.json (or a folder holding it)"
    )
    group.add_argument(
        "--hf-class",
        metavar="CLASS",
        help="the transformers model class (LlamaForCausalLM, AutoModelForCausalLM, ...; default: the config's "
        "first architectures entry)",
    )
    group.add_argument(
        "--hf-dtype",
        choices=("float32", "bfloat16", "float16", "float64"),
        help="the weights' dtype (default: the config's dtype, as from_config builds it; float32 without one)",
    )


# -- the parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightgen", description="Neural-network initial weights from a weightgen server."
    )
    parser.add_argument("--version", action="version", version=describe("client"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch = sub.add_parser(
        "fetch",
        help="fetch a spec's variables into a .safetensors file with a manifest",
        epilog=SPEC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument(
        "spec", nargs="?", help="spec file: a MaterializeRequest in protobuf JSON, or the shorthand below"
    )
    fetch.add_argument(
        "-o",
        "--output",
        required=True,
        help="the .safetensors file to write (with --hf-config: a name not ending in .safetensors is a folder, "
        "which gets model.safetensors and config.json)",
    )
    fetch.add_argument("--seed", type=int, default=None, help="the request's seed (overrides the spec's; 0 = random)")
    fetch.add_argument("--chunk-bytes", type=int, default=None, help="largest chunk (default: the server's, 1 MiB)")
    fetch.add_argument("--streams", type=int, default=1, help="concurrent streams (default 1)")
    fetch.add_argument(
        "--retries",
        type=int,
        default=None,
        help="also give up after this many failed attempts in a row (default: only --retry-seconds)",
    )
    fetch.add_argument("--no-verify", action="store_true", help="skip digest verification (not recommended)")
    fetch.add_argument(
        "--record-time",
        action="store_true",
        help="record when the file was made and how long the fetch took in its manifest "
        "(off by default: identical fetches give identical files)",
    )
    fetch.add_argument(
        "--digest",
        choices=("xxh3_128", "sha256", "none"),
        default="xxh3_128",
        help="the digest the server sends with each tensor (default xxh3_128: fast, not cryptographic; "
        "the file's manifest always records one, computed here with 'none')",
    )
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_hf(fetch)
    _add_connection(fetch)
    fetch.set_defaults(run=cmd_fetch)

    spec = sub.add_parser(
        "spec",
        help="write the request of a Hugging Face model's initial weights as a spec file (no server needed)",
    )
    spec.add_argument("-o", "--output", default=None, help="the spec file to write (default: standard output)")
    spec.add_argument("--seed", type=int, default=None, help="the request's seed (default: none, 0 = random)")
    _add_hf(spec, required=True)
    spec.set_defaults(run=cmd_spec)

    listing = sub.add_parser("list", help="list the server's initializers with their parameters")
    listing.add_argument("--json", action="store_true", help="print the ListInitializersResponse as JSON")
    _add_connection(listing)
    listing.set_defaults(run=cmd_list)

    inspect = sub.add_parser("inspect", help="shapes, dtypes, statistics and manifest of a .safetensors file")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of tables")
    inspect.set_defaults(run=cmd_inspect)

    verify = sub.add_parser("verify", help="re-fetch every tensor of a file and compare it bit for bit")
    verify.add_argument("file")
    verify.add_argument("--all", action="store_true", help="list every tensor, not just those that differ")
    _add_connection(verify, default="the server recorded in the file's manifest")
    verify.set_defaults(run=cmd_verify)

    explain = sub.add_parser(
        "explain",
        help="which initializer each tensor of a PyTorch model gets, and the rule that chose it",
        description="Build a model on the meta device and list every tensor with its initializer and the "
        "rule that chose it (your --rules first, then the preset's table: for a Hugging Face model its "
        "family's rules, then PyTorch's module defaults). Needs PyTorch (and transformers for --hf-config).",
    )
    model = explain.add_mutually_exclusive_group(required=True)
    model.add_argument("--module", help="package.module:factory, a callable returning the model")
    model.add_argument("--hf-config", help="a Hugging Face config.json (or its folder): the model it describes")
    explain.add_argument("--hf-class", help="with --hf-config: the transformers class (default: its architectures[0])")
    explain.add_argument("--preset", default="auto", help="auto (default), torch, weightgen or hf")
    explain.add_argument("--rules", help='a JSON file {"<state-dict key glob>": <initializer>}, tried first, in order')
    explain.add_argument("--json", action="store_true", help="print JSON instead of a table")
    explain.set_defaults(run=cmd_explain)

    sub.add_parser("serve", help="run the server (arguments go to it; see weightgen serve --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Piped output (tests, logs) gets wide tables rather than names wrapped at 80 columns.
    out = Console(width=None if sys.stdout.isatty() else 200)
    # Messages are never hard-wrapped when not on a terminal (logs, CI): one message, one line.
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, soft_wrap=not sys.stderr.isatty())
    try:
        if argv and argv[0] == "serve":
            return cmd_serve(argv[1:])
        args = build_parser().parse_args(argv)
        return args.run(args, out, err)
    except UsageError as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        return 2
    except WeightgenError as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        return 1
    except ValueError as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
