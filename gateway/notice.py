"""The block at the top of every sanitized body that says what was done and why."""

from __future__ import annotations

from gateway.report import ActionKind, Report, Verdict
from gateway.settings import Settings

_TEXT = {
    "ja": {
        "head": "【無害化処理のお知らせ】このメールは外部から受信したため、無害化しています。",
        "converted": "・{name}: 画像に変換しました ({outputs})",
        "removed": "・{name}: 削除しました（理由: {reason}）",
        "held": "  原本は隔離保管しています（隔離ID: {qid}）。",
        "quarantined": "このメールは安全に処理できないため、全体を隔離しました（理由: {reason}）。",
        "contact": "お問い合わせ: {contact}",
        "unnamed": "(名前なし)",
    },
    "en": {
        "head": "[Sanitization notice] This mail came from outside and was made harmless.",
        "converted": "- {name}: converted to images ({outputs})",
        "removed": "- {name}: removed (reason: {reason})",
        "held": "  The original is held in quarantine (id: {qid}).",
        "quarantined": "This mail could not be processed safely and is held whole (reason: {reason}).",
        "contact": "Questions: {contact}",
        "unnamed": "(unnamed)",
    },
}


def render_notice(report: Report, settings: Settings) -> str:
    """Plain text, one line per attachment fate; empty when nothing was changed."""
    t = _TEXT[settings.language]
    if report.verdict is Verdict.CLEAN:
        return ""
    lines = [t["head"]]
    if report.verdict is Verdict.QUARANTINED:
        lines.append(t["quarantined"].format(reason=report.reason))
    for action in report.actions:
        name = action.filename or t["unnamed"]
        if action.action is ActionKind.CONVERTED:
            lines.append(t["converted"].format(name=name, outputs=", ".join(action.outputs)))
        elif action.action is ActionKind.REMOVED:
            lines.append(t["removed"].format(name=name, reason=action.reason))
            if action.quarantined:
                lines.append(t["held"].format(qid=report.queue_id))
    lines.append(t["contact"].format(contact=settings.notice_contact))
    return "\n".join(lines)
