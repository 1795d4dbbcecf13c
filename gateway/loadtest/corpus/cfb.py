"""A minimal Compound File Binary (OLE2) writer: enough for a vbaProject.bin.

Version 3 files, 512-byte sectors, every stream below the 4096-byte cutoff kept in the
mini stream, as MS-CFB requires. Siblings are linked as a right-leaning chain in the
spec's order (name length, then upper-case name), which is a valid (if unbalanced)
search tree; readers walk it like any other.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

SECTOR = 512
MINI = 64
FREE, END, FATSECT, NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF


@dataclass
class Node:
    """A storage (children) or a stream (data)."""

    name: str
    data: bytes | None = None
    children: list[Node] = field(default_factory=list)


def _key(node: Node) -> tuple[int, str]:
    return (len(node.name), node.name.upper())


def _flatten(root: Node) -> list[Node]:
    order = [root]
    for node in order:  # breadth-first; the list grows while we walk it
        order.extend(sorted(node.children, key=_key))
    return order


def _chain(start: int, count: int) -> list[int]:
    return [start + i + 1 if i + 1 < count else END for i in range(count)]


def _dir_entry(node: Node, kind: int, links: tuple[int, int, int], start: int,
               size: int) -> bytes:
    """A 128-byte directory entry; `links` are the left, right and child entry ids."""
    name = node.name.encode("utf-16-le") + b"\0\0"
    return struct.pack("<64sHBBIII16sIQQIQ", name, len(name), kind, 1, *links,
                       b"\0" * 16, 0, 0, 0, start, size)


def _mini_stream(nodes: list[Node]) -> tuple[bytes, list[int], dict[int, int]]:
    """Every stream packed into 64-byte mini sectors: the bytes, the mini FAT, the starts."""
    mini = bytearray()
    minifat: list[int] = []
    starts: dict[int, int] = {}
    for node in nodes:
        if node.data is None:
            continue
        count = max(1, -(-len(node.data) // MINI))
        starts[id(node)] = len(minifat)
        minifat += _chain(len(minifat), count)
        mini += node.data.ljust(count * MINI, b"\0")
    return bytes(mini), minifat, starts


def _directory(nodes: list[Node], starts: dict[int, int], mini_start: int,
               mini_size: int) -> bytes:
    """The directory entries, padded with unused entries to whole sectors."""
    index = {id(n): i for i, n in enumerate(nodes)}
    right_of: dict[int, int] = {}
    for parent in nodes:
        for smaller, larger in itertools.pairwise(sorted(parent.children, key=_key)):
            right_of[id(smaller)] = index[id(larger)]
    directory = bytearray()
    for number, node in enumerate(nodes):
        kids = sorted(node.children, key=_key)
        child = index[id(kids[0])] if kids else NOSTREAM
        right = right_of.get(id(node), NOSTREAM)
        if number == 0:  # the root entry owns the mini stream
            directory += _dir_entry(node, 5, (NOSTREAM, NOSTREAM, child), mini_start, mini_size)
        elif node.data is None:
            directory += _dir_entry(node, 1, (NOSTREAM, right, child), 0, 0)
        else:
            directory += _dir_entry(node, 2, (NOSTREAM, right, NOSTREAM), starts[id(node)],
                                    len(node.data))
    while len(directory) % SECTOR:  # unused entries: empty name, no links
        directory += bytes(68) + struct.pack("<III", NOSTREAM, NOSTREAM, NOSTREAM) + bytes(48)
    return bytes(directory)


def write_cfb(root: Node) -> bytes:
    """Serialize the tree under `root` (the root storage) into CFB bytes.

    Sector layout: FAT, directory, mini FAT, then the mini stream's container sectors.
    """
    nodes = _flatten(root)
    mini, minifat, starts = _mini_stream(nodes)
    dir_sectors = -(-len(nodes) * 128 // SECTOR)
    minifat_sectors = max(1, -(-len(minifat) * 4 // SECTOR))
    mini_sectors = -(-len(mini) // SECTOR)
    fat_sectors = 1
    while fat_sectors * SECTOR // 4 < dir_sectors + minifat_sectors + mini_sectors + fat_sectors:
        fat_sectors += 1
    first_dir = fat_sectors
    first_minifat = first_dir + dir_sectors
    first_mini = first_minifat + minifat_sectors
    fat = [FATSECT] * fat_sectors + _chain(first_dir, dir_sectors)
    fat += _chain(first_minifat, minifat_sectors) + _chain(first_mini, mini_sectors)
    fat += [FREE] * (fat_sectors * SECTOR // 4 - len(fat))
    header = struct.pack(
        "<8s16sHHHHH6sIIIIIIIII", bytes.fromhex("D0CF11E0A1B11AE1"), b"\0" * 16, 0x3E, 3,
        0xFFFE, 9, 6, b"\0" * 6, 0, fat_sectors, first_dir, 0, 0x1000, first_minifat,
        minifat_sectors, END, 0,
    ) + struct.pack("<109I", *range(fat_sectors), *[FREE] * (109 - fat_sectors))
    minifat_bytes = struct.pack(f"<{len(minifat)}I", *minifat)
    return (header + struct.pack(f"<{len(fat)}I", *fat)
            + _directory(nodes, starts, first_mini if mini else END, len(mini))
            + minifat_bytes.ljust(minifat_sectors * SECTOR, b"\xff")
            + mini.ljust(mini_sectors * SECTOR, b"\0"))
