"""A do-nothing VBA project (MS-OVBA) and the macro-enabled Word file that carries it.

The macro is named `AutoOpen` so that detectors (oletools' olevba) report an auto-run
macro, the thing a gateway must notice, while its body is a comment and nothing else.
"""

from __future__ import annotations

import io
import struct
import zipfile

from gateway.loadtest.corpus.cfb import Node, write_cfb

MODULE = "ThisDocument"
SOURCE = (
    f'Attribute VB_Name = "{MODULE}"\r\n'
    'Attribute VB_Base = "1Normal.ThisDocument"\r\n'
    "Attribute VB_GlobalNameSpace = False\r\n"
    "Attribute VB_Creatable = False\r\n"
    "Attribute VB_PredeclaredId = True\r\n"
    "Attribute VB_Exposed = True\r\n"
    "Attribute VB_TemplateDerived = True\r\n"
    "Attribute VB_Customizable = True\r\n"
    "Sub AutoOpen()\r\n"
    "    ' mugaika sample: this macro does nothing at all.\r\n"
    "End Sub\r\n"
)


def compress(data: bytes) -> bytes:
    """MS-OVBA compression with literal tokens only: valid, and simple enough to trust.

    Each 4096-byte chunk becomes flag bytes of 0 (eight literals follow). A literal-only
    chunk can exceed the 4098-byte chunk limit, so long input is written as raw chunks.
    """
    out = bytearray(b"\x01")
    for start in range(0, len(data), 4096):
        chunk = data[start:start + 4096]
        if len(chunk) == 4096:
            out += struct.pack("<H", 0x3000 | 4095) + chunk  # raw chunk, flag bit clear
            continue
        body = bytearray()
        for i in range(0, len(chunk), 8):
            body += b"\0" + chunk[i:i + 8]
        out += struct.pack("<H", 0xB000 | (len(body) + 2 - 3)) + body
    return bytes(out)


def _rec(ident: int, data: bytes = b"") -> bytes:
    return struct.pack("<HI", ident, len(data)) + data


def _dir_stream() -> bytes:
    name = MODULE.encode("ascii")
    uname = MODULE.encode("utf-16-le")
    info = (
        _rec(0x01, struct.pack("<I", 1)) + _rec(0x02, struct.pack("<I", 0x409))
        + _rec(0x14, struct.pack("<I", 0x409)) + _rec(0x03, struct.pack("<H", 1252))
        + _rec(0x04, b"Project") + _rec(0x05) + _rec(0x40) + _rec(0x06) + _rec(0x3D)
        + _rec(0x07, struct.pack("<I", 0)) + _rec(0x08, struct.pack("<I", 0))
        + struct.pack("<HIIH", 0x09, 4, 1, 0) + _rec(0x0C) + _rec(0x3C)
    )
    modules = (
        _rec(0x0F, struct.pack("<H", 1)) + _rec(0x13, struct.pack("<H", 0xFFFF))
        + _rec(0x19, name) + _rec(0x47, uname) + _rec(0x1A, name) + _rec(0x32, uname)
        + _rec(0x1C) + _rec(0x48) + _rec(0x31, struct.pack("<I", 0))
        + _rec(0x1E, struct.pack("<I", 0)) + _rec(0x2C, struct.pack("<H", 0xFFFF))
        + _rec(0x22) + _rec(0x2B)
    )
    return info + modules + _rec(0x10)


def vba_project_bin() -> bytes:
    """vbaProject.bin: PROJECT, PROJECTwm and a VBA storage with one document module."""
    project = (
        'ID="{6F0B2C55-8C3E-4C3B-9E4A-2D1A5E6B7C80}"\r\n'
        f"Document={MODULE}/&H00000000\r\n"
        'Name="Project"\r\nHelpContextID="0"\r\nVersionCompatible32="393222000"\r\n'
        "\r\n[Host Extender Info]\r\n"
        "&H00000001={3832D640-CF90-11CF-8E43-00A0C911005A};VBE;&H00000000\r\n"
    ).encode("ascii")
    vba = Node("VBA", children=[
        Node("dir", compress(_dir_stream())),
        Node("_VBA_PROJECT", b"\xcc\x61\xff\xff\x00\x00\x00"),  # version 0xFFFF: no cache
        Node(MODULE, compress(SOURCE.encode("ascii"))),
    ])
    wm = MODULE.encode("ascii") + b"\0" + MODULE.encode("utf-16-le") + b"\0\0" + b"\0\0"
    return write_cfb(Node("Root Entry", children=[vba, Node("PROJECT", project),
                                                   Node("PROJECTwm", wm)]))


def docm_with_macro(docx: bytes) -> bytes:
    """Turn a .docx into a .docm carrying `vba_project_bin()`."""
    source = zipfile.ZipFile(io.BytesIO(docx))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "[Content_Types].xml":
                data = data.replace(
                    b"application/vnd.openxmlformats-officedocument.wordprocessingml."
                    b"document.main+xml",
                    b"application/vnd.ms-word.document.macroEnabled.main+xml",
                ).replace(b"<Default ", b'<Default Extension="bin" ContentType='
                          b'"application/vnd.ms-office.vbaProject"/><Default ', 1)
            elif item.filename == "word/_rels/document.xml.rels":
                data = data.replace(b"</Relationships>", b'<Relationship Id="rIdVba1" Type='
                                    b'"http://schemas.microsoft.com/office/2006/relationships/'
                                    b'vbaProject" Target="vbaProject.bin"/></Relationships>')
            target.writestr(item, data)
        target.writestr(zipfile.ZipInfo("word/vbaProject.bin", date_time=(2025, 4, 1, 9, 0, 0)),
                        vba_project_bin())
    return out.getvalue()
