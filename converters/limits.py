"""The numbers that bound every conversion, as one frozen value passed into the sandbox."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource caps for one conversion. Exceeding any of them fails the conversion closed."""

    wall_seconds: float = 60.0
    cpu_seconds: int = 60
    memory_bytes: int = 1024 * MiB
    file_bytes: int = 256 * MiB
    processes: int = 64
    max_pages: int = 50
    max_page_pixels: int = 40_000_000  # one rendered page; 150 DPI A0 is about 35 MP
    max_image_pixels: int = 50_000_000  # a decoded image; Pillow's bomb check is made an error
    max_output_bytes: int = 200 * MiB
    archive_max_depth: int = 3
    archive_max_members: int = 1000
    archive_max_total_bytes: int = 200 * MiB
    archive_max_ratio: int = 100


#: How OCR's report notes begin (`converters.ocr` writes them, the gateway's notice reads
#: them without importing the OCR stage and its PDF parser).
OCR_NOTE_RAN = "ocr: "
OCR_NOTE_CUT = "ocr cut short: "


@dataclass(frozen=True)
class OcrPolicy:
    """Text recognition for pages without a usable text layer (issue 20, docs/ocr.md)."""

    enabled: bool = True
    #: Also write the recognized words into the image-only PDF as invisible text.
    text_layer: bool = False
    #: Wall clock for one page; a page that takes longer keeps its image, without text.
    page_seconds: float = 20.0
    #: tesseract's models, tried in this order (horizontal and vertical Japanese, English).
    languages: str = "jpn+jpn_vert+eng"


#: What happens to links kept in a cleaned file (`MUGAIKA_LINKS`).
LinkPolicy = Literal["defang", "remove", "keep"]


@dataclass(frozen=True)
class ConversionPolicy:
    """What the operator chose for renderings; the converters read nothing else."""

    limits: Limits = Limits()
    dpi: int = 150
    pdf_output: Literal["pdf", "png", "jpeg"] = "pdf"
    extract_text: bool = True
    gif_first_frame: bool = True
    ocr: OcrPolicy = OcrPolicy()
    #: The link policy (`MUGAIKA_LINKS`) for hyperlinks kept in cleaned files (CDR).
    links: LinkPolicy = "defang"
