"""Clean-and-keep-editable for OOXML (Word, Excel, PowerPoint): the package rebuilt from an
allow-list, run in the sandbox like every parser of an original (issue 20, docs/cdr.md).

The new package holds only parts whose content type is on `ALLOWED_TYPES` (text, styles,
sheets, slides, drawings, charts, pictures), each XML part parsed by lxml with entities,
DTDs and the network off and written out again, so that what Office reads is what we
wrote. Everything else is left behind and counted: VBA projects, XLM macro sheets, ActiveX
controls, OLE embeddings and packages, embedded fonts, custom UI, signatures (they no
longer hold), external data connections and linked workbooks, alternative chunks. Across
the kept parts: relationships to removed parts and every external relationship except
hyperlinks go, hyperlinks follow the link policy, DDE/INCLUDETEXT-style field codes are
emptied (also when split over several runs), formulas that reach outside (DDE,
WEBSERVICE, other workbooks) are dropped with their cached values kept, and PowerPoint
actions that run programs or macros are removed. A macro-enabled or template package
becomes the plain document type (.docm → .docx).

Nothing is executed and nothing is trusted: `converters.cdr_check` checks the result in a
fresh sandbox before it may be delivered.
"""

from __future__ import annotations

import io
import itertools
import posixpath
import re
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from lxml import etree

from converters import errors
from converters.html import defang_urls, remove_urls

#: Bounds on the package (checked before anything is inflated, and while inflating).
MAX_PARTS = 5000
MAX_PART_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 256 * 1024 * 1024

_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_R = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "http://schemas.openxmlformats.org/package/2006/content-types"
_S = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_A = "http://schemas.openxmlformats.org/drawingml/2006/main"
_OOXML = "application/vnd.openxmlformats-officedocument."
_RELS_TYPE = "application/vnd.openxmlformats-package.relationships+xml"

#: Main parts of macro-enabled and template packages → the plain document's.
MAIN_TYPES = {
    "application/vnd.ms-word.document.macroenabled.main+xml": "wordprocessingml.document",
    "application/vnd.ms-word.template.macroenabledtemplate.main+xml": "wordprocessingml.document",
    f"{_OOXML}wordprocessingml.template.main+xml": "wordprocessingml.document",
    f"{_OOXML}wordprocessingml.document.main+xml": "wordprocessingml.document",
    "application/vnd.ms-excel.sheet.macroenabled.main+xml": "spreadsheetml.sheet",
    "application/vnd.ms-excel.template.macroenabled.main+xml": "spreadsheetml.sheet",
    f"{_OOXML}spreadsheetml.template.main+xml": "spreadsheetml.sheet",
    f"{_OOXML}spreadsheetml.sheet.main+xml": "spreadsheetml.sheet",
    "application/vnd.ms-powerpoint.presentation.macroenabled.main+xml":
        "presentationml.presentation",
    "application/vnd.ms-powerpoint.slideshow.macroenabled.main+xml":
        "presentationml.presentation",
    "application/vnd.ms-powerpoint.template.macroenabled.main+xml":
        "presentationml.presentation",
    f"{_OOXML}presentationml.template.main+xml": "presentationml.presentation",
    f"{_OOXML}presentationml.slideshow.main+xml": "presentationml.presentation",
    f"{_OOXML}presentationml.presentation.main+xml": "presentationml.presentation",
}
#: The delivered file by main part: (extension, MIME type of the file).
DOCUMENT_KINDS = {
    "wordprocessingml.document": ("docx", f"{_OOXML}wordprocessingml.document"),
    "spreadsheetml.sheet": ("xlsx", f"{_OOXML}spreadsheetml.sheet"),
    "presentationml.presentation": ("pptx", f"{_OOXML}presentationml.presentation"),
}
_PARTS = (
    "wordprocessingml.styles", "wordprocessingml.settings", "wordprocessingml.webSettings",
    "wordprocessingml.fontTable", "wordprocessingml.numbering", "wordprocessingml.footnotes",
    "wordprocessingml.endnotes", "wordprocessingml.comments", "wordprocessingml.header",
    "wordprocessingml.footer", "wordprocessingml.document.glossary",
    "spreadsheetml.worksheet", "spreadsheetml.styles", "spreadsheetml.sharedStrings",
    "spreadsheetml.calcChain", "spreadsheetml.table", "spreadsheetml.comments",
    "spreadsheetml.chartsheet", "spreadsheetml.pivotTable", "spreadsheetml.pivotCacheDefinition",
    "spreadsheetml.pivotCacheRecords", "spreadsheetml.sheetMetadata",
    "presentationml.slide", "presentationml.slideLayout", "presentationml.slideMaster",
    "presentationml.notesSlide", "presentationml.notesMaster", "presentationml.handoutMaster",
    "presentationml.presProps", "presentationml.viewProps", "presentationml.tableStyles",
    "presentationml.commentAuthors", "presentationml.comments",
    "drawingml.chart", "drawingml.chartshapes", "drawingml.diagramData",
    "drawingml.diagramLayout", "drawingml.diagramStyle", "drawingml.diagramColors",
    "drawing", "theme", "themeOverride", "extended-properties", "custom-properties",
)
#: Part content types kept (lower case). Pictures are kept as they are (their decoders
#: are Office's); see docs/cdr.md for what is not re-encoded.
ALLOWED_TYPES = frozenset(
    {f"{_OOXML}{p}+xml".lower() for p in _PARTS}
    | {f"{_OOXML}{kind}.main+xml".lower() for kind in DOCUMENT_KINDS}
    | {_RELS_TYPE, "application/vnd.openxmlformats-package.core-properties+xml",
       f"{_OOXML}vmldrawing", "application/vnd.ms-office.drawingml.diagramdrawing+xml",
       "application/vnd.ms-office.chartstyle+xml", "application/vnd.ms-office.chartcolorstyle+xml",
       "application/vnd.ms-word.stylesWithEffects+xml".lower(),
       "application/vnd.ms-word.commentsextended+xml", "application/vnd.ms-word.commentsids+xml",
       "application/vnd.ms-word.people+xml",
       "image/png", "image/jpeg", "image/gif", "image/bmp", "image/tiff", "image/x-emf",
       "image/x-wmf", "image/emf", "image/wmf"})
