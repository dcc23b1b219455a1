"""Limits and the memory budget: what a request may make this replica hold, decided before it holds it.

    streams        at most --max-concurrent-streams Materialize calls at once, and at most
                   --max-streams-per-peer from one client address (RESOURCE_EXHAUSTED past them)
    validations    at most --max-validations requests parsed and planned at once (the rest queue):
                   planning is CPU-bound Python, and many at once would starve the event loop
    memory         one budget for the whole server (--memory-budget): every stream, pending
                   validation and session reserves its bytes before the work starts, and the caches
                   reserve their capacity at start-up. Over budget a request waits, at most
                   --budget-wait-seconds, first come first served, then gets RESOURCE_EXHAUSTED
    idle streams   a stream whose client has accepted no message for --stream-idle-seconds is ended
                   with DEADLINE_EXCEEDED, freeing its slot and its reservation

A `Ticket` is one Materialize call's admission: its slot, its reservation (grown as the call learns
what it needs) and its cancellation flag, which every stage of the call checks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from weightgen.server.config import Config
from weightgen.server.status import exhausted

MIB = 1 << 20
PARSE_FACTOR = 4
"""Bytes a parsed request holds per byte received (protobuf's arena and the copies of base tensors)."""
PER_VARIABLE_BYTES = 4 << 10
"""Bytes a validated, planned variable holds until it is streamed (measured about 2 KiB)."""


def memory_limit() -> int:
    """The memory this process may use: the cgroup's limit (a container's), else the machine's."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            value = int(Path(path).read_text().strip())
            if value < 1 << 60:  # "max" fails int(); cgroup v1 writes a huge number for "no limit"
                return value
    with contextlib.suppress(OSError, AttributeError, ValueError):
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        if match:
            return int(match.group(1)) << 10
    return 4 << 30


def default_budget(limit: int) -> int:
    """--memory-budget's default: 3/4 of the limit less 512 MiB for the process itself (Python, JAX
    and the gRPC runtime: an idle server is about 400 MiB), and never less than 256 MiB.
    A 4 GiB pod gets 2.5 GiB."""
    return max(256 * MIB, limit * 3 // 4 - 512 * MIB)


def peer_address(peer: str) -> str:
    """The client's address without its port: 'ipv4:10.0.0.7:53122' -> 'ipv4:10.0.0.7'."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer  # unix sockets and anything else: the whole peer


class Reservation:
    """Bytes held against the budget by one user, until `release` (idempotent)."""

    def __init__(self, budget: MemoryBudget, use: str, nbytes: int):
        self._budget = budget
        self.use = use
        self.nbytes = nbytes

    async def grow_to(self, nbytes: int, what: str) -> None:
        """Hold `nbytes` in all (never shrinks); waits like `MemoryBudget.reserve`."""
        if nbytes > self.nbytes:
            extra = await self._budget.reserve(nbytes - self.nbytes, self.use, what)
            self.nbytes += extra.nbytes
            extra.nbytes = 0

    def release(self) -> None:
        if self.nbytes:
            self._budget._give_back(self.use, self.nbytes)
            self.nbytes = 0


@dataclass(eq=False)
class _Waiter:
    nbytes: int
    use: str
    future: asyncio.Future
    granted: bool = False  # set under the budget's lock, when its bytes were counted as used


