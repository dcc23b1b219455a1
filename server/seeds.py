"""Seeds, sessions and keys: where every variable's random key comes from, in one module.

A request either names a session (GoMLX's per-graph RNG state: a seed, an RNG mode and defaults) or
carries a seed; 0 picks a random one (GoMLX's NoSeed), reported back. A variable's own non-zero seed
overrides either. The key derivation itself is the contract's and lives in `engine.rng`:

    by-name mode     key = rng.variable_key(seed, name)          independent of order
    sequential mode  key = rng.sequential_key(seed, n)           n = the variable's position

Positions of a sequential session are taken when a batch is keyed, which is after the whole batch
has been planned: a batch that fails validation consumes no positions. Closing a session frees it
(GoMLX's Finalize); idle sessions expire after their TTL.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field, replace

import grpc

from weightgen.server import engine as eng
from weightgen.server.engine import rng
from weightgen.server.engine.spec import echo
from weightgen.server.status import RequestError, exhausted, invalid
from weightgen.server.validate import Batch, check_cancelled

SEQUENCE_LENGTH = 1 << 32
"""Positions of a sequential session are one uint32 counter word."""


@dataclass
class Session:
    session_id: str
    seed: int
    sequential: bool
    default_initializer: eng.Initializer | None
    default_dtype: str
    ttl_seconds: int
    payload_bytes: int  # what its defaults hold, counted against the memory budget
    last_used: float = field(default_factory=time.monotonic)
    next_index: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: object = None  # called once when the session goes (its budget reservation)

    @property
    def expires_at(self) -> float:
        return self.last_used + self.ttl_seconds

    def reserve(self, count: int) -> int:
        """Positions [start, start + count) for the next `count` random variables; returns start."""
        with self.lock:
            start = self.next_index
            if start + count > SEQUENCE_LENGTH:
                raise exhausted(
                    "session_sequence", "session_id: the session's sequence of random variables is exhausted (2^32)"
                )
            self.next_index += count
            return start


def not_found(session_id: str) -> RequestError:
    return RequestError(
        grpc.StatusCode.NOT_FOUND, f"session_id: no open session {echo(session_id)} (unknown, closed or expired)"
    )


class Sessions:
    """The open sessions of this replica, at most `max_sessions`."""

    def __init__(self, max_sessions: int, clock=time.monotonic):
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._max = max_sessions
        self._clock = clock

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(self, **fields) -> Session:
        self.expire()
        with self._lock:
            if len(self._sessions) >= self._max:
                raise exhausted(
                    "sessions", f"{len(self._sessions)} sessions are open, the limit is {self._max} (--max-sessions)"
                )
            seed = fields.pop("seed") or rng.random_seed()
            session = Session(session_id=secrets.token_urlsafe(18), seed=seed, last_used=self._clock(), **fields)
            self._sessions[session.session_id] = session
            return session

    def get(self, session_id: str) -> Session:
        """The live session (its idle timer restarts); NOT_FOUND if unknown or expired."""
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.expires_at <= now:
                self._drop(session_id)
                raise not_found(session_id)
            session.last_used = now
            return session

    def close(self, session_id: str) -> Session:
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            self._drop(session_id)
        if session is None or session.expires_at <= now:
            raise not_found(session_id)
        return session

    def expire(self) -> int:
        """Drop expired sessions; returns how many."""
        now = self._clock()
        with self._lock:
            dead = [k for k, s in self._sessions.items() if s.expires_at <= now]
            for k in dead:
                self._drop(k)
        return len(dead)

    def _drop(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None and session.release is not None:
            session.release()
            session.release = None


# -- a batch's seeds and keys -----------------------------------------------------------------------


def session_of(batch: Batch, sessions: Sessions) -> Session | None:
    return sessions.get(batch.session_id) if batch.session_id else None


def with_defaults(spec: eng.VariableSpec, session: Session | None) -> eng.VariableSpec:
    """The spec with the session's default dtype and initializer where the request left them out."""
    dtype = spec.dtype or (session.default_dtype if session else "float32")
    init = spec.initializer if spec.initializer is not None else (session.default_initializer if session else None)
    return replace(spec, dtype=dtype, initializer=init)


def key(
    prepared: list[eng.Prepared], batch: Batch, session: Session | None, cancelled: threading.Event | None = None
) -> list[eng.Prepared]:
    """Every planned variable with its effective seed and key (and its position in a sequential
    session). Takes the session's next positions, so call it once the batch is known to be valid."""
    batch_seed = session.seed if session else (batch.seed or rng.random_seed())
    keyed: list[eng.Prepared | None] = [None] * len(prepared)
    sequential = []  # indexes of variables that take the session's next positions, in request order
    by_name = []  # indexes of variables keyed by their name, all at once below
    for i, (variable, p) in enumerate(zip(batch.variables, prepared, strict=True)):
        check_cancelled(cancelled)
        seed = variable.spec.seed or batch_seed
        if session is not None and session.sequential and not variable.spec.seed and p.is_random:
            if variable.sequence_index is None:
                sequential.append(i)
            else:
                position = variable.sequence_index
                keyed[i] = p.keyed(seed, rng.sequential_key(seed, position), position)
        elif variable.sequence_index is not None and not (session and session.sequential):
            raise invalid(
                f"variables[{i}] ({echo(variable.spec.name)}): sequence_index: applies only to a sequential "
                "session without a variable seed"
            )
        else:
            # Not random in a sequential session: it consumes no position (its key is never used).
            by_name.append(i)
    seeds = [batch.variables[i].spec.seed or batch_seed for i in by_name]
    names = [batch.variables[i].spec.name for i in by_name]
    for i, seed, k in zip(by_name, seeds, rng.variable_keys(seeds, names), strict=True):
        keyed[i] = prepared[i].keyed(seed, k)
    if sequential:
        start = session.reserve(len(sequential))
        for n, i in enumerate(sequential):
            keyed[i] = prepared[i].keyed(session.seed, rng.sequential_key(session.seed, start + n), start + n)
    return keyed
