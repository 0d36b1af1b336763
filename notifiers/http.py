"""One HTTP POST and what its answer means for retrying: the part the HTTP adapters share.

2xx is accepted. 429 and 5xx are worth another try, after the `Retry-After` the receiver gave
when it gave one; any other answer is final and its body is kept for the log. A refused
connection, a reset or a timeout is worth another try too.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipewarden import __version__
from pipewarden.notifiers.errors import DeliveryError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["BODY_EXCERPT", "Answer", "HttpClient", "parse_retry_after"]

BODY_EXCERPT = 2048
"""How much of an answer's body is kept for logs and dead letters."""
USER_AGENT = f"Pipewarden/{__version__}"


@dataclass(frozen=True)
class Answer:
    """What the receiver answered."""

    status: int
    """HTTP status."""
    body: str
    """The beginning of the body."""
    retry_after: float | None
    """Seconds from Retry-After, when sent."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class HttpClient:
    """A shared aiohttp session for the HTTP adapters (connections are kept alive and reused).

    Made with `start()` inside the running loop, released by `close()`."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session. aiohttp is imported here, not with the module: a node whose
        receivers are not HTTP ones starts a tenth of a second sooner without it."""
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, limit_per_host=8),
                headers={"User-Agent": USER_AGENT},
                # Proxies from the environment are not followed: receivers are configured.
                trust_env=False,
            )

    async def close(self) -> None:
        """Close the session and its connections. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        time_limit: float,
        headers: Mapping[str, str] | None = None,
        what: str,
    ) -> Answer:
        """POST `body` as JSON and return the answer if it is 2xx; otherwise raise a
        DeliveryError saying whether to retry. `what` names the receiver in messages."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        import aiohttp

        all_headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            async with self._session.post(
                url,
                data=body,
                headers=all_headers,
                timeout=aiohttp.ClientTimeout(total=time_limit),
                allow_redirects=False,
            ) as response:
                raw = await response.content.read(BODY_EXCERPT)
                answer = Answer(
                    status=response.status,
                    body=raw.decode("utf-8", errors="replace"),
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
        except TimeoutError as e:
            raise DeliveryError(f"{what}: no answer within {time_limit:g}s", retriable=True) from e
        except aiohttp.ClientError as e:
            raise DeliveryError(f"{what}: {type(e).__name__}: {e}", retriable=True) from e
        except OSError as e:
            raise DeliveryError(f"{what}: {e}", retriable=True) from e
        if 200 <= answer.status < 300:
            return answer
        retriable = answer.status == 429 or answer.status >= 500
        raise DeliveryError(
            f"{what}: HTTP {answer.status}: {answer.body.strip()[:300]}",
            retriable=retriable,
            status=answer.status,
            body=answer.body,
            retry_after=answer.retry_after,
        )
