"""Detected type → converter, in one place.

Type detection reads the content (libmagic plus a few sniffers for what libmagic misses),
never the declared type or the file name. libmagic and the ZIP reader are parsers of the
original bytes, so detection runs in the sandbox like a conversion (`TypeDetector`, the
worker's `detect`); the gateway only checks the one MIME type that comes back. Dispatch
follows the stdlib's content manager: the exact type, then the main type (`text/*`), then
refuse. Before that, a fixed list of kinds is always blocked, by content and by name.

Adding a converter is one line in `CONVERTERS`: its name (what the sandbox and the report
call it), the `module:Class` the sandboxed worker imports, and the types it takes.
"""

from __future__ import annotations

import importlib
import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

from converters.base import Conversion, Converter
from converters.errors import Blocked, ConversionError, DeceptiveName, Unsupported
from converters.limits import ConversionPolicy
from converters.names import blocked_extension, clean_name, extensions, name_trick

#: Detected MIME types (libmagic on content, lower-cased as the registry lookup does) of
#: the kinds with long lists. They live here rather than beside their converters so that
#: the gateway knows them without importing those parsers (see docs/office-archives.md).
OFFICE_TYPES = (
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.template",
    "application/vnd.ms-word.document.macroenabled.12",
    "application/vnd.ms-word.template.macroenabled.12",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.template",
    "application/vnd.ms-excel.sheet.macroenabled.12",
    "application/vnd.ms-excel.sheet.binary.macroenabled.12",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.openxmlformats-officedocument.presentationml.slideshow",
    "application/vnd.ms-powerpoint.presentation.macroenabled.12",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "application/rtf",
    "text/rtf",
    "application/cdfv2",  # libmagic's name for OLE2 files it cannot tell apart (xls, ppt)
    "application/x-ole-storage",
    "application/encrypted",  # libmagic's name for password-protected OOXML: scan says so
)
ARCHIVE_TYPES = (
    "application/zip",
    "application/x-zip-compressed",
    "application/x-7z-compressed",
    "application/x-tar",
    "application/gzip",
    "application/x-gzip",
    "application/x-bzip2",
    "application/x-xz",
    "application/x-lzh-compressed",
    "application/x-lha",
)
OUTLOOK_TYPES = ("application/vnd.ms-outlook", "application/vnd.ms-tnef")
#: What clean-and-keep-editable may deliver (issue 20), MIME type → extension: the gateway
#: names the cleaned file from this, never from what the sandbox said.
CLEANED_TYPES = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/pdf": "pdf",
}


@dataclass(frozen=True)
class Registration:
    """One converter: `target` is imported inside the sandbox, never in the gateway."""

    name: str
    target: str
    types: tuple[str, ...]


CONVERTERS: tuple[Registration, ...] = (
    Registration("pdf", "converters.pdf:PdfConverter", ("application/pdf",)),
    Registration("image", "converters.image:ImageConverter", (
        "image/jpeg", "image/png", "image/gif", "image/bmp", "image/x-ms-bmp",
        "image/tiff", "image/webp",
    )),
    Registration("text", "converters.text:TextConverter", (
        "text/plain", "text/csv", "text/tab-separated-values", "text/*",
    )),
    # In the sandbox "office" is only the macro/DDE scan: LibreOffice runs in its own warm,
    # sandboxed pool in the gateway (gateway.pipeline.attachments wires `OfficeConverter`).
    Registration("office", "converters.office_scan:OfficeScanConverter", OFFICE_TYPES),
    Registration("archive", "converters.archive:ArchiveConverter", ARCHIVE_TYPES),
    Registration("outlook", "converters.outlook:OutlookConverter", OUTLOOK_TYPES),
    # Clean-and-keep-editable (issue 20): chosen by policy, never by type; two keys, each
    # in its own sandboxed child (converters/cdr.py).
    Registration("cdr", "converters.cdr:CdrConverter", ()),
    Registration("cdr_check", "converters.cdr:CdrCheckConverter", ()),
)

