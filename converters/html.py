"""HTML mail to readable plain text: the shape kept, nothing active or hidden left.

Why this design: inscriptis and html2text walk the tree in Python (30-40 ms on a 100 KB
newsletter); a bare lexbor `text()` takes under 1 ms but loses layout and keeps hidden
text. Here lexbor does the work in C: we drop what must not be shown, insert marker
characters (Unicode private use) where blocks, line breaks and table cells start, and
read the whole text in one `text()` call; a split on marker runs then turns them into
lines. (Cells are marked at their end tag: a table written without `</td>` keeps its
rows but its cells run together.)
Markers go into the source before parsing: one regex split finds the tag openings, a
dict maps them to their markers (no Python code per tag), and they are placed only
where the HTML parser keeps text in place (between table rows only whitespace stays, so
a row start is a form feed). A tree walk in Python would cost more than all of this
(about 4 ms for a newsletter's 4,500 nodes); the DOM is touched only for elements that
need a decision (hidden ones, links, images, <pre>, numbered lists), and each CSS
query, one walk of the tree in lexbor, runs only if its tags occur in the source.

Dropped: script, style, head, comments, forms' controls, embedded objects, and elements
hidden by inline style (`display:none`, `visibility:hidden`, zero font size, zero
opacity, zero size with overflow hidden), by the `hidden` attribute, or by a top-level
`<style>` rule (rules inside `@media` are ignored: responsive mail hides its desktop
layout there, not content it wants hidden).
Links: each shows its real target after its text; `javascript:`, `data:`, `vbscript:`
and `file:` targets are removed; a link whose text is another host's URL is reported.

Nesting bombs: the HTML tree builder scans its stack of open elements at most start
tags (is a <p> open?), so its time grows with the square of the nesting depth (20,000
nested <div>s: over 1 s). Before parsing, one regex pass measures the depth the tags
would build; beyond `MAX_NESTING` the tags deeper than that are replaced by a space
(see `_flatten`), as browsers also stop nesting at a fixed depth.
"""

from __future__ import annotations

import operator
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from urllib.parse import urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode, SelectolaxError

from converters.charset import decode_bytes, normalize_label

__all__ = ["MAX_NESTING", "HtmlText", "decode_html", "defang_urls", "html_to_text", "remove_urls"]

# Markers that merge into runs (see `_lines`) are a lead character and a kind: a run
# then starts with a literal character, which the regex engine finds several times
# faster than a character class.
_LEAD = "\ue000"
_NL = _LEAD + "\ue001"  # a line break we inserted (runs of them are one break)
_CELL = _LEAD + "\ue002"  # a table cell ends (placed before </td>, inside the cell)
_PARA = _LEAD + "\ue003"  # a paragraph boundary: a blank line
_BR = _LEAD + "\ue004"  # a <br>: one line break each, never merged with its neighbours
_LI = _LEAD + "\ue005"  # a list item starts
_QS, _QE = "\ue006", "\ue007"  # a blockquote starts / ends: its lines get "> "
_SP = "\ue008"  # a space that must survive whitespace collapsing (in <pre>)
_ROW = "\f"  # a table row starts (whitespace: the only text the parser keeps between rows)
_MARKER_CHARS = tuple(chr(code) for code in range(0xE000, 0xE009))
_MARKER_CHAR = re.compile("[\ue000-\ue008]")  # for text read from one element

_DROP = ["script", "style", "title", "noscript", "template", "iframe", "object",
         "embed", "applet", "svg", "math", "select", "textarea", "input", "button",
         "frameset", "frame", "audio", "video", "canvas", "map"]
_PARA_TAGS = ("p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "dl", "ul", "ol", "figure",
              "address", "center", "fieldset", "pre")
_LINE_TAGS = ("div", "li", "dt", "dd", "section", "article", "header", "footer", "nav", "aside",
              "main", "caption", "figcaption", "form")


