"""Clean-and-keep-editable, the gateway's side (issue 20, docs/cdr.md).

Two sandboxed conversions, in two children of the sandbox's workers: `cdr` rebuilds the
original without active content, `cdr_check` reads only what came back and names the
sha256 of what it passed. Trusted code here delivers a cleaned file only when the second
key passed exactly those bytes, names it from the attachment's cleaned name and the
content type it expects (`converters.registry.CLEANED_TYPES`), and turns what the first
key says it removed into fixed report tokens. Any failure raises a `ConversionError`,
whose code the caller reports when it falls back to page images.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from converters.base import Rendering
from converters.errors import (
    ConversionError,
    Corrupt,
    Encrypted,
    LimitExceeded,
    SandboxFailure,
    Unsupported,
)
from converters.limits import ConversionPolicy, LinkPolicy
from converters.names import stem
from converters.office_pool import OfficePool
from converters.registry import CLEANED_TYPES
from converters.sandbox import SandboxPool

#: What the first key may say it removed: `cdr:<kind>=<count>`, nothing else.
_REMOVED = re.compile(r"^cdr:([a-z-]{1,40})=([0-9]{1,7})$")
#: A cleaned file is never bigger than this many times its original (plus a little): a
#: rebuilt package or PDF only loses parts.
MAX_GROWTH = 4


@dataclass(frozen=True)
class Cleaned:
    rendering: Rendering
    #: (kind, count) of what was removed, e.g. ("vba-macro", 1), ("link-defanged", 3).
    removed: tuple[tuple[str, int], ...]
    #: Saved as OOXML by LibreOffice first (a legacy, RTF or OpenDocument file).
    resaved: bool = False


def clean_and_check(untrusted: bytes, clean_name: str, pool: SandboxPool,
                    policy: ConversionPolicy, links: LinkPolicy,
                    office: OfficePool | None = None) -> Cleaned:
    """The cleaned file that passed both keys, or a ConversionError saying why not. A file
    key one cannot read (.doc, .xls, .ppt, .xlsb, RTF, OpenDocument) is saved as OOXML by
    LibreOffice in its sandbox first, when `office` is given, and then cleaned."""
    policy = replace(policy, links=links)
    try:
        return _two_keys(untrusted, clean_name, pool, policy)
    except Unsupported:
        if office is None or untrusted.startswith(b"%PDF"):
            raise
    resaved = _as_ooxml(untrusted, clean_name, office, policy)
    return replace(_two_keys(resaved, clean_name, pool, policy), resaved=True)


def _as_ooxml(untrusted: bytes, clean_name: str, office: OfficePool,
              policy: ConversionPolicy) -> bytes:
    from converters.office import safe_suffix  # pulls in oletools: only when needed

    data, reply = office.convert(untrusted, safe_suffix(clean_name), policy.limits.max_pages,
                                 policy.limits.max_output_bytes, target="ooxml")
    if reply.get("ok"):
        return data
    error = reply.get("error")
    if error == "encrypted":
        raise Encrypted("office")
    if error == "unsupported":
        raise Unsupported("LibreOffice cannot save this kind of document as OOXML")
    raise Corrupt("office document could not be opened")


def _two_keys(untrusted: bytes, clean_name: str, pool: SandboxPool,
              policy: ConversionPolicy) -> Cleaned:
    first = pool.convert("cdr", untrusted, clean_name, policy)
    if len(first.outputs) != 1:
        raise SandboxFailure("the cleaner returned no single file")
    cleaned = first.outputs[0]
    extension = CLEANED_TYPES.get(cleaned.content_type)
    if extension is None:
        raise SandboxFailure("the cleaner returned an unexpected kind of file")
    if len(cleaned.data) > MAX_GROWTH * len(untrusted) + 65536:
        raise LimitExceeded("the cleaned file is larger than its original allows")
    checked = pool.convert("cdr_check", cleaned.data, f"cleaned.{extension}", policy)
    if checked.extra.get("sha256") != hashlib.sha256(cleaned.data).hexdigest():
        raise CheckMismatch("the check did not cover the bytes to deliver")
    return Cleaned(Rendering(f"{stem(clean_name)}.{extension}", cleaned.content_type,
                             cleaned.data), _removed(first.findings))


class CheckMismatch(ConversionError):
    code = "cdr_check_failed"
    message = "the cleaned file did not pass the second check"


def _removed(findings: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """The first key's list as (kind, count); anything else it said is dropped."""
    out = []
    for finding in findings[:64]:
        match = _REMOVED.match(finding)
        if match:
            out.append((match[1], int(match[2])))
    return tuple(out)
