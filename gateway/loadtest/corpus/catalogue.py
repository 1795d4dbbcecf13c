"""The sample list: each entry says what it exercises and what the gateway must do with it.

Expectations describe the finished product (every converter present), per the issues:
documents are converted to renderings, executables and tricks are removed, encrypted
archives are held for release, bombs are removed within limits, and a message that cannot
be parsed safely is quarantined whole. Where the issues leave a choice open (a duplicate
Content-Type header may be read restrictively or quarantined), `verdicts` lists each
acceptable answer.

Tags let a load test pick a mix: `text` (bodies only), `hostile` (must be removed or
refused, whatever converters exist), `document` (needs converters), `defect`, `bomb`,
`heavy` (the 20 MB mail), `envelope` (the SMTP reply is the expectation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.loadtest.corpus import archives, documents, hostile, pdfraw, texts, vba
from gateway.loadtest.corpus.mail import Attachment, forwarded, mime_mail

CONVERTED, REMOVED = "converted", "removed"
BLOCKED = ("blocked_type",)
PPAP_PASSWORD = b"Mugaika2025"


@dataclass(frozen=True)
class Expect:
    """What should happen to one attachment (by its file name in the mail)."""

    filename: str
    action: str
    codes: tuple[str, ...] = ()
    pages: int = 0
    releasable: bool = False


@dataclass(frozen=True)
class Sample:
    name: str
    exercises: str
    tags: tuple[str, ...]
    build: Callable[[], bytes]
    verdicts: tuple[str, ...] = ("sanitized",)
    attachments: tuple[Expect, ...] = ()
    #: Envelope recipient override and the SMTP reply class expected at end of DATA/RCPT.
    rcpt: str | None = None
    smtp: int = 250
    notes: tuple[str, ...] = field(default=())


def _one(name: str, subject: str, text: str, attachment: Attachment) -> Callable[[], bytes]:
    return lambda: mime_mail(name, subject, text, [attachment])


def _pdf(filename: str, data: bytes) -> Attachment:
    return Attachment(filename, data, "application/pdf")


OOXML = "application/vnd.openxmlformats-officedocument"


def _text_samples() -> list[Sample]:
    return [
        Sample("iso2022jp-nec", "ISO-2022-JP body and subject with NEC row-13 characters "
               "(①, ㈱, Ⅲ, ㍻) that the stdlib codec rejects", ("text",),
               texts.iso2022jp_nec, ("clean",)),
        Sample("shift-jis-cp932", "Shift_JIS label with CP932-only characters (髙, ①) in "
               "body and RFC 2047 subject", ("text",), texts.shift_jis, ("clean",)),
        Sample("euc-jp", "EUC-JP body and subject", ("text",), texts.euc_jp, ("clean",)),
        Sample("html-newsletter", "HTML-only newsletter: hidden text (display:none, "
               "font-size:0), a link whose text shows another URL, script, javascript: "
               "link, tracking pixel, comment", ("text",), texts.html_newsletter),
        Sample("plain-5kb", "5 KB of plain Japanese UTF-8 text (the throughput baseline)",
               ("text",), texts.plain_5kb, ("clean",)),
        Sample("ppap-password", "the PPAP password mail that follows an encrypted ZIP",
               ("text",), texts.ppap_password, ("clean",)),
    ]


def _document_samples() -> list[Sample]:
    docx = documents.japanese_docx
    return [
        Sample("pdf-javascript", "PDF with /OpenAction and a named JavaScript that only calls "
               "app.alert", ("document",), _one("pdf-javascript", "見積書", "見積書を送付します。",
                                               _pdf("見積書.pdf", pdfraw.javascript_pdf())),
               attachments=(Expect("見積書.pdf", CONVERTED, pages=1),)),
        Sample("pdf-japanese-5p", "5-page Japanese PDF (IPAex Gothic embedded)", ("document",),
               _one("pdf-japanese-5p", "予算要求資料", "資料を添付します。",
                    _pdf("予算要求資料.pdf", documents.japanese_pdf(5))),
               attachments=(Expect("予算要求資料.pdf", CONVERTED, pages=5),)),
        Sample("docx-japanese", "Word document with Japanese text and a table", ("document",),
               lambda: mime_mail("docx-japanese", "予算要求書", "ご確認ください。", [
                   Attachment("予算要求書.docx", docx(), f"{OOXML}.wordprocessingml.document")]),
               attachments=(Expect("予算要求書.docx", CONVERTED),)),
        Sample("xlsx-two-sheets", "Excel workbook with two Japanese-named sheets (予算, 実績) "
               "and a formula", ("document",),
               lambda: mime_mail("xlsx-two-sheets", "集計表", "集計表です。", [
                   Attachment("集計表.xlsx", documents.japanese_xlsx(),
                              f"{OOXML}.spreadsheetml.sheet")]),
               attachments=(Expect("集計表.xlsx", CONVERTED),)),
        Sample("pptx-japanese", "PowerPoint deck, 4 slides of Japanese text", ("document",),
               lambda: mime_mail("pptx-japanese", "説明会資料", "説明会資料です。", [
                   Attachment("説明会資料.pptx", documents.japanese_pptx(),
                              f"{OOXML}.presentationml.presentation")]),
               attachments=(Expect("説明会資料.pptx", CONVERTED, pages=4),)),
        Sample("docm-macro", "macro-enabled Word file whose VBA project has an AutoOpen "
               "macro that does nothing", ("document",),
               lambda: mime_mail("docm-macro", "請求書", "請求書を送付します。", [
                   Attachment("請求書.docm", vba.docm_with_macro(docx()),
                              "application/vnd.ms-word.document.macroEnabled.12")]),
               attachments=(Expect("請求書.docm", CONVERTED),)),
        Sample("rtf-object", "RTF with Japanese text and an embedded OLE Package object",
               ("document",), _one("rtf-object", "資料", "資料です。", Attachment(
                   "資料.rtf", documents.rtf_with_object("readme.txt", b"harmless\r\n"),
                   "application/rtf")),
               attachments=(Expect("資料.rtf", CONVERTED),)),
        Sample("zip-cp932-names", "ZIP written by Japanese Windows: CP932 member names, no "
               "UTF-8 flag", ("document",), _one("zip-cp932-names", "資料一式", "資料一式です。",
                                               Attachment("資料一式.zip", archives.zip_cp932([
                                                   ("予算資料/見積書.txt", "見積金額: 120万円\r\n"
                                                    .encode("cp932")),
                                                   ("議事録.txt", "議事録\r\n".encode("cp932"))]),
                                                   "application/zip")),
               attachments=(Expect("資料一式.zip", CONVERTED),)),
        Sample("nested-archive", "ZIP holding a 7z holding a ZIP holding a text file",
               ("document",), _one("nested-archive", "入れ子", "入れ子の圧縮ファイルです。",
                                   Attachment("outer.zip", archives.zip_plain([(
                                       "middle.7z", archives.seven_zip([(
                                           "inner.zip", archives.zip_plain([(
                                               "memo.txt", "メモ\n".encode())]))]))]),
                                       "application/zip")),
               attachments=(Expect("outer.zip", CONVERTED),),
               notes=("three container levels: inside the default archive depth cap of 3",)),
        Sample("forwarded-exe", "forwarded mail (message/rfc822) carrying an executable",
               ("document",), lambda: forwarded(
                   "forwarded-exe", "Fw: 請求書", "転送します。", mime_mail(
                       "forwarded-inner", "請求書", "インストーラです。",
                       [Attachment("setup.exe", hostile.minimal_pe(),
                                   "application/x-msdownload")])),
               attachments=(Expect("forwarded.eml", CONVERTED),
                            Expect("setup.exe", REMOVED, BLOCKED)),
               notes=("setup.exe is inside forwarded.eml: removed from the sanitized copy",)),
    ]


def _held_samples() -> list[Sample]:
    members = [("見積書.docx", documents.japanese_docx())]
    return [
        Sample("zip-ppap-aes", "PPAP: AES-256 encrypted ZIP (password in the next mail)",
               ("document",), _one("zip-ppap-aes", "見積書送付の件", "パスワードは別途送ります。",
                                   Attachment("見積書.zip", archives.zip_aes(
                                       members, PPAP_PASSWORD), "application/zip")),
               attachments=(Expect("見積書.zip", REMOVED, ("encrypted",), releasable=True),)),
        Sample("7z-encrypted", "7z with encrypted data and names", ("document",),
               _one("7z-encrypted", "資料送付", "パスワードは別途お送りします。", Attachment(
                   "資料.7z", archives.seven_zip(members, PPAP_PASSWORD.decode()),
                   "application/x-7z-compressed")),
               attachments=(Expect("資料.7z", REMOVED, ("encrypted",), releasable=True),)),
    ]


def _hostile_samples() -> list[Sample]:
    pe = hostile.minimal_pe()
    return [
        Sample("exe-as-pdf", "a PE executable named and declared as a PDF", ("hostile",),
               _one("exe-as-pdf", "請求書", "請求書です。", _pdf("請求書.pdf", pe)),
               attachments=(Expect("請求書.pdf", REMOVED, BLOCKED),)),
        Sample("rtlo-name", "RTLO in the file name: shows as 'invoice_exe.pdf', is .exe",
               ("hostile",), _one("rtlo-name", "invoice", "invoice attached.", Attachment(
                   "invoice_\u202efdp.exe", pe, "application/pdf")),
               attachments=(Expect("invoice_\u202efdp.exe", REMOVED,
                                   ("blocked_type", "deceptive_name")),)),
        Sample("html-attachment", "HTML attachment with a login form and HTML smuggling "
               "script (payload: text)", ("hostile",),
               _one("html-attachment", "請求書の確認", "添付のHTMLを開いてください。", Attachment(
                   "請求書.html", hostile.html_smuggling_page(), "text/html")),
               attachments=(Expect("請求書.html", REMOVED, BLOCKED),)),
        Sample("eicar", "the EICAR anti-virus test string as eicar.com", ("hostile",),
               _one("eicar", "test", "EICAR test file.", Attachment(
                   "eicar.com", hostile.EICAR, "application/octet-stream")),
               attachments=(Expect("eicar.com", REMOVED, BLOCKED),)),
        Sample("deep-nesting", "multipart nested 40 levels deep (parser recursion)",
               ("hostile",), texts.deep_nesting, ("quarantined",)),
        Sample("relay-attempt", "envelope recipient with a % hack (user%evil@our-domain)",
               ("envelope",), texts.plain_5kb, (), rcpt="user%evil.example@example.lg.jp",
               smtp=550),
    ]


def _defect_and_bomb_samples() -> list[Sample]:
    return [
        Sample("duplicate-content-type", "two Content-Type headers (text/plain, then a "
               "multipart hiding an executable)", ("defect",), texts.duplicate_content_type,
               ("quarantined",),
               notes=("two different Content-Types: held whole as ambiguous_mime_structure",)),
        Sample("broken-base64", "attachment whose base64 has junk characters and no padding",
               ("defect",), texts.broken_base64,
               attachments=(Expect("report.txt", CONVERTED),),
               notes=("the decodable text is delivered; the defect is reported",)),
        Sample("zip-bomb", "ZIP with one 256 MiB member of zeros, 250 KB on disk",
               ("bomb", "document"), _one("zip-bomb", "data", "data.", Attachment(
                   "data.zip", archives.deflate_bomb(256 * archives.MiB), "application/zip")),
               attachments=(Expect("data.zip", REMOVED, ("bomb", "limit_exceeded")),)),
        Sample("zip-overlap-bomb", "overlapping-entry ZIP bomb (Fifield): 250 entries sharing "
               "one kernel, 1 GB from 30 KB", ("bomb", "document"),
               _one("zip-overlap-bomb", "data", "data.", Attachment(
                   "overlap.zip", archives.overlapping_bomb(), "application/zip")),
               attachments=(Expect("overlap.zip", REMOVED,
                                   ("bomb", "limit_exceeded", "corrupt")),)),
        Sample("pixel-flood", "PNG declaring 30,000 x 30,000 pixels, 110 KB on disk",
               ("bomb", "document"), _one("pixel-flood", "写真", "写真です。", Attachment(
                   "photo.png", hostile.pixel_flood_png(), "image/png")),
               attachments=(Expect("photo.png", REMOVED, ("limit_exceeded", "bomb")),)),
    ]


def _large_sample() -> Sample:
    def build() -> bytes:
        parts = []
        for i in range(5):
            jpeg = documents.photo_jpeg(1_300_000, seed=i)
            parts.append(Attachment(f"現場写真{i + 1}.jpg", jpeg, "image/jpeg"))
            parts.append(_pdf(f"報告書{i + 1}.pdf", documents.photo_pdf(jpeg, f"報告書 {i + 1}")))
        return mime_mail("large-20mb", "現場写真と報告書", "現場写真10点を送ります。", parts)

    names = [f"現場写真{i + 1}.jpg" for i in range(5)] + [f"報告書{i + 1}.pdf" for i in range(5)]
    return Sample("large-20mb", "a 20 MB mail: five 1.4 MB photos and five one-page PDFs "
                  "holding them", ("heavy", "document"), build,
                  attachments=tuple(Expect(n, CONVERTED, pages=1 if n.endswith(".pdf") else 0)
                                    for n in names))


def catalogue() -> list[Sample]:
    """Every sample, in manifest order."""
    return (_text_samples() + _document_samples() + _held_samples() + _hostile_samples()
            + _defect_and_bomb_samples() + [_large_sample()])
