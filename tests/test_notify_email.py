"""Email against a real SMTP server (aiosmtpd): plain, STARTTLS and implicit TLS with
certificates made at test time, login, and what 4xx and 5xx replies do."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pipewarden.notifiers import deadletters
from pipewarden.notifiers.config import parse_receivers, parse_routes
from pipewarden.notifiers.dispatcher import Dispatcher
from tests.support.alert_events import event
from tests.support.peers import Certificates, SmtpPeer


@pytest.fixture(autouse=True)
def _quiet_aiosmtpd(caplog: pytest.LogCaptureFixture) -> None:
    # aiosmtpd logs every session at INFO, and a deprecation of its own at WARNING.
    logging.getLogger("mail.log").setLevel(logging.ERROR)


async def deliver(tmp_path: Path, peer: SmtpPeer, **options: Any) -> list[dict[str, Any]]:
    """Send one MEDIUM alert through an email receiver to `peer`; return the dead letters."""
    receivers = parse_receivers(
        [
            {
                "name": "mail",
                "type": "email",
                "smtp_host": "127.0.0.1",
                "smtp_port": peer.port,
                "from": "Pipewarden <pipewarden@example.invalid>",
                "to": ["data-oncall@example.invalid", "lead@example.invalid"],
                "retry_initial_seconds": 0.02,
                "retry_max_seconds": 0.05,
                **options,
            }
        ]
    )
    d = Dispatcher(
        receivers, parse_routes([{"medium": ["mail"]}], ["mail"]), data_dir=tmp_path / "data"
    )
    await d.start()
    try:
        d.submit(event(severity="medium", pipeline_id="ops.backup", team="ops"))
        assert await d.drain(10)
    finally:
        await d.close()
    return deadletters.read(tmp_path / "data")


async def test_plain_smtp_without_tls(tmp_path: Path) -> None:
    peer = SmtpPeer()
    await peer.start()
    try:
        assert await deliver(tmp_path, peer) == []
    finally:
        await peer.stop()
    (mail,) = peer.mails
    assert not mail.tls and mail.login is None
    assert mail.rcpt_tos == ["data-oncall@example.invalid", "lead@example.invalid"]
    assert "ops.backup (team ops)" in str(mail.message["Subject"])
    text, html = mail.message.iter_parts()
    assert text.get_content_type() == "text/plain" and html.get_content_type() == "text/html"


async def test_starttls_with_login(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    peer = SmtpPeer(certs, starttls=True, login=("alerts", "hunter2"))
    await peer.start()
    try:
        letters = await deliver(
            tmp_path,
            peer,
            username="alerts",
            password="hunter2",
            ca_file=str(certs.ca_file),
            starttls="always",
        )
    finally:
        await peer.stop()
    assert letters == []
    (mail,) = peer.mails
    assert mail.tls and mail.login == "alerts"


async def test_implicit_tls_with_login(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    peer = SmtpPeer(certs, implicit_tls=True, login=("alerts", "hunter2"))
    await peer.start()
    try:
        letters = await deliver(
            tmp_path,
            peer,
            tls=True,
            username="alerts",
            password="hunter2",
            ca_file=str(certs.ca_file),
        )
    finally:
        await peer.stop()
    assert letters == []
    assert peer.mails[0].tls and peer.mails[0].login == "alerts"


async def test_an_untrusted_certificate_is_final(tmp_path: Path) -> None:
    peer = SmtpPeer(Certificates(tmp_path), starttls=True)
    await peer.start()
    try:
        (letter,) = await deliver(tmp_path, peer)  # the test CA is not trusted
    finally:
        await peer.stop()
    assert letter["attempts"] == 1 and "TLS" in letter["error"] and not peer.mails


async def test_starttls_always_refuses_a_server_without_it(tmp_path: Path) -> None:
    peer = SmtpPeer()
    await peer.start()
    try:
        (letter,) = await deliver(tmp_path, peer, starttls="always")
    finally:
        await peer.stop()
    assert letter["attempts"] == 1 and not peer.mails


async def test_a_wrong_password_is_final(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    peer = SmtpPeer(certs, starttls=True, login=("alerts", "hunter2"))
    await peer.start()
    try:
        (letter,) = await deliver(
            tmp_path, peer, username="alerts", password="wrong", ca_file=str(certs.ca_file)
        )
    finally:
        await peer.stop()
    assert letter["status"] == 535 and letter["attempts"] == 1


async def test_4xx_is_retried_and_5xx_is_final(tmp_path: Path) -> None:
    peer = SmtpPeer()
    peer.replies.extend(["451 4.3.0 try again later", "421 4.7.0 busy"])
    await peer.start()
    try:
        assert await deliver(tmp_path / "a", peer) == []
        assert len(peer.mails) == 1  # on the third attempt
        peer.replies.append("554 5.7.1 rejected as spam")
        (letter,) = await deliver(tmp_path / "b", peer)
    finally:
        await peer.stop()
    assert letter["status"] == 554 and letter["attempts"] == 1 and "spam" in letter["error"]


async def test_a_server_that_is_down_is_retried_then_a_dead_letter(tmp_path: Path) -> None:
    peer = SmtpPeer()
    await peer.start()
    await peer.stop()  # its port now refuses connections
    (letter,) = await deliver(tmp_path, peer, max_attempts=3)
    assert letter["attempts"] == 3 and letter["status"] is None
