"""One error tree for the server. Retryability lives on the error type."""

from __future__ import annotations

import errno

__all__ = [
    "Busy",
    "ConfigError",
    "CorruptLogError",
    "DiskError",
    "DomainError",
    "FailedPrecondition",
    "FencedError",
    "InvalidArgument",
    "LogError",
    "NotFound",
    "PermissionDenied",
    "PipewardenError",
    "TaskDied",
    "TooLarge",
    "is_disk_error",
    "is_disk_full",
]


class PipewardenError(Exception):
    """Base of every error Pipewarden raises on purpose."""

    retriable: bool = False


class ConfigError(PipewardenError):
    """The configuration is invalid. The message names the key and what is wrong with it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}")
        self.key = key
        self.problem = problem


class LogError(PipewardenError):
    """The event log cannot be written or read; what it has not confirmed is not durable."""


class DiskError(LogError):
    """A write to the data directory failed for want of space or of a working disk (ENOSPC,
    EDQUOT, EIO, EROFS): the server stops cleanly rather than go on without durability. The
    message starts with "disk full: <path>: " (or "disk error: " for the others)."""

    def __init__(self, path: object, cause: OSError, consequence: str = "") -> None:
        kind = "disk full" if is_disk_full(cause) else "disk error"
        reason = cause.strerror or str(cause)
        super().__init__(f"{kind}: {path}: {reason}" + (f"; {consequence}" if consequence else ""))
        self.path = str(path)
        self.cause = cause


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
"""The errors of a write that mean the disk, not the program, is at fault."""


def is_disk_error(e: BaseException) -> bool:
    """Whether `e` is an OSError of DISK_ERRNOS."""
    return isinstance(e, OSError) and e.errno in DISK_ERRNOS


def is_disk_full(e: BaseException) -> bool:
    """Whether `e` says there is no space (or quota) left."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class CorruptLogError(LogError):
    """The event log holds a corrupt record where one may not be cut off (not the tail)."""


class FencedError(LogError):
    """Another writer has taken the log (a shared stream's new owner fenced it): this process
    no longer owns what the log holds and must drop it. Nothing it appended after the fence
    is in the log."""


class DomainError(PipewardenError):
    """A request that cannot be served as sent, in the domain's words. The layer that speaks to
    clients (server/api/status.py) maps each kind to its protocol's status: the core and the
    alerting code never name a gRPC or HTTP status."""


class InvalidArgument(DomainError):
    """The request is malformed or out of range; sending it again as it is will fail again."""


class NotFound(DomainError):
    """What the request names does not exist (or no longer does)."""


class FailedPrecondition(DomainError):
    """What the request names is not in a state that allows the change (e.g. acknowledging an
    alert that has resolved)."""


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""


class TooLarge(DomainError):
    """The request is larger than a limit allows: split it (sending it again as it is fails)."""


class Busy(DomainError):
    """The server is too loaded to take the request now; the same request may succeed later."""

    retriable = True

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds after which sending the request again is worth it."""


class TaskDied(PipewardenError):
    """A long-lived task of the server ended with an unexpected exception; the server stops
    rather than go on without it."""
