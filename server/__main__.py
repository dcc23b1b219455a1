"""``python -m weightgen.server`` (and ``weightgen serve``): run the server until SIGTERM or SIGINT.

Configuration comes before JAX starts, because the number of CPU devices is fixed when JAX
initialises its backends.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

from weightgen.server import config as configuration
from weightgen.server import logs


def _prepare_jax(config: configuration.Config) -> None:
    from weightgen.server.engine import workers

    if config.devices == "auto":
        workers.configure_host_devices()
    else:
        workers.configure_host_devices(int(config.devices))
    import jax

    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


async def _run(config: configuration.Config) -> int:
    from weightgen.server.lifecycle import Server

    server = Server(config)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop()))
    await server.wait_stopped()
    return server.exit_code


def tune_malloc() -> bool:
    """Keep multi-MiB buffers in the heap instead of fresh mmap'd pages per allocation: glibc
    otherwise page-faults every chunk copy; with high thresholds grpc.aio streamed 2.8x faster
    (DESIGN.md section 5). The same as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_, at run time."""
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):  # not glibc
        return False


GC_THRESHOLDS = (10_000, 10, 10)
"""Collections of the youngest generation every 10,000 allocations instead of 700 (so of the oldest
every 10^6 at most). Planning a 100,000-variable request allocates a million objects: with the
defaults the collector scanned the whole heap 11 times on the way (up to 0.6 s each, the event loop
stopped, health checks late), with these once. Much higher thresholds (50,000, 20, 100) removed
that one too but let cyclic garbage pile up: the soak's RSS rose by 200 MiB more (bench/README.md
"Soak")."""


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()
    tune_gc()
    config = configuration.load(sys.argv[1:] if argv is None else argv)
    logs.setup(config.log_level, config.log_format)
    _prepare_jax(config)
    code = asyncio.run(_run(config))
    # Every call has ended; what may still run on a thread is work for calls that are gone: a
    # whole-tensor build inside LAPACK cannot be interrupted (at most --max-structured-builds, each
    # a few seconds). The interpreter would join those threads at exit and overrun the drain's grace
    # period, so leave without waiting, once the logs are flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