def _ci(names: str) -> str:
    """Tag-name patterns with each letter as an [xX] class: 3x faster than IGNORECASE."""
    return re.sub("[a-z]", lambda m: f"[{m[0]}{m[0].upper()}]", names)


#: First letters of the tags mail uses most ("</td", "<tr", "<p", "<div", "<li", "<br"):
#: their branches are tried first.
_COMMON_FIRST = "/tpdlbh"


def _common_first(word: str) -> tuple[bool, int, str]:
    return word[0] not in _COMMON_FIRST, _COMMON_FIRST.find(word[0]), word


def _trie(words: Iterable[str]) -> str:
    """`words` as an alternation factored on shared prefixes: re tries the branches of
    an alternation one by one, so `s(?:cript|tyle)` costs one test where `script|style`
    costs two, at every "<" of the document."""
    tails: dict[str, list[str]] = {}
    for word in sorted(set(words), key=_common_first):
        tails.setdefault(word[0], []).append(word[1:])
    branches = []
    for head, rests in tails.items():
        if len(rests) == 1:
            branches.append(re.escape(head + rests[0]))
            continue
        longer = [rest for rest in rests if rest]
        inner = f"(?:{_trie(longer)})" if longer else ""
        optional = "?" if longer and len(longer) < len(rests) else ""
        branches.append(re.escape(head) + inner + optional)
    return "|".join(branches)


#: Tags whose queries or removal run only when the source has them: each CSS query is
#: one walk of the whole tree, and most of these tags never occur in mail.
_GATED = (*_DROP, "dialog", "pre", "ol", "area")


def _marked_tags() -> dict[str, str]:
    """Each tag opening ("<p", "</td") that gets markers, and its markers.

    Markers go *before* the tag, so closing markers land inside the element they close.
    Text between table rows would be moved out of the table by the HTML parser ("foster
    parenting"), except whitespace: a row start gets a form feed (`_ROW`), every other
    table marker goes inside a cell (a cell is marked at its end tag; the blank line
    after a table goes after its end tag).
    """
    marks = {}
    for tag in _PARA_TAGS:
        marks[f"<{tag}"] = marks[f"</{tag}"] = _PARA
    for tag in _LINE_TAGS:
        marks[f"<{tag}"] = marks[f"</{tag}"] = _NL
    marks["</table"] = ""
    marks["<li"] = _NL + _LI
    marks["<tr"] = _ROW
    marks["</td"] = marks["</th"] = _CELL
    marks["<br"] = _BR
    marks["<hr"] = f"{_PARA}――――――――――{_PARA}"
    marks["<blockquote"] = _PARA + _QS
    marks["</blockquote"] = _PARA + _QE
    for tag in _GATED:  # found by the same pass, unmarked: see `_mark_source`
        marks.setdefault(f"<{tag}", "")
    return marks


_MARKS = _marked_tags()
_TAG_NAMES = _trie(tag[1:] for tag in _MARKS)
#: Most mail writes tags in lower case, so one pass does: tag openings to mark, a table's
#: end tag whole (its blank line goes after it), and any tag name with an upper-case
#: letter, which has no entry in `_MARKED` and sends the source to the case-blind passes.
_MARK_LOWER = re.compile(rf"(</table\s*+>|<(?:{_TAG_NAMES})(?=[\s/>])|</?[a-z0-9]*+[A-Z])")
_MARKED = {tag: marks + tag for tag, marks in _MARKS.items()} | {"</table>": "</table>" + _PARA}
_MARK_ANY = re.compile(rf"(<(?:{_ci(_TAG_NAMES)}))(?=[\s/>])")
_TABLE_END = re.compile(rf"</{_ci('table')}\s*>")
#: HTML whitespace collapses to one space (plus no-break and zero-width spaces).
_SPACES = ("\t", "\n", "\r", "\u00a0", "\u200b")
_SPACE_RUN = re.compile("  +")
_MARKER_RUN = re.compile(f"({_LEAD}[\ue000-\ue005 ]*+)")
_BLANK_RUNS = re.compile("\n\n\n+")  # not "\n{3,}": a literal start is searched far faster
_QUOTE_MARK = re.compile(f"([{_QS}{_QE}])")
#: Substrings of a whitespace-free, lower-cased style that hide the element outright.
_HIDING = ("display:none", "visibility:hidden", "mso-hide:all", "color:transparent")
_ZERO = re.compile(r"(?<![-\w])(?:font-size|opacity):0*\.?0+(?:px|pt|em|rem|%)?(?:;|!|$)")
_ZERO_SIZE = re.compile(r"(?<![-\w])(?:max-)?(?:width|height):0+(?:px)?(?:;|!|$)")
#: A C-side prefilter: only styles containing one of these can hide anything.
_MAYBE_HIDDEN = ",".join(f'[style*="{word}" i]' for word in (
    "none", "hidden", "mso-hide", "transparent", "opacity", "font-size:0", "font-size: 0",
    "font-size:."))
