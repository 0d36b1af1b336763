"""Why a notification was not delivered. Retryability lives on the error.

A `DeliveryError` carries what the receiver answered (status, an excerpt of the body, a
`Retry-After`), so the retry loop decides from the error alone and the dead-letter record says
what happened.
"""

from __future__ import annotations

from pipewarden.server.base.errors import PipewardenError

__all__ = ["DeliveryError"]


class DeliveryError(PipewardenError):
    """One attempt to deliver a notification failed."""

    def __init__(
        self,
        message: str,
        *,
        retriable: bool,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        """True for network errors, timeouts, 5xx and 429 (and SMTP 4xx): worth another try."""
        self.status = status
        """The HTTP status or SMTP reply code, when the receiver answered."""
        self.body = body
        """An excerpt of the receiver's answer, for the log and the dead-letter record."""
        self.retry_after = retry_after
        """Seconds the receiver asked us to wait (Retry-After), when it said."""

    @property
    def kind(self) -> str:
        """A short, stable description for logs and metrics: `http 503`, `smtp 550`, `network`."""
        return f"status {self.status}" if self.status is not None else "network"