#: What a removed part was, for the report (by content type fragment, first match).
_REMOVED_KINDS = (
    ("vbaproject", "vba-macro"), ("vbadata", "vba-macro"), ("macrosheet", "xlm-macro"),
    ("activex", "activex"), ("oleobject", "ole-object"), ("package", "ole-object"),
    ("customui", "custom-ui"), ("ui.extensibility", "custom-ui"),
    ("digital-signature", "signature"), ("externallink", "external-link"),
    ("connections", "external-data"), ("querytable", "external-data"),
    ("font", "embedded-font"), ("dialogsheet", "xlm-macro"),
    ("printersettings", "printer-settings"), ("customxml", "custom-xml"),
)
#: Field codes that fetch, run or embed something when a document is opened or updated.
_ACTIVE_FIELD = re.compile(
    r"^\s*(DDE|DDEAUTO|INCLUDETEXT|INCLUDEPICTURE|IMPORT|LINK|DATABASE|MACROBUTTON|EMBED)\b",
    re.IGNORECASE)
#: Formulas that reach outside the workbook: DDE (`cmd|'/c …'!A0`), web and RTD calls,
#: XLM calls, other workbooks (`[1]Sheet1!A1`).
_ACTIVE_FORMULA = re.compile(
    r"\w\|['!]|\b(WEBSERVICE|FILTERXML|RTD|CALL|REGISTER|REGISTER\.ID|EXEC|HYPERLINK)\s*\(|\[\d+\]",
    re.IGNORECASE)
#: PowerPoint actions that only move within the presentation (others run programs/macros).
_SAFE_ACTION = re.compile(r"^ppaction://(hlinkshowjump|hlinksldjump|noaction)", re.I)
#: Hyperlink targets that may stay; anything else (mhtml:, file:, ms-… handlers) is cut.
WEB_LINK = re.compile(r"^(https?|hxxps?|mailto|about):", re.IGNORECASE)
REMOVED_LINK = "about:blank"


