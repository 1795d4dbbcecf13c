"""mugaika between two real Postfix servers, configured by deploy/postfix.md itself.

Internet-side Postfix (relay_transport -> mugaika) -> `mugaika serve` -> LGWAN-side Postfix
delivering into Maildirs. Mail goes in through Postfix's own `sendmail` and `smtp-source`;
what is asserted is what lands in the Maildirs: sanitized mail, Postfix's DSN after a
refusal by mugaika, and every message exactly once after the LGWAN side was down.
"""

from __future__ import annotations

import email.policy
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.utils import make_msgid
from pathlib import Path

import pytest

from tests.conftest import Gateway, free_port
from tests.postfix_helpers import (
    DOC,
    Postfix,
    doc_blocks,
    maildir_messages,
    postfix_binaries_missing,
    private_root,
    site_values,
    smtp_source,
    substitute,
    wait_until,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="Postfix's master must be root")]

ZONE = "example.lg.jp"
#: Still a relay domain of the Internet-side Postfix, no longer accepted by mugaika.
STALE = "stale.lg.jp"
SENDER_DOMAIN = "internet.example"
SENDER = f"alice@{SENDER_DOMAIN}"
TAG = "[無害化]"


@dataclass
class Peers:
    front: Postfix
    lgwan: Postfix
    gateway: Gateway
    front_port: int
    lgwan_port: int
    zone_mail: Path
    sender_mail: Path

    def delivered(self) -> list[EmailMessage]:
        return maildir_messages(self.zone_mail)

    def bounces(self) -> list[EmailMessage]:
        return maildir_messages(self.sender_mail)


def _configure(front: Postfix, lgwan: Postfix, gateway: Gateway, front_port: int,
               lgwan_port: int, zone_mail: Path) -> None:
    """Both instances from the document's blocks, with only its site-specific values
    replaced; the test fails if the document lists a value the test does not replace."""
    text = DOC.read_text(encoding="utf-8")
    blocks = doc_blocks(text)
    mailbox_map = lgwan.conf / "lgwan-mailboxes"
    internet = {"city.example.lg.jp": f"{ZONE} {STALE}",
                "[127.0.0.1]:2525": f"[127.0.0.1]:{gateway.smtp_port}"}
    lgwan_side = {"city.example.lg.jp": ZONE, "192.0.2.10:25": f"127.0.0.1:{lgwan_port}",
                  "192.0.2.20/32": "127.0.0.1/32", "/var/mail/lgwan": str(zone_mail),
                  "/etc/postfix/lgwan-mailboxes": str(mailbox_map),
                  "static:5000": "static:5000", "[192.0.2.25]:25": f"[127.0.0.1]:{front_port}"}
    assert site_values(text) == set(internet) | set(lgwan_side)
    main, master = substitute([blocks["main.cf internet"], blocks["master.cf internet"]],
                              internet)
    front.configure(main, master, listen_port=front_port)
    main, master = substitute([blocks["main.cf lgwan"], blocks["master.cf lgwan"]],
                              lgwan_side)
    lgwan.configure(main, master, listen_port=None)
    lgwan.mailboxes(mailbox_map, ZONE, zone_mail, ["staff", "kacho"])


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    missing = postfix_binaries_missing()
    if missing:
        pytest.fail(f"Debian's postfix package is needed (make setup installs it): {missing}")
    root = private_root()
    front, lgwan = Postfix("front", root, "front.test"), Postfix("lgwan", root, "lgwan.test")
    front_port, lgwan_port = free_port(), free_port()
    gateway = Gateway(tmp_path_factory.mktemp("gateway"), lgwan_port)
    p = Peers(front, lgwan, gateway, front_port, lgwan_port, root / "zone", root / "senders")
    try:
        _configure(front, lgwan, gateway, front_port, lgwan_port, p.zone_mail)
        front.sender_mailbox(SENDER_DOMAIN, p.sender_mail)
        lgwan.start(lgwan_port)
        gateway.start()
        front.start(front_port)
        yield p
    finally:
        front.stop()
        gateway.stop()
        lgwan.stop()
        shutil.rmtree(root)


