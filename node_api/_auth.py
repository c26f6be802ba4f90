"""Who is calling: the organization of the client certificate, and its user.

The organization is the common name of the client certificate that the TLS
handshake verified against the network CA; it must be a member of the
network. A request may add ``Authorization: Bearer <token>``: tokens are
issued by the node's admin (``airfed node token create USER``) for users of
the node's own organization, stored as their SHA-256, and accepted only from
a caller that presents that organization's certificate. The caller is then
``org/user``, which permissions can name.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from airfed.node_api._db import ApiToken, Database
from airfed.node_api.errors import BadRequest, PermissionDenied, Unauthenticated
from airfed.sdk.spec import Permission

__all__ = ["Caller", "identify", "issue_token"]

_TOKEN_PREFIX = "afn_"  # noqa: S105 (a visible prefix, not a secret)


@dataclass(frozen=True)
class Caller:
    """An organization, or a user of one."""

    organization: str
    user: str | None = None

    @property
    def id(self) -> str:
        return (
            self.organization
            if self.user is None
            else f"{self.organization}/{self.user}"
        )

    def may(self, permission: Permission, owner: str | None = None) -> bool:
        """Whether ``permission`` allows this caller; an owner always may."""
        if owner is not None and self.organization == owner:
            return True
        return bool(permission.allows(self.organization, self.user))

    def require(self, permission: Permission, owner: str | None, what: str) -> None:
        if not self.may(permission, owner):
            raise PermissionDenied(f"{self.id} is not permitted to {what}")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(db: Database, user: str) -> str:
    """Create a token for ``user`` of the node's organization; shown once."""
    if not user or not all(c.isalnum() or c in "-_." for c in user):
        raise BadRequest(
            f"user name {user!r} may hold only letters, digits, '-', '_' and '.'"
        )
    token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as session:
        session.add(ApiToken(user=user, token_hash=_hash(token)))
    return token


def _user_for_token(db: Database, token: str) -> str | None:
    with db.session() as session:
        row = session.scalar(
            select(ApiToken).where(ApiToken.token_hash == _hash(token))
        )
        return None if row is None else row.user


def identify(
    scope: MutableMapping[str, Any],
    authorization: str | None,
    *,
    db: Database,
    node_organization: str,
    members: frozenset[str],
) -> Caller:
    """The caller of a request, from its TLS scope and Authorization header."""
    tls = scope.get("extensions", {}).get("tls") or {}
    organization = tls.get("client_organization")
    if not organization:
        raise Unauthenticated("a client certificate from the network CA is required")
    if organization not in members:
        raise PermissionDenied(f"organization {organization!r} is not in the network")
    if not authorization:
        return Caller(organization)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    if organization != node_organization:
        raise Unauthenticated(
            f"user tokens of this node are for organization {node_organization}; "
            f"{organization} cannot present one"
        )
    user = _user_for_token(db, token.strip())
    if user is None:
        raise Unauthenticated("the user token is unknown; ask the node's admin")
    return Caller(organization, user)
