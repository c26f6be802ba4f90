"""Who is calling: the organization of the client certificate, and its user.

The organization is the common name of the client certificate that the TLS
handshake verified against the network CA; it must be a member of the
network. A request may add ``Authorization: Bearer <token>``: tokens are
issued by the node's admin (``airfed node token create USER``) for users of
the node's own organization, stored as their SHA-256, and accepted only from
a caller that presents that organization's certificate. The caller is then
``org/user``, which permissions can name.

``airfed node token list`` shows every token by id (never the token), and
``airfed node token revoke ID`` marks one revoked in the node's database.
Every request looks its token up, so a revoked token is refused (401) from
the next request on, with no cache to expire; the row stays for the record.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from airfed.node_api._db import ApiToken, Database, utcnow
from airfed.node_api.errors import (
    BadRequest,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from airfed.sdk.spec import Permission

__all__ = [
    "Caller",
    "identify",
    "issue_token",
    "issue_token_with_id",
    "list_tokens",
    "revoke_token",
]

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
    return issue_token_with_id(db, user)[1]


def issue_token_with_id(db: Database, user: str) -> tuple[int, str]:
    """Like :func:`issue_token`, with the id that ``revoke_token`` takes."""
    if not user or not all(c.isalnum() or c in "-_." for c in user):
        raise BadRequest(
            f"user name {user!r} may hold only letters, digits, '-', '_' and '.'"
        )
    token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as session:
        row = ApiToken(user=user, token_hash=_hash(token))
        session.add(row)
        session.flush()
        return int(row.id), token


def _token_out(row: ApiToken) -> dict[str, Any]:
    return {
        "id": row.id,
        "user": row.user,
        "created_at": row.created_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "status": "revoked" if row.revoked_at else "active",
    }


def list_tokens(db: Database, user: str | None = None) -> list[dict[str, Any]]:
    """Every token of the node (or of ``user``), oldest first; no secrets."""
    query = select(ApiToken).order_by(ApiToken.id)
    if user is not None:
        query = query.where(ApiToken.user == user)
    with db.session() as session:
        return [_token_out(row) for row in session.scalars(query)]


def revoke_token(db: Database, token_id: int) -> dict[str, Any]:
    """Mark token ``token_id`` revoked; revoking it again changes nothing."""
    with db.session() as session:
        row = session.get(ApiToken, token_id)
        if row is None:
            raise NotFound(
                f"no token with id {token_id}; 'airfed node token list' shows them"
            )
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return _token_out(row)


def _user_for_token(db: Database, token: str) -> str | None:
    with db.session() as session:
        row = session.scalar(
            select(ApiToken).where(ApiToken.token_hash == _hash(token))
        )
        if row is None:
            return None
        if row.revoked_at is not None:
            raise Unauthenticated(
                "the user token was revoked; ask the node's admin for a new one"
            )
        return row.user


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
