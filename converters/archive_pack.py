"""The `archive_output = "zip"` policy: an archive's renderings re-packed into one plain ZIP.

Only our own renderings go in (page images, image-only PDFs, UTF-8 text), never an original
member. Names carry the archive path ("見積/令和7年度.pdf") and are stored as UTF-8 with
the UTF-8 flag set: Windows 10/11 Explorer, macOS and Linux all read that correctly (the
CP932 names Japanese Windows writes are what we undo on the way in, not what we write).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import PurePosixPath

from converters.base import Rendering

ZIP_TYPE = "application/zip"


def unique_names(names: Sequence[str]) -> list[str]:
    """The same names, with " (2)", " (3)" added before the suffix to repeated ones."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate.lower() in seen:
            n += 1
            path = PurePosixPath(name)
            candidate = str(path.with_name(f"{path.stem} ({n}){path.suffix}"))
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def pack_renderings(archive_name: str, renderings: Sequence[Rendering]) -> Rendering:
    """One deflated ZIP of `renderings`, named after the original archive."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, rendering in zip(unique_names([r.filename for r in renderings]), renderings,
                                   strict=True):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.flag_bits |= 0x800  # UTF-8 names, also for pure-ASCII ones
            z.writestr(info, rendering.data)
    stem = PurePosixPath(archive_name.replace("\\", "/")).stem or "archive"
    return Rendering(f"{stem}.zip", ZIP_TYPE, buf.getvalue())
