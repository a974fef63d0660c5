# -*- test-case-name: test.test_admin_auth -*-
"""Password and token hashing for the web admin (scrypt from the standard library)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["hash_password", "verify_password", "is_hashed", "weakness", "new_password", "new_token",
           "token_digest"]

#: scrypt cost: 2**15 * 8 * 128 bytes = 32 MiB and roughly 50-100 ms per check.
SCRYPT_N = 2 ** 15
SCRYPT_R = 8
SCRYPT_P = 1
_PREFIX = "scrypt"
_COMMON = frozenset({
    "123", "1234", "12345", "123456", "1234567", "12345678", "123456789", "1234567890", "password",
    "password1", "admin", "admin123", "root", "qwerty", "letmein", "changeme", "secret", "nps", "guest",
    "111111", "000000", "abc123", "iloveyou", "welcome", "passw0rd",
})


def hash_password(password: str, n: int = SCRYPT_N) -> str:
    """
    @param password: The clear-text password.
    @param n: scrypt's CPU/memory cost (a power of two).
    @return: C{scrypt$n$r$p$salt$hash}, salt and hash in url-safe base64.
    """
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=256 * 1024 * 1024, dklen=32)
    return "$".join((_PREFIX, str(n), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)))


def is_hashed(value: str) -> bool:
    """@return: Whether C{value} looks like a L{hash_password} result."""
    return value.startswith(_PREFIX + "$") and value.count("$") == 5


def verify_password(password: str, stored: str) -> bool:
    """
    Check C{password} against a stored hash (or, for records imported from
    NPS, a clear-text password), in constant time.

    @return: Whether it matches. A malformed hash never matches.
    """
    if not stored:
        return False
    if not is_hashed(stored):
        return hmac.compare_digest(password.encode("utf-8"), stored.encode("utf-8"))
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = _unb64(digest)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                maxmem=256 * 1024 * 1024, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def weakness(password: str, username: str = "") -> str:
    """
    @return: Why C{password} is weak, or an empty string if it looks fine.
    """
    if len(password) < 12:
        return f"it is only {len(password)} characters long (use 12 or more)"
    if password.lower() in _COMMON or password.lower() == username.lower():
        return "it is a well-known password"
    if len(set(password)) < 5:
        return "it repeats too few different characters"
    return ""


def new_password() -> str:
    """@return: A random password for a new admin (about 120 bits)."""
    return secrets.token_urlsafe(15)


def new_token() -> str:
    """@return: A random API bearer token (256 bits), prefixed so it is recognisable."""
    return "nps_" + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """
    Tokens are long random strings, so a fast hash is enough to store them.

    @return: The SHA-256 hex digest under which a token is stored.
    """
    return hashlib.sha256(b"nps-api-token\x00" + token.encode("utf-8")).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
