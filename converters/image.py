"""Images re-encoded from decoded pixels: no metadata, no trailing data, no exploits kept.

Pillow opens only the formats we expect (a file detected as PNG is not handed to some
rarely used plugin), the pixel count is checked from the header before any decoding,
and Pillow's DecompressionBombWarning is an error. The pixels are copied into a fresh
image, so EXIF (GPS position!), ICC, comments and anything appended after the image end
are gone. Orientation from EXIF is applied first, so photos stay upright.
Animated GIF/WebP: the first frame by policy (else every frame up to the page cap);
multi-page TIFF (faxes): every page up to the page cap.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from converters.base import Conversion
from converters.errors import Bomb, ConversionError, Corrupt
from converters.limits import ConversionPolicy
from converters.pixels import Pixels, from_image

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
_PHOTO_FORMATS = {"JPEG"}


def _clean_copy(frame: Image.Image) -> Image.Image:
    """The pixels alone, in a mode every encoder takes."""
    if frame.mode in {"P", "PA"}:
        frame = frame.convert("RGBA" if "transparency" in frame.info or frame.mode == "PA"
                              else "RGB")
    elif frame.mode in {"CMYK", "YCbCr", "LAB", "HSV"}:
        frame = frame.convert("RGB")
    elif frame.mode.startswith("I") or frame.mode == "F":
        frame = ImageOps.autocontrast(frame.convert("I").point(lambda v: v / 256).convert("L"))
    elif frame.mode not in {"1", "L", "LA", "RGB", "RGBA"}:
        frame = frame.convert("RGBA")
    return Image.frombytes(frame.mode, frame.size, frame.tobytes())


def _frames(img: Image.Image, policy: ConversionPolicy) -> tuple[list[int], int]:
    total = int(getattr(img, "n_frames", 1))
    if img.format in {"GIF", "WEBP"} and policy.gif_first_frame:
        return [0], total
    return list(range(min(total, policy.limits.max_pages))), total


def _decode(untrusted: bytes, policy: ConversionPolicy) -> tuple[list[Image.Image], str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(untrusted), formats=ALLOWED_FORMATS)
        width, height = img.size
        if width <= 0 or height <= 0:
            raise Corrupt("image without size")
        if width * height > policy.limits.max_image_pixels:
            raise Bomb(f"{width}x{height} pixels")
        indexes, total = _frames(img, policy)
        frames = []
        for index in indexes:
            img.seek(index)
            frame = ImageOps.exif_transpose(img) if index == 0 else img.copy()
            frames.append(_clean_copy(frame))
        return frames, str(img.format), total


class ImageConverter:
    """JPEG/PNG/GIF/BMP/TIFF/WebP to the pixels of each frame (the gateway encodes a
    fresh PNG or JPEG from them)."""

    name = "image"

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        try:
            frames, fmt, total = _decode(untrusted, policy)
            pictures = [_pixels(frame, fmt) for frame in frames]
        except ConversionError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Bomb("decompression bomb") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
                IndexError, TypeError, ZeroDivisionError) as exc:
            raise Corrupt(type(exc).__name__) from exc
        notes = []
        if total > len(pictures):
            notes.append(f"{fmt} with {total} frames: {len(pictures)} delivered")
        return Conversion(images=tuple(pictures), notes=tuple(notes), pages=len(pictures))


def _pixels(frame: Image.Image, fmt: str) -> Pixels:
    """A frame's pixels; a JPEG source is a photograph and is delivered as JPEG again."""
    return from_image(frame, picture=True, photo=fmt in _PHOTO_FORMATS)
