"""The block at the top of every sanitized body that says what was done and why.

The wording lives in TOML templates (gateway/pipeline/templates/notice.<language>.toml) with
`$name`-style placeholders (string.Template: an operator's typo shows up as text, it
never raises and never evaluates anything). An operator overrides single entries by
putting a file of the same name into `settings.templates_dir`.
Values from the mail (file names, link text) are untrusted: they are cut to a sane
length and stripped of control characters before they reach the notice.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Any

from converters.html import defang_urls
from converters.limits import OCR_NOTE_CUT as OCR_CUT
from converters.limits import OCR_NOTE_RAN as OCR_RAN
from gateway.pipeline.release_links import release_link
from gateway.pipeline.report import Action, ActionKind, Report, Verdict
from gateway.settings import Settings

#: Defects worth telling the reader about: each changed how the message was handled.
NOTABLE_DEFECTS = frozenset({
    "content_type_duplicate", "boundary_duplicate", "filename_conflict", "rfc2231_gap",
    "multipart_without_boundary", "multipart_boundary_missing", "multipart_encoded",
    "transfer_encoding_unknown", "charset_duplicate", "content-transfer-encoding_duplicate",
    "bare_cr", "body_charset_undecodable",
})
#: The page numbers in an OCR note ("pages 1, 2, 3 ...").
_OCR_PAGES = re.compile(r"pages? ([0-9, ]*[0-9])")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class NoticeTemplates:
    """The notice wording for one language: plain strings and reason texts by code."""

    texts: dict[str, str]
    reasons: dict[str, str]
    #: What clean-and-keep-editable removed, by kind ($n: how many).
    cleaned: dict[str, str] = field(default_factory=dict)
    #: Values every line may use ($contact, $qid), set per message.
    common: dict[str, str] = field(default_factory=dict)

    def line(self, key: str, **values: object) -> str:
        merged = {**self.common, **{k: _safe(str(v)) for k, v in values.items()}}
        return Template(self.texts.get(key, "")).safe_substitute(merged)

    def reason(self, code: str, fallback: str) -> str:
        return self.reasons.get(code, fallback)


def load_templates(settings: Settings) -> NoticeTemplates:
    """Packaged wording for `settings.language`, overridden entry by entry by the operator's.

    Raises ValueError naming the file when an operator's template is not valid TOML, so
    that `mugaika check-config` can report it before the gateway starts.
    """
    name = f"notice.{settings.language}.toml"
    data = tomllib.loads(resources.files("gateway.pipeline.templates").joinpath(name).read_text("utf-8"))
    if settings.templates_dir is not None:
        override = settings.templates_dir / name
        if override.is_file():
            try:
                custom = tomllib.loads(override.read_text("utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{override}: {exc}") from exc
            data = _merge(data, custom)
    texts = {k: str(v) for k, v in data.items() if not isinstance(v, dict)}
    reasons = {k: str(v) for k, v in data.get("reasons", {}).items()}
    cleaned = {k: str(v) for k, v in data.get("cleaned", {}).items()}
    return NoticeTemplates(texts, reasons, cleaned)


def _merge(base: dict[str, Any], custom: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in custom.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _safe(value: str, limit: int = 200) -> str:
    cleaned = _UNSAFE.sub("", value)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"


def render_notice(report: Report, settings: Settings,
                  templates: NoticeTemplates | None = None) -> str:
    """Plain text, one line per fate; empty when nothing was changed."""
    warnings = _auth_reasons(report)
    if report.verdict is Verdict.CLEAN and not report.link_warnings and not warnings:
        return ""
    t = dataclasses.replace(templates or load_templates(settings), common={
        "contact": _safe(settings.notice_contact), "qid": _safe(report.queue_id)})
    lines = [t.line("head")]
    lines.extend(t.line(f"auth_{reason}") for reason in warnings)
    if report.verdict is Verdict.QUARANTINED:
        lines.append(t.line("quarantined", reason=t.reason(report.reason, report.reason)))
        lines.append(t.line("held_whole"))
    lines.extend(_body_lines(report, t, settings.links))
    for action in report.actions:
        lines.extend(_attachment_lines(action, report.queue_id, t))
    url = release_link(settings, report.queue_id) if _holds_original(report) else None
    if url:
        lines.append(t.line("release_link", url=url))
    if report.link_warnings:
        lines.append(t.line("link_warning_head"))
        show = str if settings.links == "keep" else defang_urls
        lines.extend(t.line("link_warning", text=show(w.text), target=show(w.target))
                     for w in report.link_warnings[:20])
    notable = sorted(NOTABLE_DEFECTS.intersection(report.defects))
    if notable:
        lines.append(t.line("defects", codes=", ".join(notable)))
    lines.append(t.line("contact", contact=settings.notice_contact))
    lines.append(t.line("separator"))
    return "\n".join(line for line in lines if line)


def _auth_reasons(report: Report) -> list[str]:
    """Why sender authentication warns the reader (`gateway.pipeline.auth_policy`)."""
    auth = report.extra.get("auth")
    reasons = auth.get("reasons") if isinstance(auth, dict) else None
    return [str(r) for r in reasons if r in ("dmarc_fail", "spoofed_own_domain")] \
        if isinstance(reasons, list) else []


def _holds_original(report: Report) -> bool:
    return report.verdict is Verdict.QUARANTINED or any(a.quarantined for a in report.actions)


def _body_lines(report: Report, t: NoticeTemplates, links: str) -> list[str]:
    codes = {a.code for a in report.actions}
    lines = []
    if "html_to_text" in codes:
        lines.append(t.line("html_converted"))
        if "html_nesting_too_deep" in report.defects:
            lines.append(t.line("html_nesting"))
        if links != "keep":
            lines.append(t.line(f"links_{links}d"))  # links_defanged, links_removed
    elif "alternative_unused" in codes:
        lines.append(t.line("html_dropped"))
    return lines


def _cdr_lines(action: Action, t: NoticeTemplates) -> list[str]:
    """What clean-and-keep-editable removed, or why it fell back to page images."""
    lines = []
    for note in action.notes:
        key, _, value = note.partition("=")
        if key == "cdr_removed":
            kind, _, count = value.partition(":")
            text = t.cleaned.get(kind, t.cleaned.get("other", ""))
            lines.append(t.line("cdr_removed", what=Template(text).safe_substitute(n=count)))
        elif key == "cdr_resaved":
            lines.append(t.line("cdr_resaved"))
        elif key == "cdr_fallback":
            lines.append(t.line("cdr_fallback", reason=t.reason(value, value)))
    return lines


def _attachment_lines(action: Action, queue_id: str, t: NoticeTemplates) -> list[str]:
    if action.code in ("html_to_text", "alternative_unused") or action.action is ActionKind.KEPT:
        return []
    name = action.filename or t.line("unnamed")
    if action.action is ActionKind.CONVERTED:
        outputs = ", ".join(action.outputs) or action.detected_type
        key = "converted_pages" if action.pages else "converted"
        key = {"cdr": "cdr_kept", "cdr_both": "cdr_both"}.get(action.code, key)
        lines = [t.line(key, name=name, outputs=outputs, pages=action.pages)]
        lines += _cdr_lines(action, t)
        lines += _ocr_lines(action, t)
    else:
        reason = t.reason(action.code, action.reason)
        lines = [t.line("removed", name=name, reason=reason)]
    if action.quarantined:
        lines.append(t.line("held", qid=queue_id, part=action.part))
    return lines


def _ocr_lines(action: Action, t: NoticeTemplates) -> list[str]:
    """Say when text was recognized (OCR) and when recognition was cut short, with the
    pages (issue 20: the reader should know the text is machine-read)."""
    lines = []
    for note in action.notes:
        for prefix, key in ((OCR_CUT, "ocr_cut"), (OCR_RAN, "ocr_done")):
            if note.startswith(prefix):
                found = _OCR_PAGES.search(note)
                lines.append(t.line(key, which=found[1] if found else ""))
                break
    return lines