#: Content kinds that are removed whatever they are called (original quarantined).
BLOCKED_TYPES = frozenset({
    # executables and libraries: PE, ELF, Mach-O
    "application/x-dosexec", "application/vnd.microsoft.portable-executable",
    "application/x-msdownload", "application/x-executable", "application/x-sharedlib",
    "application/x-pie-executable", "application/x-object", "application/x-mach-binary",
    "application/x-mach-o-executable",
    # scripts
    "text/x-shellscript", "text/x-msdos-batch", "text/x-python", "text/x-perl",
    "text/x-php", "text/x-ruby", "text/x-tcl", "text/x-lua", "text/x-awk",
    "application/javascript", "text/javascript", "application/x-javascript",
    "application/hta", "application/x-ms-application",
    # shortcuts
    "application/x-ms-shortcut", "application/x-mswinurl",
    # disk images and installers
    "application/x-iso9660-image", "application/x-virtualbox-vhd", "application/x-vhdx",
    "application/x-virtualbox-vmdk", "application/x-qemu-disk", "application/x-raw-disk-image",
    "application/x-apple-diskimage", "application/x-msi", "application/x-ms-installer",
    # OneNote, Java and Android packages, compiled help
    "application/onenote", "application/java-archive", "application/x-java-archive",
    "application/x-java-applet", "application/vnd.android.package-archive",
    "application/vnd.ms-htmlhelp",
    # HTML smuggling and scriptable vector images
    "text/html", "application/xhtml+xml", "image/svg+xml",
})

#: Declared types that say nothing, so a difference from them is not a mismatch.
_GENERIC_DECLARED = frozenset({
    "", "application/octet-stream", "binary/octet-stream", "application/x-download",
    "application/download", "application/force-download", "application/unknown",
})
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png",
            "image/x-ms-bmp": "image/bmp", "application/x-pdf": "application/pdf"}
#: What a name's extension promises, for the mismatch note only.
_EXTENSION_TYPES = {
    "pdf": "application/pdf", "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png",
    "gif": "image/gif", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff",
    "webp": "image/webp",
}
#: libmagic reads only the start of a file; a prefix keeps detection O(1) in size.
DETECT_PREFIX = 1024 * 1024
_ONENOTE_GUID = bytes.fromhex("E4525C7B8CD8A74DAEB15378D02996D3")


def detect_type(untrusted: bytes) -> str:
    """The MIME type of the content, with sniffers for blocked kinds libmagic misses.
    Parses the original: call it in the sandbox (`TypeDetector`), never in the gateway."""
    import magic  # loads libmagic: only where detection runs

    head = untrusted[:DETECT_PREFIX]
    if head.startswith(b"MZ"):
        return "application/x-dosexec"  # any DOS/PE stub: libmagic calls short ones octet-stream
    if head.startswith(_ONENOTE_GUID):
        return "application/onenote"
    if head.startswith(b"vhdxfile"):
        return "application/x-vhdx"
    detected = str(magic.from_buffer(head, mime=True)).lower()
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(untrusted, detected)
    return _ALIASES.get(detected, detected)


def _zip_kind(untrusted: bytes, detected: str) -> str:
    """A ZIP's kind. libmagic knows OOXML only when [Content_Types].xml is the first entry,
    and calls a ZIP octet-stream when its first entry is a folder, or when it starts like
    OOXML but the main part is not the third entry (oletools' test files)."""
    if detected == "application/zip" and b"META-INF/MANIFEST.MF" in untrusted[:DETECT_PREFIX]:
        return "application/java-archive"
    if detected in ("application/zip", "application/octet-stream"):
        return refine_zip_type(untrusted) or detected
    return _ALIASES.get(detected, detected)


#: First-level folders that make a ZIP an OOXML document, and the type each means.
_OOXML_ROOTS = {
    "word/": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xl/": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ppt/": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}
_ODF_TYPES = (
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
)


