"""The SMTP envelope of one message, as spooled and as logged."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import orjson


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    client_addr: str = ""
    helo: str = ""
    received_at: float = 0.0
    #: "inbound" (sanitize, then deliver), "release" (deliver the original unchanged,
    #: approved by an operator) or "dsn" (our own bounce, deliver unchanged).
    kind: str = "inbound"
    #: Headers mugaika adds on delivery (e.g. who approved a release).
    add_headers: tuple[tuple[str, str], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tenant(self) -> str | None:
        """The tenant this copy is for (`gateway.tenancy`); None: the default tenant."""
        value = self.extra.get("tenant")
        return str(value) if value else None

    def to_json(self) -> bytes:
        """UTF-8 JSON, one line. Shallow: every field is JSON as it is (`asdict` deep-copied
        them); orjson, because every message writes one (the stdlib encoder was 2 % of a
        gateway process)."""
        return orjson.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        data = orjson.loads(text)
        data["rcpt_tos"] = tuple(data["rcpt_tos"])
        data["add_headers"] = tuple(tuple(h) for h in data.get("add_headers", ()))
        return cls(**data)
