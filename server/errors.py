"""One error tree for the server. Retryability lives on the error type."""

from __future__ import annotations


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


class CorruptLogError(LogError):
    """The event log holds a corrupt record where one may not be cut off (not the tail)."""


class RequestError(PipewardenError):
    """A request cannot be served as sent; carries the gRPC status name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
