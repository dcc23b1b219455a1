"""Sessions: a seed scope with its RNG state and defaults (GoMLX's per-graph RNG state).

A session is created once from its seed. In by-name mode its state is just the seed; in sequential
mode it is also the position of the next random variable, advanced in request order under a lock.
Closing a session frees it (GoMLX's Finalize); idle sessions expire after their TTL.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any


class SessionNotFoundError(KeyError):
    pass


class TooManySessionsError(RuntimeError):
    pass


@dataclass
class Session:
    session_id: str
    seed: int
    sequential: bool
    default_initializer: Any  # engine Initializer or None
    default_initializer_proto: Any  # as the client sent it, to echo back
    default_dtype: str
    ttl_seconds: int
    last_used: float = field(default_factory=time.monotonic)
    next_index: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def expires_at(self) -> float:
        return self.last_used + self.ttl_seconds

    def reserve(self, count: int) -> int:
        """Positions [start, start + count) for the next `count` random variables; returns start."""
        with self.lock:
            start = self.next_index
            if start + count > 1 << 32:
                raise OverflowError("the session's sequence of random variables is exhausted (2^32)")
            self.next_index += count
            return start


class SessionStore:
    def __init__(self, max_sessions: int, clock=time.monotonic):
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._max = max_sessions
        self._clock = clock

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(self, **kwargs) -> Session:
        self.expire()
        with self._lock:
            if len(self._sessions) >= self._max:
                raise TooManySessionsError(f"{len(self._sessions)} sessions are open, the limit is {self._max}")
            session = Session(session_id=secrets.token_urlsafe(18), last_used=self._clock(), **kwargs)
            self._sessions[session.session_id] = session
            return session

    def get(self, session_id: str) -> Session:
        """The live session (its idle timer restarts); SessionNotFoundError if unknown or expired."""
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.expires_at <= now:
                self._sessions.pop(session_id, None)
                raise SessionNotFoundError(session_id)
            session.last_used = now
            return session

    def close(self, session_id: str) -> Session:
        now = self._clock()
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None or session.expires_at <= now:
            raise SessionNotFoundError(session_id)
        return session

    def expire(self) -> int:
        """Drop expired sessions; returns how many."""
        now = self._clock()
        with self._lock:
            dead = [k for k, s in self._sessions.items() if s.expires_at <= now]
            for k in dead:
                del self._sessions[k]
        return len(dead)
