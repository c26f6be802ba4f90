"""Errors of the node; each carries the HTTP status the API answers with.

::

    AirfedError
     +-- NodeError                  500, base of every node error
          +-- BadRequest            400, input is malformed (says which field)
          +-- Unauthenticated       401, the caller could not be identified
          +-- PermissionDenied      403, the caller may not do this
          +-- NotFound              404, no such asset or task
          +-- Conflict              409, the key is taken by another asset
          +-- Gone                  410, a transient model was deleted
          +-- PayloadTooLarge       413, an upload exceeds the node's limit
          +-- DatabaseUnavailable   503, the node's database failed
          +-- DecryptionFailed      500, stored bytes could not be decrypted
          +-- TaskFailed            500, a task could not run (message says why)

The API turns every ``NodeError`` into ``application/problem+json`` with its
status and message; anything else becomes a 500 without details.
"""

from __future__ import annotations

from airfed.sdk.errors import AirfedError

__all__ = [
    "BadRequest",
    "Conflict",
    "DatabaseUnavailable",
    "DecryptionFailed",
    "Gone",
    "NodeError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "TaskFailed",
    "Unauthenticated",
]


# mypy runs on the folders (``node_api``), so ``airfed.*`` imports are Any to it.
class NodeError(AirfedError):  # type: ignore[misc,unused-ignore]
    """Base of every node error; ``status`` is the HTTP status to answer."""

    status = 500
    title = "Node error"


class BadRequest(NodeError):
    status = 400
    title = "Bad request"


class Unauthenticated(NodeError):
    status = 401
    title = "Unauthenticated"


class PermissionDenied(NodeError):
    status = 403
    title = "Permission denied"


class NotFound(NodeError):
    status = 404
    title = "Not found"


class Conflict(NodeError):
    status = 409
    title = "Conflict"


class Gone(NodeError):
    """The asset existed but its content was deleted (a transient model)."""

    status = 410
    title = "Gone"


class PayloadTooLarge(NodeError):
    status = 413
    title = "Payload too large"


class DatabaseUnavailable(NodeError):
    status = 503
    title = "Database unavailable"


class DecryptionFailed(NodeError):
    """Stored bytes failed authentication: wrong key or tampered file."""

    title = "Decryption failed"


class TaskFailed(NodeError):
    title = "Task failed"
