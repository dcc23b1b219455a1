"""Seeds, sessions and keys: where every variable's random key comes from, in one module.

A request either names a session (GoMLX's per-graph RNG state: a seed, an RNG mode and defaults) or
carries a seed; 0 picks a random one (GoMLX's NoSeed), reported back. A variable's own non-zero seed
overrides either. The key derivation itself is the contract's and lives in `engine.rng`:

    by-name mode     key = rng.variable_key(seed, name)          independent of order
    sequential mode  key = rng.sequential_key(seed, n)           n = the variable's position

A session is stateless: its id is the session itself (seed, mode, defaults, expiry) signed with a
key the fleet shares, so every replica that holds the key serves it, restarts included, and none
has to remember it (docs/determinism.md "Sessions across replicas"):

    session_id = "wg1." kid "." origin "." base64url(Session message) "." base64url(HMAC-SHA256[:16])

`kid` names the signing key (rotation), `origin` the process that opened the session. A
sequential session's position travels with the client (MaterializeRequest.sequence_start); a
request without it uses the position counter of the process that opened the session, which only
that process has. Positions are taken when a batch is keyed, after the whole batch is planned: a
batch that fails validation consumes none.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import timestamp_pb2

from weightgen.server import engine as eng
from weightgen.server.engine import rng
from weightgen.server.engine.spec import echo
from weightgen.server.status import RequestError, exhausted, invalid
from weightgen.server.validate import Batch, check_cancelled, dtype_from_proto, initializer_from_proto
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire

log = logging.getLogger("weightgen.server")

SEQUENCE_LENGTH = 1 << 32
"""Positions of a sequential session are one uint32 counter word."""
TOKEN_VERSION = "wg1"
TAG_BYTES = 16
"""128-bit HMAC tags: forging one takes 2^128 guesses."""
MIN_KEY_BYTES = 32


class SessionKeys:
    """The HMAC-SHA256 keys of session ids: the first signs, every one verifies (rotation)."""

    def __init__(self, keys: list[bytes]):
        if not keys:
            raise ValueError("no session keys")
        self._keys = {hashlib.sha256(k).hexdigest()[:8]: k for k in keys}
        self.signing = hashlib.sha256(keys[0]).hexdigest()[:8]

    @classmethod
    def load(cls, path: str) -> SessionKeys:
        """One key per line (blank lines and # comments skipped), at least 32 bytes of text each."""
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            raise SystemExit(f"weightgen: --session-keys-file {path}: {e.strerror}") from None
        keys = [line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise SystemExit(f"weightgen: --session-keys-file {path} holds no key")
        short = [n for n, k in enumerate(keys, 1) if len(k) < MIN_KEY_BYTES]
        if short:
            raise SystemExit(
                f"weightgen: --session-keys-file {path}: key(s) on line(s) {short} are shorter than {MIN_KEY_BYTES} "
                "characters (make one with: openssl rand -base64 32)"
            )
        return cls(keys)

    @classmethod
    def ephemeral(cls) -> SessionKeys:
        return cls([secrets.token_bytes(32)])

    def sign(self, origin: str, payload: bytes) -> str:
        body = f"{TOKEN_VERSION}.{self.signing}.{origin}.{_b64(payload)}"
        return f"{body}.{_b64(self._tag(self._keys[self.signing], body))}"

    def verify(self, session_id: str) -> tuple[str, bytes] | None:
        """(origin, payload) of a genuine id signed by one of our keys; None otherwise."""
        parts = session_id.split(".")
        if len(parts) != 5 or parts[0] != TOKEN_VERSION:
            return None
        key = self._keys.get(parts[1])
        if key is None:
            return None
        body = session_id[: session_id.rindex(".")]
        try:
            tag, payload = _unb64(parts[4]), _unb64(parts[3])
        except (binascii.Error, ValueError):
            return None
        # One spelling per id: base64's unused low bits would otherwise let several strings pass.
        if _b64(tag) != parts[4] or _b64(payload) != parts[3]:
            return None
        if not hmac.compare_digest(tag, self._tag(key, body)):
            return None
        return parts[2], payload

    @staticmethod
    def _tag(key: bytes, body: str) -> bytes:
        return hmac.new(key, body.encode(), hashlib.sha256).digest()[:TAG_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    session_id: str
    seed: int
    sequential: bool
    default_initializer: eng.Initializer | None
    default_dtype: str
    expires_at: float  # Unix time: ids travel between processes, so the wall clock
    origin: str  # the process that opened it
    payload_bytes: int


def not_found(
    session_id: str, why: str = "unknown, expired, or signed with a key this server does not hold"
) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, f"session_id: no open session {echo(session_id)} ({why})")


class Sessions:
    """Sessions as signed ids. This process keeps only a bounded cache of ids it has verified
    (so a busy session is not parsed per request) and the position counters of the sequential
    sessions it opened, for requests that do not carry their position."""

    def __init__(self, keys: SessionKeys, max_sessions: int, cache_bytes: int, clock=time.time):
        self.keys = keys
        self.origin = secrets.token_hex(8)
        self._max = max_sessions
        self._cache_bytes = cache_bytes
        self._clock = clock
        self._verified: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._verified_bytes = 0
        self._counters: dict[str, tuple[int, float]] = {}  # session id -> (next position, expires_at)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Sessions this process holds something for (verified ids cached, position counters)."""
        with self._lock:
            return len(self._verified.keys() | self._counters.keys())

    def open(
        self, seed: int, sequential: bool, default_initializer: pb.Initializer | None, default_dtype: str, ttl: int
    ) -> pb.Session:
        """A new session, as the reply to send: its id signs every other field."""
        now = self._clock()
        expire = timestamp_pb2.Timestamp()
        expire.FromSeconds(int(now + ttl))
        message = pb.Session(
            seed=seed or rng.random_seed(),
            rng_mode=pb.RNG_MODE_SEQUENTIAL if sequential else pb.RNG_MODE_BY_NAME,
            default_dtype=wire.dtype_enum(default_dtype),
            ttl_seconds=ttl,
            expire_time=expire,
        )
        if default_initializer is not None:
            message.default_initializer.CopyFrom(default_initializer)
        message.session_id = self.keys.sign(self.origin, message.SerializeToString(deterministic=True))
        return message

    def get(self, session_id: str) -> Session:
        """The session an id describes; NOT_FOUND if it is forged, expired or signed with a key we
        do not hold."""
        now = self._clock()
        with self._lock:
            session = self._verified.get(session_id)
            if session is not None:
                self._verified.move_to_end(session_id)
        if session is None:
            session = self._parse(session_id)
            self._remember(session)
        if session.expires_at <= now:
            raise not_found(session_id, "expired")
        return session

    def _parse(self, session_id: str) -> Session:
        verified = self.keys.verify(session_id)
        if verified is None:
            raise not_found(session_id)
        origin, payload = verified
        try:
            message = pb.Session.FromString(payload)
            init = None
            if message.HasField("default_initializer"):
                init = initializer_from_proto(message.default_initializer, "default_initializer")
            dtype = dtype_from_proto(message.default_dtype, "float32", "default_dtype")
        except (protobuf_message.DecodeError, eng.SpecError) as e:  # signed by us, so a server bug or an old format
            raise not_found(session_id, f"its contents do not parse here: {e}") from None
        return Session(
            session_id=session_id,
            seed=message.seed,
            sequential=message.rng_mode == pb.RNG_MODE_SEQUENTIAL,
            default_initializer=init,
            default_dtype=dtype,
            expires_at=message.expire_time.seconds,
            origin=origin,
            payload_bytes=len(payload),
        )

    def _remember(self, session: Session) -> None:
        with self._lock:
            if session.session_id in self._verified:
                return
            self._verified[session.session_id] = session
            self._verified_bytes += session.payload_bytes + len(session.session_id)
            while self._verified and (len(self._verified) > self._max or self._verified_bytes > self._cache_bytes):
                _, old = self._verified.popitem(last=False)
                self._verified_bytes -= old.payload_bytes + len(old.session_id)

    def close(self, session_id: str) -> int:
        """Closing verifies the id and returns (and forgets) this process's position counter of a
        sequential session (0 if it has none). The id itself stays valid until it expires, on every
        replica: it holds nothing anywhere, and no replica can revoke it for the others."""
        session = self.get(session_id)
        with self._lock:
            counter = self._counters.pop(session_id, None)
            if self._verified.pop(session_id, None) is not None:
                self._verified_bytes -= session.payload_bytes + len(session_id)
        return counter[0] if counter else 0

    def reserve(self, session: Session, count: int) -> int:
        """Positions [start, start + count) from this process's counter of `session` (requests
        that do not carry their position); returns start."""
        if session.origin != self.origin:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "sequence_start: this sequential session was opened by another server process (another "
                "replica, or before a restart), which alone knows its next position: send sequence_start "
                "(the position of the first random variable; the Python client does), or use the "
                "replica that opened the session",
            )
        with self._lock:
            position, _ = self._counters.get(session.session_id, (0, session.expires_at))
            if session.session_id not in self._counters and len(self._counters) >= self._max:
                raise exhausted(
                    "sessions",
                    f"{len(self._counters)} sequential sessions count their positions on this server, the limit "
                    f"is {self._max} (--max-sessions); send sequence_start to need none",
                )
            if position + count > SEQUENCE_LENGTH:
                raise exhausted(
                    "session_sequence", "session_id: the session's sequence of random variables is exhausted (2^32)"
                )
            self._counters[session.session_id] = (position + count, session.expires_at)
            return position

    def expire(self) -> int:
        """Forget expired sessions; returns how many."""
        now = self._clock()
        with self._lock:
            dead = [k for k, (_, expires) in self._counters.items() if expires <= now]
            for k in dead:
                del self._counters[k]
            stale = [k for k, s in self._verified.items() if s.expires_at <= now]
            for k in stale:
                self._verified_bytes -= self._verified.pop(k).payload_bytes + len(k)
        return len(dead) + len(stale)


# -- a batch's seeds and keys -----------------------------------------------------------------------


def session_of(batch: Batch, sessions: Sessions) -> Session | None:
    session = sessions.get(batch.session_id) if batch.session_id else None
    if batch.sequence_start is not None and not (session and session.sequential):
        raise invalid("sequence_start: applies only to a sequential session")
    return session


def with_defaults(spec: eng.VariableSpec, session: Session | None) -> eng.VariableSpec:
    """The spec with the session's default dtype and initializer where the request left them out."""
    dtype = spec.dtype or (session.default_dtype if session else "float32")
    init = spec.initializer if spec.initializer is not None else (session.default_initializer if session else None)
    return replace(spec, dtype=dtype, initializer=init)


def key(
    prepared: list[eng.Prepared],
    batch: Batch,
    session: Session | None,
    sessions: Sessions,
    cancelled: threading.Event | None = None,
) -> list[eng.Prepared]:
    """Every planned variable with its effective seed and key (and its position in a sequential
    session: from the request's sequence_start, else from this process's counter, which this call
    advances: so call it once the batch is known to be valid)."""
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
        start = batch.sequence_start
        if start is None:
            start = sessions.reserve(session, len(sequential))
        elif start + len(sequential) > SEQUENCE_LENGTH:
            raise invalid(
                f"sequence_start: {start} + {len(sequential)} random variables pass the session's last position "
                f"({SEQUENCE_LENGTH - 1})"
            )
        for n, i in enumerate(sequential):
            keyed[i] = prepared[i].keyed(session.seed, rng.sequential_key(session.seed, start + n), start + n)
    return keyed