class MemoryBudget:
    """Bytes the server may hold for requests, reserved before they are held. Waiters are served
    in arrival order, so a large request is not starved by a stream of small ones."""

    def __init__(self, total: int, wait_seconds: float):
        self.total = total
        self.wait_seconds = wait_seconds
        self.reserved: dict[str, int] = collections.defaultdict(int)
        self._used = 0
        self._lock = threading.Lock()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self.waits = 0

    def try_reserve(self, nbytes: int, use: str) -> Reservation | None:
        """A reservation now, or None when it does not fit (or others are waiting first)."""
        with self._lock:
            if self._waiters or self._used + nbytes > self.total:
                return None
            self._count(nbytes, use)
        return Reservation(self, use, nbytes)

    async def reserve(self, nbytes: int, use: str, what: str) -> Reservation:
        """A reservation of `nbytes`, waiting up to `wait_seconds` for others to give bytes back;
        RESOURCE_EXHAUSTED (naming `what` and the budget) when it never fits or the wait runs out."""
        if nbytes > self.total:
            raise exhausted(
                "memory_budget",
                f"{what} needs {nbytes / MIB:.1f} MiB, more than the server's whole memory budget of "
                f"{self.total / MIB:.0f} MiB (--memory-budget)",
            )
        with self._lock:
            if not self._waiters and self._used + nbytes <= self.total:
                self._count(nbytes, use)
                return Reservation(self, use, nbytes)
            waiter = _Waiter(nbytes, use, asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
            self.waits += 1
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.wait_seconds)
        except (TimeoutError, asyncio.CancelledError) as error:
            with self._lock:
                granted = waiter.granted
                if not granted:
                    self._waiters.remove(waiter)
                    self._grant_waiters()  # it may have been the one blocking the queue
            if granted:  # granted just as it gave up: the bytes go back
                self._give_back(use, nbytes)
            if isinstance(error, asyncio.CancelledError):
                raise
            raise exhausted(
                "memory_budget",
                f"{what} needs {nbytes / MIB:.1f} MiB and the server's memory budget "
                f"({self.total / MIB:.0f} MiB, --memory-budget) stayed full for {self.wait_seconds:g} s "
                "(--budget-wait-seconds); retry later or on another replica",
            ) from None
        return Reservation(self, use, nbytes)

    def _count(self, nbytes: int, use: str) -> None:
        self._used += nbytes
        self.reserved[use] += nbytes

    def _give_back(self, use: str, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes
            self.reserved[use] -= nbytes
            self._grant_waiters()

    def _grant_waiters(self) -> None:
        """Grant waiting reservations in order while the first one fits (under the lock)."""
        while self._waiters and self._used + self._waiters[0].nbytes <= self.total:
            waiter = self._waiters.popleft()
            waiter.granted = True
            self._count(waiter.nbytes, waiter.use)
            waiter.future.get_loop().call_soon_threadsafe(_resolve, waiter.future)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(eq=False)
class Ticket:
    """One Materialize call's admission."""

    peer: str
    task: asyncio.Task
    reservation: Reservation
    cancelled: threading.Event = field(default_factory=threading.Event)
    writing_since: float | None = None  # when the current write started; None between writes
    evicted: bool = False  # ended by the idle-stream watchdog


class Admission:
    def __init__(self, config: Config, budget: MemoryBudget):
        self.config = config
        self.budget = budget
        self.tickets: set[Ticket] = set()
        self.per_peer: collections.Counter[str] = collections.Counter()
        self.validations = asyncio.Semaphore(config.max_validations)

    @property
    def active(self) -> int:
        return len(self.tickets)

    @contextlib.asynccontextmanager
    async def stream(self, peer: str, request_bytes: int):
        """Admit one Materialize call from `peer` whose request is `request_bytes` long; it holds a
        slot and a reservation for parsing its request until the block exits."""
        c = self.config
        if len(self.tickets) >= c.max_concurrent_streams:
            raise exhausted(
                "concurrent_streams",
                f"{len(self.tickets)} streams are in progress, the server's limit is {c.max_concurrent_streams} "
                "(--max-concurrent-streams)",
            )
        address = peer_address(peer)
        if self.per_peer[address] >= c.max_streams_per_peer:
            raise exhausted(
                "streams_per_peer",
                f"{self.per_peer[address]} streams from this client's address are in progress, the server's limit "
                f"is {c.max_streams_per_peer} per address (--max-streams-per-peer)",
            )
        self.per_peer[address] += 1
        ticket = Ticket(address, asyncio.current_task(), Reservation(self.budget, "streams", 0))
        self.tickets.add(ticket)
        try:
            await ticket.reservation.grow_to(request_bytes * PARSE_FACTOR, "parsing the request")
            yield ticket
        finally:
            ticket.cancelled.set()  # whatever still runs for this call on a thread stops
            ticket.reservation.release()
            self.tickets.discard(ticket)
            self.per_peer[address] -= 1
            if not self.per_peer[address]:
                del self.per_peer[address]

    @contextlib.asynccontextmanager
    async def validation(self):
        """A turn to parse and plan a request (bounded concurrency; waiting costs nothing)."""
        async with self.validations:
            yield

    async def watch_idle(self) -> None:
        """End streams whose client accepts nothing for --stream-idle-seconds (runs until cancelled)."""
        idle = self.config.stream_idle_seconds
        if idle <= 0:
            return
        while True:
            await asyncio.sleep(min(1.0, idle / 4))
            now = time.monotonic()
            for ticket in list(self.tickets):
                if ticket.writing_since is not None and now - ticket.writing_since > idle and not ticket.evicted:
                    ticket.evicted = True
                    ticket.task.cancel()