def hardened_parser() -> etree.XMLParser:
    """No entities, no DTD, no network, no huge trees: a billion-laughs part is an error."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True)


def parse_xml(data: bytes, name: str) -> etree._Element:
    """A kept XML part as a tree; a DTD of any kind is refused outright."""
    if b"<!DOCTYPE" in data[:4096].upper() or b"<!ENTITY" in data.upper():
        raise errors.Corrupt(f"{name}: a DTD in an OOXML part")
    try:
        return etree.fromstring(data, hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise errors.Corrupt(f"{name}: {exc}") from exc


def serialize(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=True))


@dataclass
class Cleaned:
    """The rebuilt package and what was taken out of it."""

    data: bytes
    extension: str
    content_type: str
    removed: Counter[str] = field(default_factory=Counter)


@dataclass
class _Package:
    parts: dict[str, bytes]
    types: dict[str, str]  # part name (no leading slash) → content type, lower case
    removed: Counter[str] = field(default_factory=Counter)


def read_package(untrusted: bytes) -> _Package:
    """The parts and their content types, after the checks a ZIP reader of 3.11.7 lacks:
    no duplicate or overlapping entries (ambiguity and quoted-overlap bombs), no
    encrypted entries, bounded sizes."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(untrusted))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise errors.Corrupt("not a readable OOXML package") from exc
    with zf:
        infos = _checked_entries(zf.infolist())
        parts = {info.filename: _inflate(zf, info) for info in infos if not info.is_dir()}
    if "[Content_Types].xml" not in parts:
        raise errors.Corrupt("no [Content_Types].xml: not an OOXML package")
    return _Package(parts, _content_types(parts))