_UNSAFE_SCHEME = re.compile(r"^(?:javascript|data|vbscript|file|about|blob):", re.IGNORECASE)
_STRIP_IN_URL = re.compile(r"[\x00-\x20\x7f]")
_URLISH = re.compile(
    r"(?:[a-z][a-z0-9+.-]*://)?(?:www\.)?((?:[a-z0-9-]+\.)+[a-z]{2,})(?:[:/?#]\S*)?",
    re.IGNORECASE,
)
_COMMON_TLDS = frozenset((
    "jp", "com", "net", "org", "info", "biz", "io", "co", "gov", "edu", "us", "uk", "cn", "kr",
    "tw", "hk", "de", "fr", "ru", "app", "dev", "xyz", "top", "online", "site", "me", "tv", "asia",
))
_DEFANGED = {"http": "hxxp", "https": "hxxps", "ftp": "fxp"}
#: What `remove_urls` takes out: the schemes `defang_urls` rewrites, up to a space, an
#: angle bracket, a quote or a Japanese bracket or full stop (where a URL in running
#: Japanese text ends).
_REMOVED_URL = re.compile(r"(?<![A-Za-z])(?:https?|ftp)://[^\s<>\"'「」『』（）、。]*",
                          re.IGNORECASE)
_ASCII_LETTERS = string.ascii_letters
#: Deepest nesting handed to the parser as written. Measured on 4 MB of <div>s nested
#: this deep, over and over (the worst case per byte): 1.5x the parse time of flat
#: <div>s at 256, 3x at 512, 4.5x at 1,000, 10x at 2,000; at 512 a 25 MB body's
#: parse stays below the rest of html_to_text on that body, while real mail, even
#: sloppy mail that leaves every <font> open, stays far below it (newsletters: < 100).
MAX_NESTING = 512
#: Tags that cannot make the tree deeper, so they are not counted: void elements, those
#: whose next sibling closes them (<p>, <li>, <td>...: legacy mail often leaves them
#: open), <a> (a new one closes the open one), the document's own html/head/body, and
#: raw-text elements (never removed by `_flatten`: a <script> without its start tag
#: would show its code as text).
_FLAT_TAGS = (
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
    "track", "wbr", "param", "keygen", "basefont", "bgsound", "image", "frame",
    "p", "li", "dt", "dd", "tr", "td", "th", "thead", "tbody", "tfoot", "colgroup",
    "option", "optgroup", "rb", "rt", "rp", "rtc", "a", "html", "head", "body",
    "script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes",
    "noscript", "plaintext")
