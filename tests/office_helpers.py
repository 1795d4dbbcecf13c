"""Office documents built by the tests: python-docx/openpyxl/python-pptx, plus a VBA project.

No tool on this machine writes a VBA project (LibreOffice keeps only ones it loaded), so
`vba_project_bin` writes one: a Compound File (MS-CFB, version 3, 512-byte sectors) with
the storage layout MS-OVBA 2.2.1 requires — a PROJECT stream, a VBA storage holding
_VBA_PROJECT, dir and a module stream with MS-OVBA-compressed source. Every stream is
padded to the 4096-byte mini-stream cutoff so that only the regular FAT is needed.
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


def _cfb_order(path: str) -> tuple[int, str]:
    """CFB orders siblings by name length, then upper-case name."""
    name = path.rsplit("/", 1)[-1]
    return len(name), name.upper()


def compound_file(tree: dict[str, dict[str, bytes] | bytes]) -> bytes:
    """A CFB file from {name: bytes | {name: bytes}} (one level of storages is enough here)."""
    entries: list[tuple[str, int, list[str], bytes]] = [("Root Entry", 5, [], b"")]
    index: dict[str, int] = {}

    def add(path: str, value: dict[str, bytes] | bytes) -> None:
        index[path] = len(entries)
        if isinstance(value, dict):
            entries.append((path.rsplit("/", 1)[-1], 1, [f"{path}/{k}" for k in value], b""))
            for key, sub in value.items():
                add(f"{path}/{key}", sub)
        else:
            entries.append((path.rsplit("/", 1)[-1], 2, [], value.ljust(MINI_CUTOFF, b"\0")))

    for key, value in tree.items():
        add(key, value)
    children = {0: list(tree)} | {index[p]: kids for p, (_, _, kids, _) in
                                  zip(index, [entries[i] for i in index.values()], strict=True)}
    data = bytearray()
    starts: dict[int, tuple[int, int]] = {}
    for i, (_, kind, _, blob) in enumerate(entries):
        if kind == 2:
            starts[i] = (len(data) // SECTOR, len(blob))
            data += blob.ljust(-(-len(blob) // SECTOR) * SECTOR, b"\0")
    right: dict[int, int] = {}
    first_child: dict[int, int] = {}
    for parent, kids in children.items():
        # Siblings as a right-leaning chain in CFB order: a valid (if unbalanced) tree.
        chain = [index[k] for k in sorted(kids, key=_cfb_order)]
        if chain:
            first_child[parent] = chain[0]
        for a, b in itertools.pairwise(chain):
            right[a] = b
    directory = b"".join(
        _entry(name, kind, first_child.get(i, NOSTREAM), right.get(i, NOSTREAM),
               starts.get(i, (END, 0))[0], starts.get(i, (END, 0))[1])
        for i, (name, kind, _, _) in enumerate(entries))
    directory = directory.ljust(-(-len(directory) // SECTOR) * SECTOR, b"\0")
    data_sectors = len(data) // SECTOR
    dir_sectors = len(directory) // SECTOR
    fat_sectors = 1
    while (data_sectors + dir_sectors + fat_sectors) > fat_sectors * 128:
        fat_sectors += 1
    fat = []
    for i, (_, kind, _, blob) in enumerate(entries):
        if kind == 2:
            first, _ = starts[i]
            n = -(-len(blob) // SECTOR)
            fat += [first + k + 1 for k in range(n - 1)] + [END]
    dir_start = data_sectors
    fat += [dir_start + k + 1 for k in range(dir_sectors - 1)] + [END]
    fat += [FATSECT] * fat_sectors
    fat += [FREE] * (fat_sectors * 128 - len(fat))
    fat_start = dir_start + dir_sectors
    difat = [fat_start + k for k in range(fat_sectors)] + [FREE] * (109 - fat_sectors)
    header = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(16)
              + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6) + bytes(6)
              + struct.pack("<IIIIIIIII", 0, fat_sectors, dir_start, 0, MINI_CUTOFF,
                            END, 0, END, 0)
              + struct.pack("<109I", *difat))
    return header + bytes(data) + directory + struct.pack(f"<{len(fat)}I", *fat)


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
