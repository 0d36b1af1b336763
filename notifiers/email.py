"""Email over SMTP with aiosmtplib: a plain-text part and an HTML part.

The Subject is the one-line summary (pipeline id, team, severity, what is wrong). Connection
security follows the receiver: `tls: true` speaks TLS from the first byte (SMTPS); otherwise
`starttls: auto` upgrades when the server offers STARTTLS, `always` refuses to send without it,
`never` stays in plain text. With a username the client logs in (only over TLS, unless
`starttls: never`). Each message has a Message-ID made from its notification id, so a resend
after a crash is recognisable as the same message, and a References header per alert, so a
mail client threads an alert's notifications together.

An SMTP reply 4xx, a dropped connection or a timeout is worth another try; 5xx (refused sender
or recipients, failed login) and TLS verification failures are final.
"""

from __future__ import annotations

import hashlib
import html
import logging
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from pipewarden.notifiers.config import EmailReceiver
from pipewarden.notifiers.errors import DeliveryError
from pipewarden.notifiers.notification import Notification, facts, links, summary

__all__ = ["EmailNotifier", "build_message"]

log = logging.getLogger(__name__)

SUBJECT_LIMIT = 200


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip(" >") or "pipewarden.invalid"


def build_message(receiver: EmailReceiver, n: Notification) -> EmailMessage:
    """The message for one notification: headers, a text part and an HTML alternative."""
    a = n.alert
    domain = _domain(receiver.from_)
    thread = hashlib.sha256((a.alert_id or a.fingerprint).encode()).hexdigest()[:24]
    msg = EmailMessage()
    msg["Subject"] = "[Pipewarden] " + summary(n.event, SUBJECT_LIMIT)
    msg["From"] = receiver.from_
    msg["To"] = ", ".join(receiver.to)
    msg["Date"] = formatdate(n.created, usegmt=True)
    msg["Message-ID"] = f"<{n.notification_id}.pipewarden@{domain}>"
    msg["References"] = f"<alert-{thread}.pipewarden@{domain}>"
    msg["X-Pipewarden-Alert-Id"] = a.alert_id
    msg["X-Pipewarden-Pipeline"] = a.pipeline_id
    msg["X-Pipewarden-Team"] = a.team
    rows = facts(n.event)
    found = links(receiver.links, a)
    text = [summary(n.event, 100_000), "", a.message or "(no message)", ""]
    width = max((len(label) for label, _ in rows), default=0)
    text += [f"{label.ljust(width)}  {value}" for label, value in rows]
    if found:
        text += ["", *(f"{t}: {href}" for t, href in found)]
    text += ["", "-- ", "Sent by Pipewarden."]
    msg.set_content("\n".join(text) + "\n")
    cells = "".join(
        f'<tr><th align="left" style="padding:2px 12px 2px 0">{html.escape(label)}</th>'
        f"<td>{html.escape(value)}</td></tr>"
        for label, value in rows
    )
    link_html = "".join(
        f'<li><a href="{html.escape(href, quote=True)}">{html.escape(t)}</a></li>'
        for t, href in found
    )
    page = (
        '<!DOCTYPE html><html><body style="font-family:sans-serif">'
        f'<h2 style="margin:0 0 8px 0">{html.escape(summary(n.event, 300))}</h2>'
        f"<p>{html.escape(a.message or '(no message)')}</p>"
        f"<table>{cells}</table>"
        + (f"<ul>{link_html}</ul>" if link_html else "")
        + '<p style="color:#888">Sent by Pipewarden.</p></body></html>'
    )
    msg.add_alternative(page, subtype="html")
    return msg


class EmailNotifier:
    """Sends to one SMTP server, one connection per message."""

    def __init__(self, receiver: EmailReceiver) -> None:
        self.receiver = receiver
        self._tls = self._tls_context(receiver)

    @staticmethod
    def _tls_context(receiver: EmailReceiver) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if receiver.ca_file:
            context.load_verify_locations(cafile=receiver.ca_file)
        if not receiver.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def send(self, n: Notification) -> None:
        """Send the message; return once the server has accepted it for some recipient."""
        r = self.receiver
        what = f"email receiver {r.name} ({r.smtp_host}:{r.smtp_port})"
        start_tls: bool | None = {"auto": None, "always": True, "never": False}[r.starttls]
        # Imported here, not with the module: a node without an email receiver never needs
        # it, and every start would pay for it.
        import aiosmtplib

        try:
            errors, _ = await aiosmtplib.send(
                build_message(r, n),
                hostname=r.smtp_host,
                port=r.smtp_port,
                username=r.username or None,
                password=r.password or None,
                use_tls=r.tls,
                start_tls=False if r.tls else start_tls,
                validate_certs=r.verify_tls,
                tls_context=self._tls,
                timeout=r.delivery.timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as e:
            codes = [x.code for x in e.recipients]
            raise DeliveryError(
                f"{what}: every recipient was refused: "
                + "; ".join(f"{x.recipient}: {x.code} {x.message}" for x in e.recipients),
                retriable=all(400 <= c < 500 for c in codes),
                status=max(codes, default=None),
            ) from e
        except aiosmtplib.SMTPResponseException as e:
            raise DeliveryError(
                f"{what}: {e.code} {e.message}",
                retriable=400 <= e.code < 500,
                status=e.code,
                body=e.message,
            ) from e
        except (
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPServerDisconnected,
            aiosmtplib.SMTPTimeoutError,
        ) as e:
            cause = f" ({e.__cause__})" if e.__cause__ else ""
            raise DeliveryError(f"{what}: {str(e).rstrip(': ')}{cause}", retriable=True) from e
        except ssl.SSLCertVerificationError as e:
            raise DeliveryError(f"{what}: TLS: {e.verify_message}", retriable=False) from e
        except aiosmtplib.SMTPException as e:
            # STARTTLS required but not offered, AUTH not offered, and the like: configuration.
            raise DeliveryError(f"{what}: {e}", retriable=False) from e
        except (ssl.SSLError, OSError) as e:
            raise DeliveryError(f"{what}: {e}", retriable=True) from e
        if errors:
            # Some recipients refused, others took it: resending would duplicate it for them.
            refused = "; ".join(f"{k}: {v.code} {v.message}" for k, v in errors.items())
            log.warning("%s: delivered, but refused for %s", what, refused)
