"""Which parts are the message text, and that text as plain, defanged Unicode.

Policy (settings.prefer_html): in each multipart/alternative the text/plain version is
used and the HTML version dropped; with `prefer_html` the HTML version is converted
instead (richer tables and lists, same safety). A lone HTML body is always converted.
Several inline text parts outside an alternative (Apple Mail puts text around
attachments) are all kept, in order.

Inline images (`cid:`) are not special: they leave here as attachments with a name
(generated when the sender gave none) and go through the same converters as any image;
the converted HTML names them where they stood, e.g. "[画像: inline-1.2.png]".
Parts that parse.py marked suspicious never become body text.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from converters.charset import decode_bytes
from converters.html import decode_html, defang_urls, html_to_text, remove_urls
from gateway.pipeline.parse import Leaf
from gateway.pipeline.report import Action, ActionKind, LinkWarning
from gateway.settings import Settings

_BODY_TYPES = ("text/plain", "text/html")
#: C0/C1 controls except tab and line feed: invisible in a mail client, useful to nobody.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_IMAGE_LABEL = {"ja": "画像", "en": "image"}
_LINK_REMOVED_LABEL = {"ja": "[リンク削除]", "en": "[link removed]"}


@dataclass(frozen=True)
class Body:
    """The message text and what was done to get it."""

    text: str
    actions: tuple[Action, ...] = ()
    link_warnings: tuple[LinkWarning, ...] = ()
    #: Every leaf that is not body text, in part order, ready for sanitize_attachment.
    attachments: tuple[Leaf, ...] = ()
    defects: tuple[str, ...] = ()


def is_body_candidate(leaf: Leaf) -> bool:
    """An inline, unnamed, unambiguous text/plain or text/html part."""
    return (leaf.content_type in _BODY_TYPES and not leaf.suspicious and not leaf.names
            and leaf.disposition in (None, "inline"))


def extract_body(leaves: tuple[Leaf, ...], settings: Settings) -> Body:
    """Choose the body parts, render them as text, and hand every other leaf on."""
    chosen, dropped = _choose(leaves, settings.prefer_html)
    attachments, cid_names = _attachments(leaves, chosen | dropped)
    texts: list[str] = []
    actions: list[Action] = []
    warnings: list[LinkWarning] = []
    defects: list[str] = []
    for leaf in leaves:
        if leaf.part in dropped:
            actions.append(_action(leaf, ActionKind.REMOVED, "alternative_unused",
                                   "another version of the same text was used"))
            continue
        if leaf.part not in chosen:
            continue
        if leaf.content_type == "text/html":
            text = _html(leaf, settings, cid_names, actions, warnings, defects)
        else:
            text = _plain(leaf, settings, actions)
        if "\ufffd" in text:
            defects.append("body_charset_undecodable")
        texts.append(text)
    body = "\n\n".join(t for t in texts if t.strip())
    return Body(body, tuple(actions), tuple(warnings), attachments, tuple(defects))


def _choose(leaves: tuple[Leaf, ...], prefer_html: bool) -> tuple[set[str], set[str]]:
    """Part paths used as body, and alternatives left unused."""
    groups: dict[str, list[Leaf]] = {}
    chosen: set[str] = set()
    for leaf in leaves:
        if not is_body_candidate(leaf):
            continue
        if leaf.alternative:
            groups.setdefault(leaf.alternative, []).append(leaf)
        else:
            chosen.add(leaf.part)
    dropped: set[str] = set()
    order = ("text/html", "text/plain") if prefer_html else ("text/plain", "text/html")
    for members in groups.values():
        pick = next(m for kind in order for m in members if m.content_type == kind)
        chosen.add(pick.part)
        dropped.update(m.part for m in members if m is not pick)
    return chosen, dropped


def _attachments(leaves: tuple[Leaf, ...], body_parts: set[str]
                 ) -> tuple[tuple[Leaf, ...], dict[str, str]]:
    """Non-body leaves; unnamed inline images get a name so the notice can refer to them."""
    out: list[Leaf] = []
    cid_names: dict[str, str] = {}
    for original in leaves:
        if original.part in body_parts:
            continue
        leaf = original
        if leaf.content_id and not leaf.names:
            subtype = leaf.content_type.partition("/")[2]
            ext = {"jpeg": "jpg", "svg+xml": "svg"}.get(subtype, subtype)
            name = f"inline-{leaf.part}.{re.sub(r'[^a-z0-9]', '', ext)[:8] or 'bin'}"
            leaf = dataclasses.replace(leaf, filename=name, names=(name,),
                                       disposition="attachment")
        if leaf.content_id and leaf.filename:
            cid_names[leaf.content_id] = leaf.filename
        out.append(leaf)
    return tuple(out), cid_names


def clean_text(text: str, settings: Settings) -> str:
    """Line ends to LF, invisible controls out, links defanged, removed or kept by the
    link policy (`MUGAIKA_LINKS`)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROLS.sub("", text)
    if settings.links == "defang":
        return defang_urls(text)
    if settings.links == "remove":
        return remove_urls(text, _LINK_REMOVED_LABEL.get(settings.language, "[link removed]"))
    return text


