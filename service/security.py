"""Password hashing (argon2 via pwdlib) and signed, expiring bearer tokens (itsdangerous)."""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

_hasher = PasswordHash((Argon2Hasher(),))
# Verifying against this when the account does not exist keeps the timing the same.
_DUMMY_HASH = _hasher.hash("not-a-real-password")

MIN_PASSWORD_LENGTH = 10


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    if password_hash is None:
        _hasher.verify(password, _DUMMY_HASH)
        return False
    return _hasher.verify(password, password_hash)


def check_password_strength(password: str) -> str | None:
    """A message saying what is wrong, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password must be at least {MIN_PASSWORD_LENGTH} characters"
    return None


@dataclass(frozen=True)
class TokenSigner:
    secret_key: str
    ttl_seconds: int

    def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.secret_key, salt="teichaku.access-token")

    def issue(self, user_id: int, version: int = 0) -> str:
        # "ver" is the user's token version: raising it (sign-out, password change) ends the token.
        return self._serializer().dumps({"uid": user_id, "ver": version})

    def read_claims(self, token: str) -> tuple[int, int] | None:
        """(user id, token version), or None for a token that is forged, malformed or expired."""
        try:
            data = self._serializer().loads(token, max_age=self.ttl_seconds)
        except (SignatureExpired, BadSignature):
            return None
        uid = data.get("uid") if isinstance(data, dict) else None
        ver = data.get("ver", 0) if isinstance(data, dict) else None
        if not isinstance(uid, int) or not isinstance(ver, int) or isinstance(uid, bool):
            return None
        return uid, ver

    def read(self, token: str) -> int | None:
        """The user id, or None for a token that is forged, malformed or expired."""
        try:
            data = self._serializer().loads(token, max_age=self.ttl_seconds)
        except (SignatureExpired, BadSignature):
            return None
        uid = data.get("uid") if isinstance(data, dict) else None
        return uid if isinstance(uid, int) else None