def _html_mail(subject: str, msgid: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, f"staff@{ZONE}", subject
    if msgid:
        msg["Message-ID"] = msgid
    msg.set_content("<html><body><h1>会議のお知らせ</h1><p>来週の予算会議は<b>第二会議室</b>"
                    "です。</p><script>alert('x')</script></body></html>", subtype="html")
    return msg


def _by_id(messages: list[EmailMessage]) -> Counter[str]:
    return Counter(str(m["Message-ID"]) for m in messages)


def _assert_sanitized(msg: EmailMessage) -> None:
    """HTML in, text out: the subject tagged, the Japanese text readable, no markup."""
    assert str(msg["Subject"]).startswith(TAG), msg["Subject"]
    assert "text/html" not in {p.get_content_type() for p in msg.walk()}
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "来週の予算会議は" in text and "第二会議室" in text
    assert "<p>" not in text and "alert(" not in text


def test_sendmail_html_mail_arrives_sanitized(peers: Peers) -> None:
    msgid = make_msgid("sendmail")
    peers.front.sendmail(_html_mail("会議のお知らせ", msgid).as_bytes(), SENDER,
                         f"staff@{ZONE}")
    wait_until("the sendmail message in the Maildir",
               lambda: _by_id(peers.delivered())[msgid] >= 1)
    (msg,) = [m for m in peers.delivered() if m["Message-ID"] == msgid]
    _assert_sanitized(msg)
    assert "会議のお知らせ" in str(msg["Subject"])
    # It went the documented way: the "mugaika" transport (its syslog_name), mugaika's 250.
    assert f"relay=127.0.0.1[127.0.0.1]:{peers.gateway.smtp_port}" in peers.front.log()
    assert "postfix/mugaika/smtp" in peers.front.log()


def test_smtp_source_mail_arrives_sanitized(peers: Peers, tmp_path: Path) -> None:
    subject = f"smtp-source {make_msgid()}"
    source = tmp_path / "mail.txt"  # smtp-source -F sends it line by line, with CRLF
    source.write_bytes(_html_mail(subject).as_bytes(
        policy=email.policy.default.clone(linesep="\n")))
    smtp_source(peers.front_port, "-m", "4", "-s", "2", "-f", SENDER, "-t", f"staff@{ZONE}",
                "-F", str(source))

    def arrived() -> list[EmailMessage]:
        return [m for m in peers.delivered() if subject in str(m["Subject"])]
    wait_until("4 smtp-source messages in the Maildir", lambda: len(arrived()) >= 4)
    assert len(arrived()) == 4
    for msg in arrived():
        _assert_sanitized(msg)


def _delivery_status(dsn: EmailMessage) -> list[Message]:
    """The per-recipient blocks of a DSN's message/delivery-status part (RFC 3464)."""
    (status,) = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"]
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    return blocks[1:]  # the first block is about the message, the rest one per recipient


def test_refusal_by_mugaika_becomes_a_postfix_bounce(peers: Peers) -> None:
    msgid = make_msgid("refused")
    peers.front.sendmail(_html_mail("宛先の一部が無効", msgid).as_bytes(), SENDER,
                         f"staff@{ZONE}", f"clerk@{STALE}")

    def dsns() -> list[EmailMessage]:
        return [m for m in peers.bounces() if msgid in m.as_string()]
    wait_until("the DSN in the sender's Maildir", lambda: len(dsns()) >= 1)
    wait_until("the accepted recipient's copy", lambda: _by_id(peers.delivered())[msgid] == 1)
    (dsn,) = dsns()
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    (rcpt,) = _delivery_status(dsn)  # only the refused recipient, not staff@
    assert rcpt["Final-Recipient"] == f"rfc822; clerk@{STALE}"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.7.1"
    assert rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert str(rcpt["Diagnostic-Code"]).startswith("smtp; 550 5.7.1")


def _settled(peers: Peers) -> bool:
    """No mail anywhere on its way: both Postfix queues and mugaika's spool are empty."""
    spool = peers.gateway.data_dir / "spool"
    waiting = [p for area in ("incoming", "deferred") for p in (spool / area).iterdir()]
    waiting += [p for d in spool.glob("active*") for p in d.iterdir()]
    return not waiting and peers.front.queue_is_empty() and peers.lgwan.queue_is_empty()


def test_lgwan_down_mugaika_defers_and_delivers_each_exactly_once(peers: Peers) -> None:
    ids = [make_msgid("down") for _ in range(10)]
    subject = f"down {make_msgid()}"
    bounced_before = len(peers.bounces())
    peers.lgwan.stop()
    for i, msgid in enumerate(ids):
        peers.front.sendmail(_html_mail(f"停止中 {i}", msgid).as_bytes(), SENDER,
                             f"kacho@{ZONE}")
    smtp_source(peers.front_port, "-m", "20", "-s", "5", "-d", "-f", SENDER,
                "-t", f"staff@{ZONE}", "-S", subject, "-l", "2000")
    # mugaika took everything (Postfix's queue is empty) and holds it while it retries.
    wait_until("the front Postfix handing all to mugaika", peers.front.queue_is_empty)
    peers.gateway.wait_for_spool("deferred")
    time.sleep(4)  # a while down: several of mugaika's retries (every 1-2 s) are refused
    assert not set(_by_id(peers.delivered())) & set(ids)
    assert peers.gateway.spool_has("deferred")

    peers.lgwan.start(peers.lgwan_port)
    wait_until("every message delivered after the restart", lambda: _settled(peers), 60)
    delivered = peers.delivered()
    counts = _by_id(delivered)
    assert {msgid: counts[msgid] for msgid in ids} == {msgid: 1 for msgid in ids}
    blasted = Counter(str(m["Message-ID"]) for m in delivered if subject in str(m["Subject"]))
    assert len(blasted) == 20 and set(blasted.values()) == {1}
    assert len(peers.bounces()) == bounced_before
