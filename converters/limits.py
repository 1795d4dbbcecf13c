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


@dataclass(frozen=True)
class ConversionPolicy:
    """What the operator chose for renderings; the converters read nothing else."""

    limits: Limits = Limits()
    dpi: int = 150
    pdf_output: Literal["pdf", "png", "jpeg"] = "pdf"
    extract_text: bool = True
    gif_first_frame: bool = True
