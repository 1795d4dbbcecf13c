"""Files the converter tests build themselves, and hostile converters for the sandbox tests.

The hostile converter is registered only in test registries (`hostile_registry`); the
sandboxed worker imports it by name like any real converter. Heavy imports (reportlab)
happen inside the builders so the worker that imports this module stays light.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import struct
import time
import zlib
from email.message import EmailMessage

from converters.base import Conversion, Converter, Member, Rendering
from converters.limits import ConversionPolicy
from converters.names import clean_name, stem
from converters.package import package
from converters.registry import CONVERTERS, Registration, Registry
from tests.containment_helpers import ATTACKS

IPAEX_GOTHIC = "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf"
#: Text the hostile converter recognises (libmagic calls it text/plain).
HOSTILE_TYPE = "text/plain"


def render(converter: Converter, untrusted: bytes, filename: str, policy: ConversionPolicy
           ) -> Conversion:
    """A conversion as the gateway delivers it: its images encoded into files by trusted
    code (`converters.package`), next to its text."""
    conv = converter.convert(untrusted, filename, policy)
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]  # a member's path: its own name
    files = package(conv, stem(clean_name(name)), policy)
    return dataclasses.replace(conv, outputs=files, images=())


class Hostile:
    """Misbehaves as its input asks: `sleep`, `spin`, `alloc`, `crash`, `big N` (N bytes of
    output), `connect PORT`, `read PATH`, `write PATH`, `nest` (a container holding itself), the
    escapes of `tests.containment_helpers.ATTACKS`; anything else: a harmless `ok.txt`."""

    name = "hostile"

    def convert(self, untrusted: bytes, filename: str, policy: ConversionPolicy) -> Conversion:
        verb, _, arg = untrusted.decode().strip().partition(" ")
        if verb in ATTACKS:  # a hijacked converter trying to escape (containment tests)
            return ATTACKS[verb](arg)
        if verb == "sleep":
            while True:
                time.sleep(1)
        if verb == "spin":
            while True:
                pass
        if verb == "alloc":
            hoard = []
            while True:
                hoard.append(bytearray(16 * 1024 * 1024))
        if verb == "connect":
            with socket.create_connection(("127.0.0.1", int(arg)), timeout=3) as conn:
                conn.sendall(b"leaked")
            return Conversion(outputs=(Rendering("leaked.txt", "text/plain", b"connected"),))
        if verb == "socket":  # report the errno socket() gives for each family
            results = []
            for family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
                try:
                    socket.socket(family, socket.SOCK_STREAM).close()
                    results.append("ok")
                except OSError as exc:
                    results.append(str(exc.errno))
            return Conversion(outputs=(Rendering("socket.txt", "text/plain",
                                                 " ".join(results).encode()),))
        if verb == "ptrace":  # PTRACE_TRACEME through libc
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            result = libc.ptrace(0, 0, None, None)
            text = f"{result} {ctypes.get_errno()}".encode()
            return Conversion(outputs=(Rendering("ptrace.txt", "text/plain", text),))
        if verb == "killserver":  # a compromised child turning on its fork server
            os.kill(os.getppid(), 9)
            time.sleep(5)
        if verb == "crash":
            os.abort()
        if verb == "big":
            return Conversion(outputs=(Rendering("big.txt", "text/plain", b"x" * int(arg)),))
        if verb == "nest":  # a container: a CSV, an executable, and itself again
            return Conversion(members=(
                Member("dir/inner.csv", b"=1+1,2\n"),
                Member("dir/tool.exe", pe_bytes()),
                Member("deeper/again.txt", b"nest"),
            ), notes=("3 members",))
        if verb == "read":
            with open(arg, "rb") as src:
                return Conversion(outputs=(Rendering("read.txt", "text/plain", src.read()),))
        if verb == "write":
            with open(arg, "wb") as out:
                out.write(b"escaped")
            return Conversion(outputs=(Rendering("wrote.txt", "text/plain", b"wrote"),))
        return Conversion(outputs=(Rendering("ok.txt", "text/plain", b"ok"),))


def hostile_registry() -> Registry:
    """Production converters, except that text/plain goes to `Hostile`."""
    hostile = Registration("hostile", "tests.convert_helpers:Hostile", (HOSTILE_TYPE,))
    return Registry((hostile, *CONVERTERS))


# --- PDFs -------------------------------------------------------------------------------

def japanese_pdf(pages: int = 3, big_line: str = "無害化") -> bytes:
    """A multi-page A4 PDF with Japanese text in an embedded IPAex Gothic subset."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(TTFont("IPAexG", IPAEX_GOTHIC))
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    for page in range(1, pages + 1):
        pdf.setFont("IPAexG", 72)
        pdf.drawString(72, 700, big_line)  # three 1-inch glyphs from x=1in, baseline y=700pt
        pdf.setFont("IPAexG", 14)
        for line in range(20):
            pdf.drawString(72, 600 - line * 22, f"第{page}頁 市役所からのお知らせ 行{line}")
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def raw_pdf(objects: list[bytes], root: int = 1) -> bytes:
    """A hand-written PDF from object bodies (1-based), with a correct xref table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
              % (len(objects) + 1, root, xref))
    return out.getvalue()


def pdf_with_javascript() -> bytes:
    """One page, an OpenAction running JavaScript (`app.alert`), and a page /AA."""
    text = b"BT /F1 24 Tf 72 720 Td (Hello) Tj ET"
    return raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R /OpenAction 4 0 R /Names << /JavaScript 5 0 R >> >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 6 0 R "
        b"/Resources << /Font << /F1 7 0 R >> >> /AA << /O 4 0 R >> >>",
        b"<< /Type /Action /S /JavaScript /JS (app.alert\\('hi'\\);) >>",
        b"<< /Names [(x) 4 0 R] >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ])


def encrypted_pdf() -> bytes:
    """A PDF that needs a user password to open."""
    from reportlab.lib.pdfencrypt import StandardEncryption
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, encrypt=StandardEncryption("secret", ownerPassword="owner"))
    pdf.drawString(72, 720, "confidential")
    pdf.showPage()
    pdf.save()
    return buf.getvalue()


def corrupt_pdf() -> bytes:
    return b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\n" + bytes(range(256)) * 8


def huge_page_pdf() -> bytes:
    """One 200 x 200 inch page (the PDF maximum): 900 MP at 150 DPI."""
    return raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 14400] >>",
    ])


# --- other files ------------------------------------------------------------------------

def pe_bytes() -> bytes:
    """A minimal PE header: MZ stub pointing at a PE signature. Harmless, never runnable."""
    stub = bytearray(128)
    stub[0:2] = b"MZ"
    stub[0x3C:0x40] = struct.pack("<I", 64)
    stub[64:68] = b"PE\0\0"
    stub[68:70] = struct.pack("<H", 0x14C)
    return bytes(stub)


def pixel_flood_png(side: int = 60_000) -> bytes:
    """A tiny PNG that declares side x side pixels (3.6 GP for the default)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def photo_jpeg(width: int = 640, height: int = 480, exif: bool = True) -> bytes:
    """A noisy colour JPEG (photographic) with EXIF GPS and a comment when asked."""
    from PIL import Image

    img = Image.effect_noise((width, height), 60).convert("RGB")
    img = Image.merge("RGB", (img.getchannel(0), img.getchannel(0).rotate(90, expand=False),
                              img.getchannel(0).transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    out = io.BytesIO()
    if exif:
        meta = Image.Exif()
        meta[0x010F] = "SecretCam"  # Make
        meta[0x8825] = {1: "N", 2: (35.0, 41.0, 22.0)}  # GPS IFD
        img.save(out, "JPEG", quality=90, exif=meta.tobytes(), comment=b"secret comment")
    else:
        img.save(out, "JPEG", quality=90)
    return out.getvalue()


def animated_gif(frames: int = 5) -> bytes:
    from PIL import Image

    images = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def mail(attachments: list[tuple[str, str, bytes]], body: str = "本文です。") -> bytes:
    """A multipart mail with a Japanese text body and the given (name, type, data) parts."""
    msg = EmailMessage()
    msg["From"] = "sender@example.com"
    msg["To"] = "staff@example.lg.jp"
    msg["Subject"] = "添付ファイルのテスト"
    msg.set_content(body)
    for name, content_type, data in attachments:
        maintype, _, subtype = content_type.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()
