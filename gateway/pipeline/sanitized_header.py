"""`X-Mugaika-Sanitized:` what was done to a message, in a fixed vocabulary, so that the
LGWAN-side server can file or flag on it (m-FILTER's `X-MAIL-SANITIZED` is the model).

| token | when |
|---|---|
| `html-to-text` | the HTML body was turned into text |
| `html-dropped` | an HTML alternative was left out (the text version was used) |
| `attachment-rendered` | an attachment became page images |
| `attachment-cleaned` | an attachment was delivered cleaned and editable (CDR) |
| `attachment-removed` | an attachment was removed |
| `attachment-held` | an attachment was removed and can be released (PPAP, approval) |
| `macro-removed` | an Office file carried macros (removed by CDR, never rendered) |
| `link-defanged` / `link-removed` | links in the text were defanged / removed |
| `ocr` | text was recognized on scanned pages |
| `quarantined` | the whole message was held; only the notice is delivered |
| `spf-fail`, `dkim-fail`, `dmarc-fail` | that check failed on the original |
| `spoofed` | the From: claims one of our domains without passing DMARC |
| `auth-tagged` | delivered with the authentication warning tag |
| `none` | nothing was changed |
"""

from __future__ import annotations

from typing import Any

from converters.limits import OCR_NOTE_RAN
from gateway.pipeline.report import ActionKind, Report, Verdict

_MACROS = ("office:vba-macro", "office:xlm-macro", "cdr_removed=vba-macro",
           "cdr_removed=xlm-macro")


def sanitized_tokens(report: Report, body: str) -> list[str]:
    """The tokens for `report` (and the delivered body text), in the table's order."""
    found = [*_action_tokens(report)]
    if "hxxp" in body:
        found.append("link-defanged")
    if "[リンク削除]" in body or "[link removed]" in body:
        found.append("link-removed")
    if report.verdict is Verdict.QUARANTINED:
        found.append("quarantined")
    found += _auth_tokens(report.extra.get("auth"))
    return list(dict.fromkeys(found)) or ["none"]


def _action_tokens(report: Report) -> list[str]:
    found = []
    for action in report.actions:
        if action.code == "html_to_text":
            found.append("html-to-text")
        elif action.code == "alternative_unused":
            found.append("html-dropped")
        elif action.action is ActionKind.CONVERTED:
            found += {"cdr": ["attachment-cleaned"],
                      "cdr_both": ["attachment-cleaned", "attachment-rendered"]
                      }.get(action.code, ["attachment-rendered"])
        elif action.action is ActionKind.REMOVED:
            found.append("attachment-held" if action.releasable else "attachment-removed")
        marks = (*action.findings, *action.notes)
        if any(m.startswith(_MACROS) for m in marks):
            found.append("macro-removed")
        if any(m.startswith(OCR_NOTE_RAN) for m in action.notes):
            found.append("ocr")
    return found


def _auth_tokens(auth: Any) -> list[str]:
    if not isinstance(auth, dict):
        return []
    found = [f"{check}-fail" for check in ("spf", "dmarc") if auth.get(check) == "fail"]
    if any(isinstance(d, list | tuple) and d and d[0] == "fail" for d in auth.get("dkim") or []):
        found.insert(1 if "spf-fail" in found else 0, "dkim-fail")
    reasons = auth.get("reasons") or []
    if "spoofed_own_domain" in reasons:
        found.append("spoofed")
    if auth.get("action") == "tag":
        found.append("auth-tagged")
    return found
