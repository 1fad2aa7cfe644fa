"""Secrets for raters and admins: generated once, shown once, stored only as salted scrypt hashes.

A leaked study database must not let anyone log in as a pathologist, so the secret itself is
never written anywhere; scrypt's memory cost makes guessing from the hash expensive.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def new_secret() -> str:
    """A random secret of about 96 bits, URL-safe so it can be pasted or typed."""
    return secrets.token_urlsafe(12)


def hash_secret(secret: str) -> str:
    """Salted scrypt hash in the self-describing form `scrypt$n$r$p$salt$hash`."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(secret, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    """True when `secret` matches `stored`; compares in constant time, False on any malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = _scrypt(secret, bytes.fromhex(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


def token_digest(token: str) -> str:
    """sha256 of a session token: sessions are looked up by digest so the table holds no live token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