def _plain(leaf: Leaf, settings: Settings, actions: list[Action]) -> str:
    text, _codec = decode_bytes(leaf.payload, leaf.charset)
    actions.append(_action(leaf, ActionKind.KEPT, "", "plain text body"))
    params = dict(leaf.params)
    if params.get("format", "").lower() == "flowed":
        text = unflow(text.replace("\r\n", "\n"), params.get("delsp", "").lower() == "yes")
    return clean_text(text, settings)


def unflow(text: str, delsp: bool) -> str:
    """Join RFC 3676 soft line breaks (a line ending in a space), since our output is not
    flowed: without this a Japanese sentence stays cut where the sender's client wrapped
    it. With delsp=yes the space marking the soft break is not part of the text.
    Quote depth is kept; a change of depth ends a paragraph."""
    out: list[str] = []
    pending: tuple[int, str] | None = None
    for raw in text.split("\n"):
        depth = len(raw) - len(raw.lstrip(">"))
        content = raw[depth:].removeprefix(" ")  # space-stuffing, or the space after ">"
        flowed = content.endswith(" ") and content != "-- "
        if flowed and delsp:
            content = content[:-1]
        if pending is not None and pending[0] == depth:
            content = pending[1] + content
        elif pending is not None:
            out.append(_quoted(*pending))
        pending = (depth, content) if flowed else None
        if not flowed:
            out.append(_quoted(depth, content))
    if pending is not None:
        out.append(_quoted(*pending))
    return "\n".join(out)


def _quoted(depth: int, content: str) -> str:
    return f"{'>' * depth} {content}" if depth else content


def _html(leaf: Leaf, settings: Settings, cid_names: dict[str, str],
          actions: list[Action], warnings: list[LinkWarning], defects: list[str]) -> str:
    rendered = html_to_text(decode_html(leaf.payload, leaf.charset),
                            defang=False, cid_names=cid_names,
                            image_label=_IMAGE_LABEL.get(settings.language, "image"))
    warnings.extend(LinkWarning(text, target) for text, target in rendered.mismatched_links)
    notes = []
    if rendered.removed_links:
        notes.append(f"script_links_removed={rendered.removed_links}")
    if rendered.hidden_elements:
        notes.append(f"hidden_elements_removed={rendered.hidden_elements}")
    if rendered.nesting_depth:  # a parser bomb: the notice says the layout was flattened
        notes.append(f"html_nesting_depth={rendered.nesting_depth}")
        defects.append("html_nesting_too_deep")
    actions.append(_action(leaf, ActionKind.CONVERTED, "html_to_text",
                           "HTML body converted to plain text", notes=tuple(notes)))
    return clean_text(rendered.text, settings)


def _action(leaf: Leaf, kind: ActionKind, code: str, reason: str,
            notes: tuple[str, ...] = ()) -> Action:
    return Action(part=leaf.part, filename=None, declared_type=leaf.content_type,
                  detected_type=leaf.content_type, action=kind, reason=reason,
                  outputs=("text/plain",) if kind is ActionKind.CONVERTED else (),
                  code=code, notes=notes)
