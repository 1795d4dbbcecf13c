"""LibreOffice's PDF of a document, rendered to pixels like any PDF.

The PDF LibreOffice wrote is as untrusted as the document it came from, so the gateway
renders it in the converter sandbox with `converters.pdf` (`OfficeConverter`'s
`renderer`). This default, for an `OfficeConverter` built without a pool (tests, the
unsandboxed development mode), renders it in-process the same way.
"""

from __future__ import annotations

from converters.base import Conversion
from converters.limits import ConversionPolicy
from converters.pdf import PdfConverter


def render_office_pdf(pdf: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
    """Pages up to `max_pages` as pixels and the text, as `converters.pdf` makes them."""
    return PdfConverter().convert(pdf, filename, policy)
