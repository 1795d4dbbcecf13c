"""What the load test sends: a mix of corpus samples, each stamped with a correlation token.

The token goes into the Message-ID, which the gateway keeps in the rebuilt message and
which a DSN quotes, so the receiving sink can match anything that arrives (a delivery, a
quarantine notice, a bounce) to the message it answers, even without the gateway's own
X-Mugaika-Queue-Id header.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.loadtest.corpus.texts import plain_5kb
from gateway.loadtest.samples import load_manifest

TOKEN_DOMAIN = "loadtest.mugaika.invalid"  # noqa: S105 (a domain, not a secret)
TOKEN_RE = re.compile(rb"lt\.([0-9a-f]{8})\.(\d+)@" + re.escape(TOKEN_DOMAIN.encode()))
_MESSAGE_ID = re.compile(rb"^message-id:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*", re.I | re.M)


@dataclass(frozen=True)
class Template:
    """One kind of message in the mix, with what the manifest expects of it (if known)."""

    name: str
    data: bytes
    expect: dict[str, Any] | None = None
    rcpt: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def attachments(self) -> int:
        return len(self.expect["attachments"]) if self.expect else 0

    @property
    def pages(self) -> int:
        return int(self.expect["pages"]) if self.expect else 0


@dataclass(frozen=True)
class Outgoing:
    """One message to send: `token` identifies it everywhere it may reappear."""

    number: int
    token: str
    template: Template
    mail_from: str
    rcpt: str
    data: bytes = field(repr=False)


def stamp(data: bytes, token: str) -> bytes:
    """`data` with its Message-ID replaced by one carrying `token`."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    head = _MESSAGE_ID.sub(b"", head + b"\r\n").rstrip(b"\r\n")
    return f"Message-ID: <{token}@{TOKEN_DOMAIN}>\r\n".encode() + head + sep + body


def default_templates() -> list[Template]:
    """Without --samples: 5 KB Japanese text mails, expected clean (smtp-source's habit)."""
    expect = {"smtp": 250, "verdicts": ["clean"], "attachments": [], "pages": 0}
    return [Template("plain-5kb", plain_5kb(), expect, tags=("text",))]


def load_templates(directory: Path, include: set[str] | None = None,
                   exclude: set[str] | None = None) -> list[Template]:
    """The corpus in `directory` (with its manifest), or every .eml there without one.

    `include`/`exclude` filter manifest entries by tag or by name.
    """
    manifest = load_manifest(directory)
    if manifest is None:
        return [Template(p.stem, p.read_bytes()) for p in sorted(directory.glob("*.eml"))]
    templates = []
    for entry in manifest["samples"]:
        keys = {entry["name"], *entry["tags"]}
        if include and not keys & include:
            continue
        if exclude and keys & exclude:
            continue
        templates.append(Template(entry["name"], (directory / entry["file"]).read_bytes(),
                                  entry["expect"], entry["envelope"].get("rcpt"),
                                  tuple(entry["tags"])))
    return templates


def plan(templates: list[Template], run_id: str, count: int, mail_from: str,
         rcpt: str) -> Iterator[Outgoing]:
    """`count` messages cycling through `templates` (round robin keeps the mix exact)."""
    if not templates:
        raise ValueError("no messages to send: the sample selection is empty")
    for number in range(count):
        template = templates[number % len(templates)]
        token = f"lt.{run_id}.{number}"
        yield Outgoing(number, token, template, mail_from, template.rcpt or rcpt,
                       stamp(template.data, token))
