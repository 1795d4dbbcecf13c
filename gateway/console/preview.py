"""The entry page's preview: what the recipient was delivered instead of the original.

Only the gateway's own output is shown (the rebuilt message kept with the entry: the
notice, the plain-text body, the page images it rendered), never the original. That
output is made by trusted code and contains only text/plain, PNG pages and PDFs the
gateway encoded, so reading it back with the stdlib parser here is safe.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from gateway.console.web import Page, Refused, SignedIn
from gateway.custody.quarantine import NotFound
from gateway.custody.tokens import Permission

router = APIRouter()
#: Text shown at most (a long newsletter's body stays readable on one page).
MAX_TEXT = 200_000


@dataclass(frozen=True)
class Delivered:
    text: str
    #: Positions (in `_leaves`) of the PNG page images, shown inline.
    images: tuple[int, ...]
    #: Other renderings (PDF, CSV …): name and type, listed.
    others: tuple[tuple[str, str], ...]


def _leaves(raw: bytes) -> list[EmailMessage]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return [p for p in message.walk() if not p.is_multipart()]


def delivered_view(raw: bytes) -> Delivered:
    texts: list[str] = []
    images: list[int] = []
    others: list[tuple[str, str]] = []
    for i, part in enumerate(_leaves(raw)):
        kind = part.get_content_type()
        if kind == "text/plain" and not part.get_filename():
            texts.append(str(part.get_content()))
        elif kind == "image/png":
            images.append(i)
        else:
            others.append((part.get_filename() or "-", kind))
    return Delivered("\n\n".join(texts)[:MAX_TEXT], tuple(images), tuple(others))


@router.get("/quarantine/{entry_id}/delivered/{index}.png")
def page_image(entry_id: str, index: int,
               page: Annotated[Page, Depends(SignedIn(Permission.READ))]) -> Response:
    try:
        page.ctx.quarantine.show(entry_id[:64], page.actor)  # another tenant's: 404
    except NotFound:
        raise Refused(404, "error.not_found") from None
    raw = page.ctx.stores.quarantine.delivered(entry_id[:64])
    leaves = _leaves(raw) if raw is not None else []
    if not 0 <= index < len(leaves) or leaves[index].get_content_type() != "image/png":
        raise Refused(404, "error.not_found")
    data = leaves[index].get_content()
    assert isinstance(data, bytes)
    return Response(data, media_type="image/png")