#: In lower or upper case, not `_ci`: the measure runs on every HTML body, and the
#: letter classes double its time. A mixed-case "<Td" counts as nesting (rare, and
#: counting too much only makes flattening start early).
_FLAT_NAMES = _trie((*_FLAT_TAGS, *map(str.upper, _FLAT_TAGS)))
#: A start or end tag that nests; the group is "/" for an end tag. `[^<>]` keeps each
#: match within one "<" (linear time, even with no ">" anywhere).
_NESTING_TAG = re.compile(rf"<(/?)(?!(?:{_FLAT_NAMES})[\s/>])[a-zA-Z]")
_NESTING_START = re.compile(rf"<(?!(?:{_FLAT_NAMES})[\s/>])[a-zA-Z]")
_NESTING_TAG_WHOLE = re.compile(rf"(<(/?)(?!(?:{_FLAT_NAMES})[\s/>])[a-zA-Z][^<>]*+>?)")
_STEP = {"": 1, "/": -1}
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class HtmlText:
    """The readable text and what the reader must be told about the HTML."""

    text: str
    #: (visible text, real target) of links whose text names another host.
    mismatched_links: tuple[tuple[str, str], ...] = ()
    #: Links with a javascript:/data:/vbscript:/file: target that were removed.
    removed_links: int = 0
    hidden_elements: int = 0
    #: The nesting depth measured when it was over `MAX_NESTING` (the deeper tags were
    #: flattened: their layout is lost and hidden text in them shows), else 0.
    nesting_depth: int = 0


def decode_html(untrusted: bytes, declared: str | None) -> str:
    """HTML bytes to text: the MIME label if the bytes agree, then `<meta charset>`."""
    if (normalize_label(declared)) is None:
        meta = _META_CHARSET.search(untrusted[:4096])
        if meta is not None:
            declared = meta[1].decode("ascii")
    return decode_bytes(untrusted, declared)[0]


def defang_urls(text: str) -> str:
    """`http://` → `hxxp://` (and ftp → fxp): shown, readable, never auto-linked.

    Scans for "://" with str.find (C speed) and rewrites only the scheme before it.
    """
    pieces: list[str] = []
    pos = 0
    while (found := text.find("://", pos)) >= 0:
        # the letters just before "://"; 8 are enough to tell a 5-letter scheme from
        # the tail of a longer word
        head = text[max(pos, found - 8):found]
        scheme = head[len(head.rstrip(_ASCII_LETTERS)):]
        start = found - len(scheme)
        safe = _DEFANGED.get(scheme.lower())
        if safe is not None:
            pieces.append(text[pos:start])
            pieces.append(safe if scheme.islower() else safe.upper())
            pos = found
        pieces.append(text[pos:found + 3])
        pos = found + 3
    pieces.append(text[pos:])
    return "".join(pieces)


def remove_urls(text: str, label: str) -> str:
    """Every http/https/ftp URL replaced with `label` (the link policy `remove`)."""
    return _REMOVED_URL.sub(label, text)


def html_to_text(
    untrusted: str,
    *,
    defang: bool = True,
    cid_names: Mapping[str, str] | None = None,
    image_label: str = "image",
) -> HtmlText:
    """Render `untrusted` HTML as plain text (see the module docstring for the rules)."""
    source = untrusted
    for marker in _MARKER_CHARS:
        if marker in source:
            source = source.replace(marker, "")
    source, depth = _flatten(source)
    source, present = _mark_source(source)
    tree = LexborHTMLParser(source)
    hidden = _drop_hidden(tree, present)
    mismatched, removed = _links(tree, present)
    _images(tree, cid_names or {}, image_label)
    _layout(tree, present)
    root = tree.body
    if root is None or root.parent is None:  # none, hidden, or replaced by a <frameset>
        root = tree.root
    raw = root.text(deep=True, separator="") if root is not None else ""
    text = _lines(raw)
    if defang:
        text = defang_urls(text)
    return HtmlText(text, tuple(mismatched), removed, hidden, depth)


def _depths(slashes: list[str]) -> list[int]:
    """The depth after each tag ("" a start tag, "/" an end tag), never below 0.

    Computed in C: the depth is the running sum minus its lowest point so far (the
    floor at 0 moves the sum up by exactly that much), not in a Python loop per tag.
    """
    totals = list(accumulate(map(_STEP.__getitem__, slashes)))
    lows = accumulate(totals, min, initial=0)
    next(lows)
    return list(map(operator.sub, totals, lows))