def refine_zip_type(untrusted: bytes) -> str | None:
    """The Office type of a ZIP libmagic called application/zip, or None for a real archive.

    libmagic recognises OOXML only when [Content_Types].xml is the first entry; other
    writers put it elsewhere, and such a document must still be rendered, not unpacked.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(untrusted)) as z:
            names = z.namelist()[:5000]
            if "[Content_Types].xml" in names:
                for prefix, mime in _OOXML_ROOTS.items():
                    if any(n.startswith(prefix) for n in names):
                        return mime
            if "mimetype" in names:
                declared = z.read("mimetype")[:100].decode("ascii", "replace").strip()
                return declared if declared in _ODF_TYPES else None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None
    return None


#: What a detected type must look like to be believed (RFC 6838 names, lower case).
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,62}/[a-z0-9][a-z0-9.+_-]{0,62}")
#: The type of content whose type could not be told: no converter takes it.
UNKNOWN_TYPE = "application/octet-stream"


def checked_type(untrusted: str) -> str:
    """A detected type that came back from the sandbox, or UNKNOWN_TYPE if it is not one."""
    return untrusted if _MIME_TYPE.fullmatch(untrusted) else UNKNOWN_TYPE


class TypeDetector:
    """Type detection as a sandboxed step: the type goes back in `extra`, nothing else."""

    name = "detect"

    def warm(self) -> None:
        detect_type(b"%PDF-1.4\n")  # loads libmagic and its database once, before forking

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        return Conversion(extra={"detected_type": detect_type(untrusted)})


#: The worker name and target of `TypeDetector`, started with every sandbox.
DETECTOR = ("detect", "converters.registry:TypeDetector")


@dataclass(frozen=True)
class Classification:
    """What the registry decided for one file, before any conversion."""

    detected_type: str
    clean_name: str
    converter: str | None = None
    refusal: ConversionError | None = None
    notes: tuple[str, ...] = field(default=())


class Registry:
    """An immutable lookup over registrations; tests build one with extra converters."""

    def __init__(self, registrations: tuple[Registration, ...] = CONVERTERS) -> None:
        self.registrations = registrations
        self._by_type: dict[str, str] = {}
        for registration in registrations:  # the first registration of a type wins
            for content_type in registration.types:
                self._by_type.setdefault(content_type, registration.name)
        self._targets = {r.name: r.target for r in registrations}

    def targets(self) -> dict[str, str]:
        """name → `module:Class`, handed to sandboxed workers at start-up (type detection
        included)."""
        return {**self._targets, DETECTOR[0]: DETECTOR[1]}

    def converter_for(self, detected_type: str) -> str | None:
        """Exact type, then main type, then None (refuse)."""
        exact = self._by_type.get(detected_type)
        if exact is not None:
            return exact
        return self._by_type.get(detected_type.partition("/")[0] + "/*")

    def classify(
        self, untrusted: bytes, untrusted_name: str | None, declared_type: str,
        detect: Callable[[bytes], str] = detect_type,
    ) -> Classification:
        """Detect (with `detect`: the gateway passes the sandboxed detector), check the
        block lists and the name, and pick a converter."""
        detected = detect(untrusted)
        name = clean_name(untrusted_name)
        notes = _mismatch_notes(declared_type, untrusted_name, detected)
        refusal: ConversionError | None = None
        trick = name_trick(untrusted_name)
        if trick is not None:
            refusal = DeceptiveName(trick)
        elif detected in BLOCKED_TYPES:
            refusal = Blocked(f"detected {detected}")
        elif (ext := blocked_extension(untrusted_name)) is not None:
            refusal = Blocked(f"blocked extension .{ext}")
        if refusal is not None:
            return Classification(detected, name, refusal=refusal, notes=notes)
        converter = self.converter_for(detected)
        if converter is None:
            return Classification(detected, name, refusal=Unsupported(detected), notes=notes)
        return Classification(detected, name, converter=converter, notes=notes)


def _mismatch_notes(declared: str, untrusted_name: str | None, detected: str) -> tuple[str, ...]:
    notes: list[str] = []
    declared = _ALIASES.get(declared.lower(), declared.lower())
    if declared not in _GENERIC_DECLARED and declared != detected:
        notes.append(f"declared type {declared} but the content is {detected}")
    exts = extensions(untrusted_name or "")
    promised = _EXTENSION_TYPES.get(exts[-1]) if exts else None
    if promised is not None and promised != detected:
        notes.append(f"the name ends in .{exts[-1]} but the content is {detected}")
    return tuple(notes)


def load_converter(target: str) -> Converter:
    """Import `module:Class` and instantiate it (inside the sandbox worker)."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    converter: Converter = getattr(module, attr)()
    return converter
