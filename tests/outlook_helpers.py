"""Outlook files built by the tests: TNEF per MS-OXTNEF, .msg per MS-OXMSG.

Nothing on this machine writes either format, so they are assembled here from the
specifications: TNEF as a signature, a key and level/id/type/length/data/checksum
attributes; .msg as a Compound File (tests.office_helpers.compound_file) with property
streams named __substg1.0_<tag>, fixed-size properties in __properties_version1.0, and
one storage per recipient and attachment.
"""

from __future__ import annotations

import struct

from tests.office_helpers import compound_file

TNEF_SIGNATURE = 0x223E9F78
LVL_MESSAGE, LVL_ATTACHMENT = 1, 2


def tnef_attr(level: int, name: int, kind: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return struct.pack("<BHHI", level, name, kind, len(data)) + data + struct.pack("<H", checksum)


def build_tnef(subject: str, body: str, attachments: list[tuple[str, bytes]],
               codepage: int = 932) -> bytes:
    """A winmail.dat with a text body (in `codepage`) and attachments by title + data."""
    enc = f"cp{codepage}"
    out = struct.pack("<IH", TNEF_SIGNATURE, 0x0001)
    out += tnef_attr(LVL_MESSAGE, 0x9006, 0x0008, struct.pack("<I", 0x00010000))  # version
    out += tnef_attr(LVL_MESSAGE, 0x9007, 0x0006, struct.pack("<II", codepage, 0))  # OEM codepage
    out += tnef_attr(LVL_MESSAGE, 0x8008, 0x0007, b"IPM.Microsoft Mail.Note\x00")
    out += tnef_attr(LVL_MESSAGE, 0x8004, 0x0007, subject.encode(enc) + b"\x00")
    out += tnef_attr(LVL_MESSAGE, 0x800C, 0x0002, body.encode(enc) + b"\x00")
    for name, data in attachments:
        out += tnef_attr(LVL_ATTACHMENT, 0x9002, 0x0006, bytes(14))  # rendering: starts one
        out += tnef_attr(LVL_ATTACHMENT, 0x8010, 0x0001, name.encode(enc) + b"\x00")
        out += tnef_attr(LVL_ATTACHMENT, 0x800F, 0x0006, data)
    return out


def mapi_binary_props(prop_id: int, value: bytes) -> bytes:
    """An attMAPIProps block holding one PT_BINARY property (MS-OXTNEF 2.1.3.4)."""
    pad = b"\x00" * (-len(value) % 4)
    return struct.pack("<IHHII", 1, 0x0102, prop_id, 1, len(value)) + value + pad


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def _props(header: bytes, fixed: list[tuple[int, int]], variable: dict[int, bytes]) -> bytes:
    """__properties_version1.0: header, then 16-byte entries (tag, flags, value or size)."""
    entries = b"".join(struct.pack("<IIQ", tag, 6, value) for tag, value in fixed)
    entries += b"".join(struct.pack("<IIII", tag, 6, len(data) + (2 if tag & 0xFFFF == 0x1F
                                                                     else 0), 0)
                        for tag, data in variable.items())
    return header + entries


def _substg(variable: dict[int, bytes]) -> dict[str, bytes]:
    return {f"__substg1.0_{tag:08X}": data for tag, data in variable.items()}


def msg_tree(subject: str, body: str, sender: str, to: str,
             attachments: list[tuple[str, bytes]], embedded: dict[str, dict[str, object]],
             top_level: bool = True) -> dict[str, object]:
    """The storages and streams of an IPM.Note; `embedded` maps names to inner msg_trees."""
    top = {0x001A001F: _utf16("IPM.Note"), 0x0037001F: _utf16(subject),
           0x1000001F: _utf16(body), 0x0C1A001F: _utf16(sender),
           0x0C1F001F: _utf16(sender), 0x0065001F: _utf16(sender),
           0x0E04001F: _utf16(to)}
    count = len(attachments) + len(embedded)
    # MS-OXMSG 2.4.1: 32-byte header at top level, 24 bytes in an embedded message.
    header = struct.pack("<8sIIII", bytes(8), 1, count, 1, count)
    header += bytes(8) if top_level else b""
    tree: dict[str, object] = {
        "__properties_version1.0": _props(header, [(0x0E070003, 1)], top),
        **_substg(top),
    }
    if top_level:
        tree["__nameid_version1.0"] = {
            "__substg1.0_00020102": b"", "__substg1.0_00030102": b"",
            "__substg1.0_00040102": b"",
        }
    recip = {0x3001001F: _utf16(to), 0x3003001F: _utf16(to), 0x39FE001F: _utf16(to)}
    tree["__recip_version1.0_#00000000"] = {
        "__properties_version1.0": _props(bytes(8), [(0x0C150003, 1)], recip),
        **_substg(recip),
    }
    for n, (name, data) in enumerate(attachments):
        att = {0x3707001F: _utf16(name), 0x3704001F: _utf16(name), 0x37010102: data}
        tree[f"__attach_version1.0_#{n:08X}"] = {
            "__properties_version1.0": _props(bytes(8), [(0x37050003, 1)], att),
            **_substg(att),
        }
    for n, (name, inner) in enumerate(embedded.items(), len(attachments)):
        att = {0x3707001F: _utf16(name), 0x3001001F: _utf16(name)}
        tree[f"__attach_version1.0_#{n:08X}"] = {
            "__properties_version1.0": _props(bytes(8), [(0x37050003, 5)], att),
            **_substg(att),
            "__substg1.0_3701000D": inner,  # ATTACH_EMBEDDED_MSG
        }
    return tree


def build_msg(subject: str, body: str, sender: str, to: str,
              attachments: list[tuple[str, bytes]],
              embedded: dict[str, dict[str, object]] | None = None) -> bytes:
    """A minimal IPM.Note .msg with one recipient, attachments by value and embedded mail."""
    tree = msg_tree(subject, body, sender, to, attachments, embedded or {})
    return compound_file(tree)  # type: ignore[arg-type]
