"""Attachment file names: tricks that deceive the eye, and the clean names we deliver.

The sender's name is untrusted text. It never decides how a file is converted (content
does), but it can make a file *more* suspicious: an RTLO character that shows
`invoice[U+202E]fdp.exe` as `invoiceexe.pdf`, or `a.pdf.exe`, or blanks padding the
real extension out of view. Those are refused outright.
"""

from __future__ import annotations

import re
import unicodedata

#: Extensions that are never delivered whatever the content looks like (the name alone
#: would make Windows run or mount them if a rendering kept it).
BLOCKED_EXTENSIONS = frozenset({
    # executables and libraries
    "exe", "dll", "scr", "com", "pif", "cpl", "sys", "drv", "ocx", "msc", "gadget", "xll",
    # scripts
    "js", "jse", "vbs", "vbe", "wsf", "wsh", "wsc", "ps1", "psm1", "psd1", "bat", "cmd",
    "hta", "sh", "py", "pyw", "pl", "rb", "jar", "class",
    # shortcuts and settings
    "lnk", "url", "scf", "reg", "inf", "library-ms", "settingcontent-ms", "desktop",
    "application", "appref-ms",
    # disk images and installers
    "iso", "img", "vhd", "vhdx", "vmdk", "dmg", "msi", "msp", "mst", "appx", "msix",
    # OneNote, Android, help files, HTML (smuggling) and SVG (scriptable)
    "one", "onepkg", "apk", "chm", "html", "htm", "xhtml", "shtml", "mht", "mhtml", "svg",
})

#: Extensions of documents and media: seen before a final extension they are a decoy.
DOCUMENT_EXTENSIONS = frozenset({
    "pdf", "doc", "docx", "docm", "xls", "xlsx", "xlsm", "ppt", "pptx", "pptm", "rtf",
    "txt", "csv", "tsv", "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp",
    "odt", "ods", "odp", "zip", "lzh", "7z", "mp4", "mp3", "wav",
})

#: Characters that reorder or hide text: bidi overrides/isolates and zero-width marks.
_BIDI = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_BLANK_BEFORE_EXT = re.compile(r"\s{3,}\.[^.]+$")
_RESERVED = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')
_SPACES = re.compile(r"\s+")
MAX_NAME_CHARS = 120


def extensions(untrusted_name: str) -> list[str]:
    """Lower-case extensions as Windows would see them (NFKC folds full-width dots)."""
    folded = unicodedata.normalize("NFKC", untrusted_name).lower().rstrip(" .")
    return folded.split(".")[1:]


def name_trick(untrusted_name: str | None) -> str | None:
    """Why the name deceives the eye, or None. The reason is safe to show (no name text)."""
    if not untrusted_name:
        return None
    if _BIDI.search(untrusted_name):
        return "the file name contains invisible or right-to-left control characters"
    folded = unicodedata.normalize("NFKC", untrusted_name)
    if _BLANK_BEFORE_EXT.search(folded):
        return "the file name pads its real extension out of view"
    exts = extensions(untrusted_name)
    if len(exts) >= 2 and exts[-2] in DOCUMENT_EXTENSIONS and exts[-1] in BLOCKED_EXTENSIONS:
        return "the file name has a double extension that disguises its type"
    return None


def blocked_extension(untrusted_name: str | None) -> str | None:
    """The blocked extension the name ends with, or None."""
    exts = extensions(untrusted_name or "")
    return exts[-1] if exts and exts[-1] in BLOCKED_EXTENSIONS else None


def clean_name(untrusted_name: str | None, fallback: str = "attachment") -> str:
    """A name safe to put in a MIME header and on a Windows desktop.

    Controls, bidi marks, path separators and reserved characters go; Japanese stays.
    The result keeps its extension when it has to be shortened.
    """
    text = unicodedata.normalize("NFC", untrusted_name or "")
    text = _BIDI.sub("", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in {"Cc", "Cf", "Co", "Cs"})
    text = _RESERVED.sub("_", text)
    text = _SPACES.sub(" ", text).strip(" .")
    if not text:
        return fallback
    if len(text) > MAX_NAME_CHARS:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            text = stem[: MAX_NAME_CHARS - len(ext) - 1] + "." + ext
        else:
            text = text[:MAX_NAME_CHARS]
    return text


def stem(name: str) -> str:
    """`name` without its last extension (for output names like `報告書.pdf` → `報告書`)."""
    base, dot, ext = name.rpartition(".")
    return base if dot and base and 0 < len(ext) <= 10 else name
