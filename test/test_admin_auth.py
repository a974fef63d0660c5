"""Unit tests for the admin's passwords, sessions, login limiter and NPS auth_key check."""
from __future__ import annotations

import hashlib

from twisted.internet.task import Clock

from nps.admin import passwords
from nps.admin.auth import SESSION_IDLE, LoginLimiter, SessionManager, auth_key_valid, cookie_header


def test_scrypt_hash_roundtrip() -> None:
    stored = passwords.hash_password("hunter2 but longer", n=2 ** 10)
    assert stored.startswith("scrypt$1024$8$1$")
    assert "hunter2" not in stored
    assert passwords.verify_password("hunter2 but longer", stored)
    assert not passwords.verify_password("hunter3 but longer", stored)
    assert passwords.hash_password("same", n=2 ** 10) != passwords.hash_password("same", n=2 ** 10)  # salted
    assert not passwords.verify_password("x", "scrypt$bad$hash$here$a$b")
    assert not passwords.verify_password("", "")
    # clear-text records (imported from NPS, or set with nps client add) still verify
    assert passwords.verify_password("123", "123") and not passwords.verify_password("1234", "123")


def test_weakness() -> None:
    assert "characters" in passwords.weakness("123456")
    assert "well-known" in passwords.weakness("administrator1", "administrator1")
    assert passwords.weakness("aaaaaaaaaaaaaa")
    assert passwords.weakness(passwords.new_password()) == ""
    assert passwords.new_token().startswith("nps_") and len(passwords.new_token()) > 40
    assert passwords.token_digest("a") != passwords.token_digest("b")


def test_sessions_expire_when_idle() -> None:
    clock = Clock()
    sessions = SessionManager(clock.seconds)
    sid, principal = sessions.create("admin", None)
    assert principal.is_admin and principal.csrf
    assert sessions.get(sid) == principal
    clock.advance(SESSION_IDLE - 1)
    assert sessions.get(sid) == principal  # use keeps it alive
    clock.advance(SESSION_IDLE + 1)
    assert sessions.get(sid) is None
    sid2, client = sessions.create("alice", 7)
    assert not client.is_admin and client.may_see(7) and not client.may_see(8)
    sessions.end_client(7)
    assert sessions.get(sid2) is None


def test_login_limiter_window() -> None:
    clock = Clock()
    limiter = LoginLimiter(clock.seconds, limit=3, window=60)
    for _ in range(3):
        assert limiter.retry_after("ip:1") == 0
        limiter.failed("ip:1")
        clock.advance(1)
    assert 0 < limiter.retry_after("ip:1") <= 60
    assert limiter.retry_after("ip:2") == 0
    clock.advance(60)
    assert limiter.retry_after("ip:1") == 0


def test_auth_key() -> None:
    now = 1_700_000_000
    good = hashlib.md5(b"secret1700000000").hexdigest()
    assert auth_key_valid("secret", good, "1700000000", now)
    assert not auth_key_valid("secret", good, "1700000000", now + 60)  # too old
    assert not auth_key_valid("secret", "0" * 32, "1700000000", now)
    # NPS's bypass: an unset auth_key must never accept md5("" + timestamp)
    assert not auth_key_valid("", hashlib.md5(b"1700000000").hexdigest(), "1700000000", now)


def test_cookie_flags() -> None:
    header = cookie_header("abc", "/nps/", secure=True)
    assert header == b"nps_session=abc; Path=/nps/; HttpOnly; SameSite=Strict; Secure"