def _flatten(source: str) -> tuple[str, int]:
    """`source` with every tag nested deeper than `MAX_NESTING` replaced by a space
    (words keep apart), and the measured depth when that was needed, else 0.

    The measure counts start and end tags as written; the parser's real depth can differ
    (it closes unclosed elements, adds a <tbody>), which at most shifts where flattening
    starts.
    """
    # no deeper than the number of start tags: most mail stops at one of these bounds
    if source.count("<") <= MAX_NESTING or len(_NESTING_START.findall(source)) <= MAX_NESTING:
        return source, 0
    depth = max(_depths(_NESTING_TAG.findall(source)))
    if depth <= MAX_NESTING:
        return source, 0
    parts = _NESTING_TAG_WHOLE.split(source)
    slashes = parts[2::3]
    # an end tag belongs to the level it closes: one above the depth after it
    levels = map(operator.add, _depths(slashes), map(len, slashes))
    parts[1::3] = [tag if level <= MAX_NESTING else " "
                   for tag, level in zip(parts[1::3], levels, strict=True)]
    parts[2::3] = [""] * len(slashes)
    return "".join(parts), depth


def _mark_source(source: str) -> tuple[str, frozenset[str]]:
    """Insert the block, line, cell and quote markers before the tags that need them.

    Also returns the tag openings found, lower-cased ("<p", "</td", "<script").
    """
    source = source.replace(_ROW, " ")
    parts = _MARK_LOWER.split(source)
    # parts alternate text and tag openings; the openings are mapped in C, not in a loop
    tags = parts[1::2]
    try:
        parts[1::2] = map(_MARKED.__getitem__, tags)
    except KeyError:  # an upper-case letter in a tag name, or "</table >"
        return _mark_any_case(source)
    return "".join(parts), frozenset(tags)


def _mark_any_case(source: str) -> tuple[str, frozenset[str]]:
    parts = _MARK_ANY.split(source)
    tags = parts[1::2]
    found = list(map(str.lower, tags))
    parts[1::2] = map(operator.add, map(_MARKS.__getitem__, found), tags)
    return _TABLE_END.sub("</table>" + _PARA, "".join(parts)), frozenset(found)


def _drop_hidden(tree: LexborHTMLParser, present: frozenset[str]) -> int:
    """Remove hidden elements, `<head>` and everything in `_DROP`; return how many were hidden.

    Removal only unlinks a node from its parent (lexbor frees nodes with the document),
    so nodes inside an already removed one can be unlinked safely in any order.
    """
    selectors = ["[hidden]"]
    if "<dialog" in present:
        selectors.append("dialog:not([open])")
    styles = tree.css("style") if "<style" in present else []
    for style in styles:
        selectors.extend(_hiding_selectors(style.text(deep=True)))
    hidden: dict[int, LexborNode] = {}  # by node address: one element may match twice
    for selector in selectors:
        hidden.update((node.mem_id, node) for node in _select(tree, selector))
    verdicts: dict[str, bool] = {}  # newsletters repeat the same few styles
    for node in tree.css(_MAYBE_HIDDEN):
        inline = node.attrs.get("style") or ""  # one attribute: cheaper than .attributes
        if inline not in verdicts:
            verdicts[inline] = _is_hidden(inline)
        if verdicts[inline]:
            hidden[node.mem_id] = node
    # the <style> elements are in hand, and so is <head> (there even when the source
    # has none; its text matters when a <frameset> leaves no body to read)
    dropped = ",".join(tag for tag in _DROP if f"<{tag}" in present and tag != "style")
    head = [tree.head] if tree.head is not None else []
    for node in [*hidden.values(), *styles, *head, *(tree.css(dropped) if dropped else ())]:
        node.decompose(recursive=False)
    return len(hidden)


def _select(tree: LexborHTMLParser, selector: str) -> list[LexborNode]:
    try:
        return tree.css(selector)
    except SelectolaxError:
        return []  # a selector lexbor cannot parse hides nothing in a mail client either


