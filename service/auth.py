"""Optional bearer-token auth, shared by REST and gRPC. Tokens are compared in constant time,
and every configured token is compared, so timing tells nothing about which one nearly
matched."""

from __future__ import annotations

import hmac
import re
import uuid

from .errors import ForbiddenError, UnauthorizedError

__all__ = ["TokenChecker", "request_id"]

_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id(given: str | None) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a fresh one."""
    if given and _ID.match(given):
        return given
    return uuid.uuid4().hex


class TokenChecker:
    def __init__(self, tokens: list[bytes]) -> None:
        self.tokens = tokens

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def check(self, authorization: str | None) -> None:
        """Raise unless ``authorization`` is ``Bearer <a configured token>`` (or auth is off)."""
        if not self.tokens:
            return
        if not authorization:
            raise UnauthorizedError("missing bearer token")
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise UnauthorizedError("expected 'Authorization: Bearer <token>'")
        given = value.strip().encode()
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(token, given)
        if not ok:
            raise ForbiddenError("invalid token")
