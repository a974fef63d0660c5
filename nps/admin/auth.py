# -*- test-case-name: test.test_admin_auth -*-
"""Who is asking: browser sessions, CSRF tokens, bearer tokens, NPS auth_key, login rate limits."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from typing import Any, Callable

import attrs

__all__ = ["Principal", "SessionManager", "LoginLimiter", "auth_key_valid", "COOKIE_NAME"]

COOKIE_NAME = "nps_session"
#: A session ends after this long without a request, and after SESSION_MAX_AGE at the latest.
SESSION_IDLE = 2 * 3600.0
SESSION_MAX_AGE = 24 * 3600.0
MAX_SESSIONS = 1000
#: NPS accepts an auth_key timestamp this many seconds away from now.
AUTH_KEY_SKEW = 20


@attrs.frozen
class Principal:
    """
    An authenticated caller: the admin, or a client's own web login
    (C{client_id} set), which sees and edits only that client's records.
    """

    name: str
    client_id: int | None = None
    #: C{session}, C{token} or C{auth_key}: only sessions need a CSRF token.
    via: str = "session"
    csrf: str = ""

    @property
    def is_admin(self) -> bool:
        return self.client_id is None

    def may_see(self, client_id: int) -> bool:
        """@return: Whether this caller may read and edit records of C{client_id}."""
        return self.client_id is None or self.client_id == client_id


@attrs.define
class _Session:
    principal: Principal
    created: float
    seen: float


class SessionManager:
    """Browser sessions in memory, keyed by a random cookie value (lost on restart: log in again)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def create(self, name: str, client_id: int | None) -> tuple[str, Principal]:
        """
        @return: The cookie value and the new session's principal (with its CSRF token).
        """
        now = self._clock()
        sid = secrets.token_urlsafe(32)
        principal = Principal(name, client_id, "session", secrets.token_urlsafe(32))
        self._sessions[sid] = _Session(principal, now, now)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return sid, principal

    def get(self, sid: str) -> Principal | None:
        """@return: The session's principal, if C{sid} is a live session."""
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > SESSION_IDLE or now - session.created > SESSION_MAX_AGE:
            del self._sessions[sid]
            return None
        session.seen = now
        self._sessions.move_to_end(sid)
        return session.principal

    def end(self, sid: str) -> None:
        """Log a session out."""
        self._sessions.pop(sid, None)

    def end_client(self, client_id: int) -> None:
        """End every session of a client's web login (the client was deleted or its login changed)."""
        for sid in [s for s, v in self._sessions.items() if v.principal.client_id == client_id]:
            del self._sessions[sid]


class LoginLimiter:
    """
    Failed logins per source address and per user name: after C{limit}
    failures within C{window} seconds, further attempts are refused until
    the oldest failure leaves the window.
    """

    def __init__(self, clock: Callable[[], float], limit: int = 5, window: float = 300.0) -> None:
        self._clock = clock
        self.limit = limit
        self.window = window
        self._failures: dict[str, list[float]] = {}

    def _recent(self, key: str) -> list[float]:
        now = self._clock()
        times = [t for t in self._failures.get(key, []) if now - t < self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, *keys: str) -> float:
        """@return: Seconds until C{keys} may try again (0: now)."""
        wait = 0.0
        for key in keys:
            times = self._recent(key)
            if len(times) >= self.limit:
                wait = max(wait, times[-self.limit] + self.window - self._clock())
        return wait

    def failed(self, *keys: str) -> None:
        """Count one failure for each of C{keys}."""
        if len(self._failures) > 100_000:
            self._failures.clear()  # bounded memory under a flood; the window starts again
        now = self._clock()
        for key in keys:
            self._failures.setdefault(key, []).append(now)
            del self._failures[key][:-self.limit * 2]

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


def auth_key_valid(auth_key: str, given: str, timestamp: str, now: float) -> bool:
    """
    NPS's API style: C{auth_key=md5(<nps.conf auth_key> + <timestamp>)} and
    C{timestamp} within L{AUTH_KEY_SKEW} seconds of now. Never valid when
    C{auth_key} is unset (NPS's bypass, CVE-2022-40494).
    """
    if not auth_key or not given or not timestamp.isdigit():
        return False
    if abs(int(timestamp) - now) > AUTH_KEY_SKEW:
        return False
    expected = hashlib.md5((auth_key + timestamp).encode("utf-8")).hexdigest()
    return hmac.compare_digest(expected.encode("ascii"), given.lower().encode("utf-8", "replace"))


def cookie_header(sid: str, path: str, secure: bool, max_age: int | None = None) -> bytes:
    """@return: A C{Set-Cookie} value: HttpOnly, SameSite=Strict, Secure over HTTPS."""
    parts = [f"{COOKIE_NAME}={sid}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts).encode("ascii")


def describe(principal: Principal | None) -> dict[str, Any]:
    """@return: What C{/api/v1/session} says about a caller."""
    if principal is None:
        return {"authenticated": False}
    return {"authenticated": True, "user": principal.name, "role": "admin" if principal.is_admin else "client",
            "client_id": principal.client_id, "csrf_token": principal.csrf}
