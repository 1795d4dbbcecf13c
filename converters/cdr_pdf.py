"""Clean-and-keep-editable for PDF: the document rewritten by qpdf (pikepdf) without what
can act, run in the sandbox (issue 20, docs/cdr.md).

Removed: the document's OpenAction and every additional-actions (/AA) dictionary, the
JavaScript and embedded-file name trees, XFA, actions that run, open or send something
(JavaScript, Launch, GoToR, GoToE, SubmitForm, ImportData, ResetForm, Rendition, Movie,
Sound, RichMediaExecute, Hide, Named, SetOCGState; a chain's /Next too), annotations that
carry files, media or 3D, and embedded-file streams. URI actions follow the link policy
(defang, remove, keep). AcroForm fields stay, so a form remains fillable, without their
scripts. The file is then written out whole by qpdf: objects nothing refers to are left
behind, no incremental update kept; streams are copied as they are.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field

import pikepdf

from converters import errors
from converters.html import defang_urls

#: Actions that stay: moving within the document, and URIs under the link policy.
SAFE_ACTIONS = frozenset({"/GoTo", "/URI", "/Thread"})
#: What the document catalog, the interactive form and a page may keep: the rest (actions,
#: scripts, XFA, collections, private keys a reader might act on) is left behind.
CATALOG_KEYS = frozenset({"/Type", "/Version", "/Pages", "/PageLabels", "/Names", "/Dests",
                          "/Outlines", "/ViewerPreferences", "/PageLayout", "/PageMode",
                          "/StructTreeRoot", "/MarkInfo", "/Lang", "/AcroForm",
                          "/OCProperties"})
FORM_KEYS = frozenset({"/Fields", "/NeedAppearances", "/DR", "/DA", "/Q"})
PAGE_KEYS = frozenset({"/Type", "/Parent", "/Resources", "/Contents", "/MediaBox", "/CropBox",
                       "/BleedBox", "/TrimBox", "/ArtBox", "/Rotate", "/Annots", "/Group",
                       "/UserUnit", "/StructParents", "/Tabs", "/BoxColorInfo", "/Trans",
                       "/Dur"})
#: Annotations kept: marks, notes, links and form widgets; not files, media, 3D, screens.
ANNOTATIONS = frozenset({"/Link", "/Text", "/FreeText", "/Line", "/Square", "/Circle",
                         "/Polygon", "/PolyLine", "/Highlight", "/Underline", "/Squiggly",
                         "/StrikeOut", "/Stamp", "/Caret", "/Ink", "/Popup", "/Widget"})
#: Keys under which a dictionary holds something active, with the finding they count as.
ACTIVE_KEYS = {"/AA": "additional-actions", "/OpenAction": "open-action",
               "/JS": "javascript", "/XFA": "xfa", "/EmbeddedFiles": "embedded-file",
               "/RichMediaContent": "rich-media", "/3DD": "3d"}
REMOVED_URI = "about:blank"
MAX_OBJECTS = 2_000_000


@dataclass
class CleanedPdf:
    data: bytes
    removed: Counter[str] = field(default_factory=Counter)


def clean_pdf(untrusted: bytes, links: str) -> CleanedPdf:
    """The document without active content (module docstring); `links`: defang, remove
    or keep URI actions."""
    try:
        pdf = pikepdf.open(io.BytesIO(untrusted))
    except pikepdf.PasswordError as exc:
        raise errors.Encrypted("pdf") from exc
    except (pikepdf.PdfError, ValueError, OSError) as exc:
        raise errors.Corrupt("pdf unreadable") from exc
    with pdf:
        # An owner password alone opens the file: it is saved unencrypted (qpdf's default).
        if len(pdf.objects) > MAX_OBJECTS:
            raise errors.LimitExceeded(f"{len(pdf.objects)} objects")
        removed: Counter[str] = Counter()
        _clean_names(pdf, removed)
        for obj in list(pdf.objects):
            _clean_object(obj, links, removed)
        _drop_active_annotations(pdf, removed)
        out = io.BytesIO()
        pdf.remove_unreferenced_resources()
        # Streams are copied as they are: recompressing a scan's uncompressed images cost
        # 250 ms for 10 pages (bench cdr), and a reader decodes them the same either way.
        pdf.save(out, compress_streams=False, stream_decode_level=pikepdf.StreamDecodeLevel.none,
                 object_stream_mode=pikepdf.ObjectStreamMode.generate,
                 fix_metadata_version=False, deterministic_id=True)
    return CleanedPdf(out.getvalue(), +removed)


def _clean_names(pdf: pikepdf.Pdf, removed: Counter[str]) -> None:
    """The catalog, its name trees and the form to their allow-lists."""
    root = pdf.Root
    _keep_only(root, CATALOG_KEYS, removed)
    names = root.get("/Names")
    if isinstance(names, pikepdf.Dictionary):
        _keep_only(names, frozenset({"/Dests"}), removed)
    form = root.get("/AcroForm")
    if isinstance(form, pikepdf.Dictionary):
        _keep_only(form, FORM_KEYS, removed)
    for page in pdf.pages:
        _keep_only(page.obj, PAGE_KEYS, removed)


def _keep_only(target: pikepdf.Object, allowed: frozenset[str],
               removed: Counter[str]) -> None:
    keys = [str(k) for k in list(target.keys())]  # a copy: entries go while we walk
    for key in [k for k in keys if k not in allowed]:
        del target[key]
        removed[_KINDS.get(key, "other-entry")] += 1


#: How a removed entry is named in the report.
_KINDS = {"/OpenAction": "open-action", "/AA": "additional-actions", "/JavaScript": "javascript",
          "/EmbeddedFiles": "embedded-file", "/XFA": "xfa", "/Collection": "embedded-file",
          "/CO": "form-calculation", "/SigFlags": "signature"}


def _clean_object(obj: pikepdf.Object, links: str, removed: Counter[str]) -> None:
    """One indirect object: its active keys gone, its actions judged."""
    if isinstance(obj, pikepdf.Stream):
        if obj.get("/Type") == "/EmbeddedFile":
            obj.write(b"")
            removed["embedded-file"] += 1
        target = obj.stream_dict
    elif isinstance(obj, pikepdf.Dictionary):
        target = obj
    else:
        return
    for key, kind in ACTIVE_KEYS.items():
        if key in target:
            del target[key]
            removed[kind] += 1
    # Actions are found where they are used (/A of links, widgets and outline items, /PA
    # of annotations) or by their /Type: /S alone also names border styles, transitions
    # and structure elements.
    if target.get("/Type") == "/Action":
        _judge_action(target, links, removed)
    for key in ("/A", "/PA"):
        action = target.get(key)
        if isinstance(action, pikepdf.Dictionary):
            _judge_action(action, links, removed)


def _judge_action(action: pikepdf.Dictionary, links: str, removed: Counter[str]) -> None:
    kind = str(action.get("/S", ""))
    if not kind:
        return
    if kind not in SAFE_ACTIONS:
        for key in list(action.keys()):
            del action[key]
        action["/S"] = pikepdf.Name("/GoTo")
        action["/D"] = pikepdf.Array([])
        removed[f"action-{kind[1:].lower()}"] += 1
        return
    if "/Next" in action:
        del action["/Next"]
        removed["action-chain"] += 1
    if kind == "/URI":
        _uri_policy(action, links, removed)


def _uri_policy(action: pikepdf.Dictionary, links: str, removed: Counter[str]) -> None:
    uri = bytes(action.get("/URI", b"")).decode("latin-1") if "/URI" in action else ""
    if links == "defang":
        action["/URI"] = pikepdf.String(defang_urls(uri))
        removed["link-defanged"] += 1
    elif links == "remove":
        action["/URI"] = pikepdf.String(REMOVED_URI)
        removed["link-removed"] += 1


def _drop_active_annotations(pdf: pikepdf.Pdf, removed: Counter[str]) -> None:
    for page in pdf.pages:
        annots = page.obj.get("/Annots")
        if not isinstance(annots, pikepdf.Array):
            continue
        keep = [a for a in annots if isinstance(a, pikepdf.Dictionary)
                and a.get("/Subtype") in ANNOTATIONS]
        if len(keep) != len(annots):
            removed["active-annotation"] += len(annots) - len(keep)
            page.obj["/Annots"] = pikepdf.Array(keep)
