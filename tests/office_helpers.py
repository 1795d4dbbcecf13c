"""Office documents built by the tests: python-docx/openpyxl/python-pptx, plus a VBA project.

No tool on this machine writes a VBA project (LibreOffice keeps only ones it loaded), so
`vba_project_bin` writes one: a Compound File (MS-CFB, version 3, 512-byte sectors) with
the storage layout MS-OVBA 2.2.1 requires — a PROJECT stream, a VBA storage holding
_VBA_PROJECT, dir and a module stream with MS-OVBA-compressed source. Every stream is
stored at its true size (small ones in the mini stream), so `compound_file` also builds
the Outlook .msg files of the outlook tests.
"""

from __future__ import annotations

import io
import itertools
import struct
import zipfile

import docx

SECTOR = 512
FREE, END, FATSECT, NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
MINI_CUTOFF = 4096


def ovba_compress(data: bytes) -> bytes:
    """MS-OVBA 2.4.1 container with literal-only compressed chunks (valid, not small)."""
    out = bytearray(b"\x01")
    for start in range(0, len(data), 3640):  # 3640 literals fit one 4098-byte chunk
        chunk = data[start:start + 3640]
        body = bytearray()
        for i in range(0, len(chunk), 8):
            body += b"\x00" + chunk[i:i + 8]  # flag byte 0: eight literal tokens
        header = 0x8000 | 0x3000 | (len(body) + 2 - 3)
        out += struct.pack("<H", header) + body
    return bytes(out)


def _entry(name: str, kind: int, child: int, right: int, start: int, size: int) -> bytes:
    encoded = (name + "\0").encode("utf-16-le")
    return (encoded.ljust(64, b"\0") + struct.pack("<HBB", len(encoded), kind, 1)
            + struct.pack("<III", NOSTREAM, right, child) + bytes(16 + 4 + 16)
            + struct.pack("<IQ", start, size))


def _cfb_order(name: str) -> tuple[int, str]:
    """CFB orders siblings by name length, then upper-case name."""
    return len(name), name.upper()


Tree = dict[str, "Tree | bytes"]


class _Sectors:
    """Sector allocator: appends padded data and records its FAT chain."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray()
        self.fat: list[int] = []

    def add(self, blob: bytes, marker: int | None = None) -> int:
        start = len(self.fat)
        count = max(1, -(-len(blob) // self.size))
        self.data += blob.ljust(count * self.size, b"\0")
        if marker is not None:
            self.fat += [marker] * count
        else:
            self.fat += [start + k + 1 for k in range(count - 1)] + [END]
        return start


def compound_file(tree: Tree) -> bytes:
    """A CFB file from nested {name: bytes | {...}}; small streams live in the mini stream."""
    names: list[str] = ["Root Entry"]
    kinds: list[int] = [5]
    blobs: list[bytes] = [b""]
    kids: dict[int, list[int]] = {0: []}

    def add(parent: int, key: str, value: Tree | bytes) -> None:
        index = len(names)
        names.append(key)
        kids[parent].append(index)
        if isinstance(value, dict):
            kinds.append(1)
            blobs.append(b"")
            kids[index] = []
            for k, v in value.items():
                add(index, k, v)
        else:
            kinds.append(2)
            blobs.append(value)

    for key, value in tree.items():
        add(0, key, value)
    regular, mini = _Sectors(SECTOR), _Sectors(64)
    place: dict[int, tuple[int, int]] = {}
    for i, blob in enumerate(blobs):
        if kinds[i] == 2 and blob:
            store = mini if len(blob) < MINI_CUTOFF else regular
            place[i] = (store.add(blob), len(blob))
        elif kinds[i] == 2:
            place[i] = (END, 0)
    if mini.data:
        place[0] = (regular.add(bytes(mini.data)), len(mini.data))
        minifat_start = regular.add(struct.pack(f"<{len(mini.fat)}I", *mini.fat))
        minifat_count = len(regular.fat) - minifat_start
    else:
        place[0] = (END, 0)
        minifat_start, minifat_count = END, 0
    right: dict[int, int] = {}
    child: dict[int, int] = {}
    for parent, members in kids.items():
        # Siblings as a right-leaning chain in CFB order: a valid (if unbalanced) tree.
        chain = sorted(members, key=lambda i: _cfb_order(names[i]))
        if chain:
            child[parent] = chain[0]
        for a, b in itertools.pairwise(chain):
            right[a] = b
    directory = b"".join(
        _entry(names[i], kinds[i], child.get(i, NOSTREAM), right.get(i, NOSTREAM),
               *place.get(i, (0, 0)))
        for i in range(len(names)))
    dir_start = regular.add(directory)
    fat_count = 1
    while len(regular.fat) + fat_count > fat_count * (SECTOR // 4):
        fat_count += 1
    fat_start = regular.add(bytes(fat_count * SECTOR), marker=FATSECT)
    fat = regular.fat + [FREE] * (fat_count * (SECTOR // 4) - len(regular.fat))
    fat_bytes = struct.pack(f"<{len(fat)}I", *fat)
    body = bytearray(regular.data)
    body[fat_start * SECTOR:(fat_start + fat_count) * SECTOR] = fat_bytes
    difat = [fat_start + k for k in range(fat_count)] + [FREE] * (109 - fat_count)
    header = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(16)
              + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6) + bytes(6)
              + struct.pack("<IIIIIIIII", 0, fat_count, dir_start, 0, MINI_CUTOFF,
                            minifat_start, minifat_count, END, 0)
              + struct.pack("<109I", *difat))
    return header + bytes(body)


def vba_project_bin(source: str = 'Sub AutoOpen()\r\n  MsgBox "macro ran"\r\nEnd Sub\r\n') -> bytes:
    project = (b'ID="{00000000-0000-0000-0000-000000000000}"\r\n'
               b"Document=ThisDocument/&H00000000\r\nModule=Module1\r\nName=\"Project\"\r\n")
    vba_project = struct.pack("<HHB", 0x61CC, 0xFFFF, 0x00) + b"\x00\x00"
    module = ovba_compress(b'Attribute VB_Name = "Module1"\r\n' + source.encode("cp1252"))
    dir_stream = ovba_compress(struct.pack("<HII", 0x0001, 4, 1))  # PROJECTSYSKIND: Win32
    return compound_file({
        "PROJECT": project,
        "VBA": {"_VBA_PROJECT": vba_project, "dir": dir_stream, "Module1": module},
    })


def japanese_docx(text: str = "令和7年度 予算要求書。日本語の文書が正しく表示されること") -> bytes:
    document = docx.Document()
    document.add_heading("お知らせ", level=1)
    document.add_paragraph(text)
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def docm_with_vba() -> bytes:
    """A Word macro-enabled document: the docx parts, a vbaProject.bin and its relations."""
    source = zipfile.ZipFile(io.BytesIO(japanese_docx("マクロ付き文書")))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "[Content_Types].xml":
                data = data.replace(
                    b"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml",
                    b"application/vnd.ms-word.document.macroEnabled.main+xml",
                ).replace(b"</Types>", b'<Default Extension="bin" '
                          b'ContentType="application/vnd.ms-office.vbaProject"/></Types>')
            elif item.filename == "word/_rels/document.xml.rels":
                data = data.replace(b"</Relationships>", b'<Relationship Id="rIdVba" '
                                    b'Type="http://schemas.microsoft.com/office/2006/relationships/'
                                    b'vbaProject" Target="vbaProject.bin"/></Relationships>')
            z.writestr(item, data)
        z.writestr("word/vbaProject.bin", vba_project_bin())
    return out.getvalue()