def _is_hidden(style: str) -> bool:
    compact = "".join(style.lower().split())
    if any(word in compact for word in _HIDING):
        return True
    if ("size:" in compact or "opacity:" in compact) and _ZERO.search(compact):
        return True
    return "overflow:hidden" in compact and bool(_ZERO_SIZE.search(compact))


def _hiding_selectors(css: str) -> list[str]:
    """Selectors of top-level rules that hide; rules nested in @media are skipped."""
    found: list[str] = []
    depth = 0
    start = 0
    selector = ""
    for m in re.finditer(r"[{}]", css[:200_000]):
        if m[0] == "{":
            if depth == 0:
                selector = css[start:m.start()]
            depth += 1
            start = m.end()
        else:
            depth = max(0, depth - 1)
            if depth == 0 and not selector.lstrip().startswith("@") \
                    and _is_hidden(css[start:m.start()]):
                found.extend(s.strip() for s in selector.split(",")
                             if s.strip() and ":" not in s)
            start = m.end()
    return found[:200]


def _links(tree: LexborHTMLParser,
           present: frozenset[str]) -> tuple[list[tuple[str, str]], int]:
    mismatched: list[tuple[str, str]] = []
    removed = 0
    for a in tree.css("a[href], area[href]" if "<area" in present else "a[href]"):
        target = _clean_url(a.attrs.get("href") or "")
        lowered = target.lower()
        if lowered.startswith(("http://", "https://", "ftp://")):  # most links: test first
            _web_link(a, target, lowered, mismatched)
        elif _UNSAFE_SCHEME.match(lowered):
            removed += 1
        elif lowered.startswith("mailto:"):
            address = target[7:].split("?", 1)[0]
            if address and address.lower() not in a.text(deep=True).lower():
                a.insert_after(f" <{address}>")
        # relative or in-page links have no target worth showing
    return mismatched, removed


def _web_link(a: LexborNode, target: str, lowered: str,
              mismatched: list[tuple[str, str]]) -> None:
    """Show the target after the text, unless the text is the target; note a mismatch."""
    label = " ".join(_MARKER_CHAR.sub(" ", a.text(deep=True, separator=" ")).split())
    if ("." in label and _mismatch(label, target)) or ("@" in target and _hides_host(target)):
        mismatched.append((label[:200], target[:2000]))
    if not label:
        a.insert_after(f"<{target}>")
        return
    shown = _bare(label)
    if shown not in lowered or shown != _bare(lowered):  # the first test is the cheap one
        a.insert_after(f" <{target}>")


def _clean_url(href: str) -> str:
    """The href without the controls and spaces browsers ignore in it ("jav&#x09;ascript:")."""
    return href if href.isprintable() and " " not in href else _STRIP_IN_URL.sub("", href)


def _host(text: str) -> str | None:
    """The host a link text names, if the text is a URL, `www.`-name or common domain.

    A bare "name.ext" counts only with a usual top-level domain, so that a link titled
    "report.pdf" is not taken for a host called report.pdf.
    """
    shown = text.strip().strip("<>()[]")
    m = _URLISH.fullmatch(shown)
    if m is None:
        return None
    host = m[1].lower()
    explicit = "://" in shown or host.startswith("www.")
    if not explicit and host.rsplit(".", 1)[-1] not in _COMMON_TLDS:
        return None
    return host.removeprefix("www.")


def _mismatch(label: str, target: str) -> bool:
    """The visible text is a URL or host name, and not the host the link goes to."""
    shown = _host(label)
    if shown is None:
        return False
    real = (urlsplit(target).hostname or "").lower().removeprefix("www.")
    return shown != real


def _hides_host(target: str) -> bool:
    """`https://www.city.example.lg.jp@evil.example/` goes to evil.example: always flagged."""
    netloc = target.partition("://")[2].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return "@" in netloc