def _checked_entries(infos: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    if len(infos) > MAX_PARTS:
        raise errors.LimitExceeded(f"{len(infos)} parts in the package")
    names = [i.filename.lower() for i in infos]
    if len(set(names)) != len(names):
        raise errors.Corrupt("the same part name twice in the package")
    if any(i.flag_bits & 0x1 for i in infos):
        raise errors.Encrypted("office")
    if sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
        raise errors.Bomb("the package inflates beyond its limit")
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for this, after in itertools.pairwise(ordered):
        if this.header_offset + 30 + len(this.filename.encode()) + this.compress_size \
                > after.header_offset:
            raise errors.Corrupt("overlapping entries in the package")
    return infos


def _inflate(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_PART_BYTES:
        raise errors.LimitExceeded(f"part {info.filename} is too large")
    try:
        with zf.open(info) as f:
            data = f.read(MAX_PART_BYTES + 1)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
        raise errors.Corrupt(f"part {info.filename} unreadable") from exc
    if len(data) > MAX_PART_BYTES:
        raise errors.Bomb(f"part {info.filename} inflates beyond its declared size")
    return data


def _content_types(parts: dict[str, bytes]) -> dict[str, str]:
    root = parse_xml(parts["[Content_Types].xml"], "[Content_Types].xml")
    defaults = {e.get("Extension", "").lower(): e.get("ContentType", "").lower()
                for e in root.iter(f"{{{_CT}}}Default")}
    overrides = {e.get("PartName", "").lstrip("/").lower(): e.get("ContentType", "").lower()
                 for e in root.iter(f"{{{_CT}}}Override")}
    # The extension as OPC reads it: "_rels/.rels" has the extension "rels".
    return {name: overrides.get(name.lower(),
                                defaults.get(posixpath.basename(name).rpartition(".")[2].lower(), ""))
            for name in parts if name != "[Content_Types].xml"}


def clean_ooxml(untrusted: bytes, links: str) -> Cleaned:
    """The package rebuilt from its allowed parts (module docstring); `links` is the link
    policy: defang, remove or keep."""
    package = read_package(untrusted)
    main = _main_kind(package)
    kept = _keep_allowed(package)
    dropped_ids = {}
    for name in [n for n in kept if n.endswith(".rels")]:
        source = _source_of(name)
        if source and source not in kept:  # the relationships of a part left behind
            del kept[name]
            continue
        kept[name], dropped_ids[source] = _clean_rels(kept[name], name, kept, links,
                                                      package.removed)
    for name, data in list(kept.items()):
        if is_xml(package.types[name]) and not name.endswith(".rels"):
            kept[name] = _clean_part(data, name, dropped_ids.get(name, set()), links,
                                     package.removed)
    extension, content_type = DOCUMENT_KINDS[main]
    return Cleaned(_write(kept, package.types), extension, content_type, +package.removed)


def is_xml(ctype: str) -> bool:
    """XML parts, VML included (legacy VML that is not well-formed is refused)."""
    return ctype.endswith("xml") or ctype == f"{_OOXML}vmldrawing"


def _main_kind(package: _Package) -> str:
    mains = {MAIN_TYPES[t] for t in package.types.values() if t in MAIN_TYPES}
    if len(mains) != 1:
        raise errors.Unsupported("not a Word, Excel or PowerPoint package (or an xlsb)")
    return mains.pop()


def _keep_allowed(package: _Package) -> dict[str, bytes]:
    kept: dict[str, bytes] = {}
    for name, data in package.parts.items():
        ctype = package.types.get(name, "")
        ctype = _plain_main(ctype)
        if ctype in ALLOWED_TYPES:
            kept[name] = data
            package.types[name] = ctype
        elif name != "[Content_Types].xml":
            package.removed[_removed_kind(ctype, name)] += 1
    return kept


def _plain_main(ctype: str) -> str:
    main = MAIN_TYPES.get(ctype)
    return f"{_OOXML}{main}.main+xml".lower() if main else ctype


def _removed_kind(ctype: str, name: str) -> str:
    probe = f"{ctype} {name}".lower()
    return next((kind for fragment, kind in _REMOVED_KINDS if fragment in probe), "other-part")


def _source_of(rels_name: str) -> str:
    """word/_rels/document.xml.rels → word/document.xml; _rels/.rels → the package."""
    folder, base = posixpath.split(rels_name)
    return posixpath.join(posixpath.dirname(folder), base[: -len(".rels")])


def _clean_rels(data: bytes, name: str, kept: dict[str, bytes], links: str,
                removed: Counter[str]) -> tuple[bytes, set[str]]:
    """Drops relationships to parts not kept and external ones other than hyperlinks;
    returns the rewritten part and the ids dropped (their references go too)."""
    root = parse_xml(data, name)
    base = posixpath.dirname(_source_of(name))
    dropped: set[str] = set()
    for rel in list(root):
        rid, kind = rel.get("Id", ""), rel.get("Type", "").rsplit("/", 1)[-1]
        if rel.get("TargetMode", "").lower() == "external":
            if kind == "hyperlink" and WEB_LINK.match(rel.get("Target", "").strip()):
                _link_policy(rel, links, removed)
                continue
            removed["external-link" if kind != "attachedTemplate" else "remote-template"] += 1
        elif _target(base, rel.get("Target", "")) in kept:
            continue
        root.remove(rel)
        dropped.add(rid)
    return serialize(root), dropped


def _target(base: str, target: str) -> str:
    path = target if target.startswith("/") else posixpath.join(base, target)
    return posixpath.normpath(path).lstrip("/")


def _link_policy(rel: etree._Element, links: str, removed: Counter[str]) -> None:
    target = rel.get("Target", "")
    if links == "defang":
        rel.set("Target", defang_urls(target))
        removed["link-defanged"] += 1
    elif links == "remove":
        rel.set("Target", REMOVED_LINK)
        removed["link-removed"] += 1


def _clean_part(data: bytes, name: str, dropped: set[str], links: str,
                removed: Counter[str]) -> bytes:
    root = parse_xml(data, name)
    _drop_references(root, dropped)
    removed["external-data"] += _drop_all(root, _ALWAYS_DROPPED)
    removed["macro-button"] += _drop_all(root, {_FMLA_MACRO})
    removed["active-field"] += _empty_active_fields(root, links)
    removed["active-formula"] += _drop_active_formulas(root)
    removed["program-action"] += _drop_program_actions(root)
    return serialize(root)


#: Elements that only exist to point at a removed part: dropped with the reference.
_HOLDERS = {f"{{{_W}}}control", "{urn:schemas-microsoft-com:office:office}OLEObject",
            f"{{{_W}}}attachedTemplate", f"{{{_W}}}altChunk", f"{{{_W}}}subDoc",
            f"{{{_S}}}sheet", f"{{{_S}}}externalReference", f"{{{_S}}}control",
            "{http://schemas.openxmlformats.org/presentationml/2006/main}control"}


#: Word's mail merge source (an ODBC/OLE DB connection string) and template link.
_ALWAYS_DROPPED = {f"{{{_W}}}mailMerge", f"{{{_W}}}attachedTemplate"}
#: A VML form control's macro (an Excel button that runs one).
_FMLA_MACRO = "{urn:schemas-microsoft-com:office:excel}FmlaMacro"


def _drop_all(root: etree._Element, tags: set[str]) -> int:
    found = [e for e in root.iter(*tags)]
    for element in found:
        parent = element.getparent()
        if parent is not None:
            parent.remove(element)
    return len(found)


def _drop_references(root: etree._Element, dropped: set[str]) -> None:
    if not dropped:
        return
    for element in list(root.iter()):
        for attr in [a for a in element.attrib if a.startswith(f"{{{_R}}}")]:
            if element.get(attr) in dropped:
                if element.tag in _HOLDERS and element.getparent() is not None:
                    element.getparent().remove(element)
                    break
                del element.attrib[attr]


def _empty_active_fields(root: etree._Element, links: str) -> int:
    """Empties field instructions that fetch or run something, and applies the link
    policy to HYPERLINK fields. A complex field's instruction may be split over runs
    ("DD" + "E"): the pieces are joined first."""
    count = 0
    instr = f"{{{_W}}}instr"
    for simple in list(root.iter(f"{{{_W}}}fldSimple")):
        if _ACTIVE_FIELD.match(simple.get(instr, "")):
            simple.set(instr, "")
            count += 1
        else:
            simple.set(instr, link_text(simple.get(instr, ""), links))
    for pieces in _complex_fields(root):
        active = _ACTIVE_FIELD.match("".join(p.text or "" for p in pieces))
        for piece in pieces:
            piece.text = "" if active else link_text(piece.text or "", links)
        count += bool(active)
    return count


def link_text(text: str, links: str) -> str:
    """URLs in a field instruction under the link policy."""
    if links == "defang":
        return defang_urls(text)
    return remove_urls(text, REMOVED_LINK) if links == "remove" else text


def _complex_fields(root: etree._Element) -> Iterator[list[etree._Element]]:
    """The instruction pieces (w:instrText) of each complex field, in document order."""
    pieces: list[etree._Element] | None = None
    for element in root.iter(f"{{{_W}}}fldChar", f"{{{_W}}}instrText"):
        if element.tag == f"{{{_W}}}instrText":
            if pieces is not None:
                pieces.append(element)
            continue
        kind = element.get(f"{{{_W}}}fldCharType")
        if kind == "begin":
            pieces = []
        elif kind in ("separate", "end") and pieces is not None:
            yield pieces
            pieces = None
    if pieces:
        yield pieces


def _drop_active_formulas(root: etree._Element) -> int:
    """Cell formulas that reach outside go; the value last computed (`<v>`) stays."""
    count = 0
    for formula in list(root.iter(f"{{{_S}}}f")):
        if _ACTIVE_FORMULA.search(formula.text or ""):
            parent = formula.getparent()
            if parent is not None:
                parent.remove(formula)
                count += 1
    for name in list(root.iter(f"{{{_S}}}definedName")):
        if (name.get("name", "").lower().startswith(("auto_open", "auto_close",
                                                       "_xlnm.auto_open"))
                or _ACTIVE_FORMULA.search(name.text or "")):
            parent = name.getparent()
            if parent is not None:
                parent.remove(name)
                count += 1
    return count


def _drop_program_actions(root: etree._Element) -> int:
    count = 0
    for tag in (f"{{{_A}}}hlinkClick", f"{{{_A}}}hlinkHover"):
        for link in root.iter(tag):
            action = link.get("action")
            if action and not _SAFE_ACTION.match(action):
                del link.attrib["action"]
                count += 1
    return count


def _write(kept: dict[str, bytes], types: dict[str, str]) -> bytes:
    """A new package: [Content_Types].xml written from what is kept (one Override per
    part, nothing else), then _rels/.rels, the document's own folder and the rest, in
    the order Office writes them (libmagic tells the kind from the first entries)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", _types_xml(kept, types))
        for name in sorted(kept, key=lambda n: (n != "_rels/.rels", n.startswith("docProps/"),
                                                n)):
            zf.writestr(name, kept[name])
    return out.getvalue()


def _types_xml(kept: dict[str, bytes], types: dict[str, str]) -> bytes:
    root = etree.Element(f"{{{_CT}}}Types", nsmap={None: _CT})
    for name in sorted(kept):
        etree.SubElement(root, f"{{{_CT}}}Override", PartName=f"/{name}",
                         ContentType=_canonical(types[name]))
    return serialize(root)


#: Content types are compared in lower case; Office wants these spelled its way.
_SPELLING = {t.lower(): t for t in (
    "application/vnd.ms-word.stylesWithEffects+xml", "application/vnd.ms-word.commentsExtended+xml",
    "application/vnd.ms-word.commentsIds+xml", "application/vnd.ms-office.chartcolorstyle+xml",
    "application/vnd.ms-office.drawingml.diagramDrawing+xml",
    *(f"{_OOXML}{p}+xml" for p in _PARTS),
    *(f"{_OOXML}{kind}.main+xml" for kind in DOCUMENT_KINDS),
    f"{_OOXML}vmlDrawing")}


def _canonical(ctype: str) -> str:
    return _SPELLING.get(ctype, ctype)