def _bare(url: str) -> str:
    """A URL without scheme, `www.` and trailing slash, for "text is the target" checks."""
    rest = url.strip().lower().partition("://")
    body = rest[2] if rest[1] else rest[0]
    return body.removeprefix("www.").rstrip("/")


def _images(tree: LexborHTMLParser, cid_names: Mapping[str, str], label: str) -> None:
    for img in tree.css("img"):
        attributes = img.attributes  # a new dict on every access
        src = (attributes.get("src") or "").strip()
        alt = " ".join((attributes.get("alt") or "").split())
        if src.lower().startswith("cid:"):
            name = cid_names.get(src[4:].strip("<>"), alt)
            img.replace_with(f"[{label}: {name}]" if name else f"[{label}]")
        elif alt and not _tiny(attributes):
            img.replace_with(f"[{alt}]")
        # else a tracking pixel or decoration: it says nothing, and has no text to remove


def _tiny(attributes: Mapping[str, str | None]) -> bool:
    sizes = (attributes.get("width") or "", attributes.get("height") or "")
    return any(s.strip().rstrip("px") in ("0", "1") for s in sizes)


def _layout(tree: LexborHTMLParser, present: frozenset[str]) -> None:
    """What the source markers cannot do: keep <pre> spacing, number ordered lists."""
    for pre in tree.css("pre") if "<pre" in present else ():
        text = pre.text(deep=True, separator="")
        pre.replace_with(text.replace("\n", _BR).replace(" ", _SP))
    for ol in tree.css("ol") if "<ol" in present else ():
        number = 0
        for li in ol.iter():
            before = li.prev if li.tag == "li" else None
            if before is None or not before.is_text_node:
                continue
            text = before.text()
            if text.endswith(_LI):
                number += 1
                before.replace_with(f"{text[:-len(_LI)]}{number}. ")


def _run(markers: str) -> str:
    """What one run of adjacent markers becomes (see `_lines`)."""
    breaks = max(markers.count(_BR), 1 if _NL in markers else 0)
    if _PARA in markers:
        out = "\n\n"
    elif breaks:
        out = "\n" * breaks
    elif _CELL in markers:
        out = " | "
    else:
        out = " "
    return out + "・" if _LI in markers else out


def _lines(raw: str) -> str:
    """Collapse HTML whitespace, then turn each run of markers into breaks or a separator.

    A run with a paragraph marker is a blank line, else one line break (each <br> its
    own); a cell end inside a line is ` | `, at a line end nothing; a list item start
    adds a bullet.
    """
    text = raw.replace(_ROW, _NL)  # the source's own form feeds became spaces
    for space in _SPACES:  # str.replace and a literal-prefixed regex: C speed
        text = text.replace(space, " ")
    text = _SPACE_RUN.sub(" ", text)
    # A newsletter has thousands of marker runs but only a few distinct ones: work out
    # each distinct one once, then map the runs (every other piece of the split) in C.
    parts = _MARKER_RUN.split(text)
    runs = parts[1::2]
    output = {run: _run(run.replace(" ", "")) for run in set(runs)}
    parts[1::2] = map(output.__getitem__, runs)
    text = "".join(parts).replace(" \n", "\n").replace("\n ", "\n")
    if _QS in text or _QE in text:
        text = _quote(text)
    return _BLANK_RUNS.sub("\n\n", text.replace(_SP, " ")).strip("\n ")


def _quote(text: str) -> str:
    """Prefix the lines of each <blockquote> with ">" per level, as mail clients quote."""
    out: list[str] = []
    depth = 0
    at_line_start = True
    for piece in _QUOTE_MARK.split(text):
        if piece in (_QS, _QE):
            depth = depth + 1 if piece == _QS else max(0, depth - 1)
            continue
        quoted = piece
        if depth:
            prefix = ">" * depth + " "
            quoted = "\n".join(prefix + line if line.strip() and (i or at_line_start) else line
                               for i, line in enumerate(piece.split("\n")))
        if quoted:
            at_line_start = quoted.endswith("\n")
        out.append(quoted)
    return "".join(out)
