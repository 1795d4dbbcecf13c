"""Archives unpack to members with their real (Japanese) names, each format by content."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import subprocess
import tarfile
import zipfile
from pathlib import Path

import py7zr
import pytest

from converters import errors
from converters.archive import ArchiveConverter, kind_of
from converters.limits import ConversionPolicy
from tests.archive_helpers import RawEntry, build_lzh, build_zip

POLICY = ConversionPolicy()
CONVERT = ArchiveConverter()


def members(data: bytes, filename: str = "a") -> dict[str, bytes]:
    return {m.path: m.data for m in CONVERT.convert(data, filename, POLICY).members}


def test_zip_with_cp932_names_without_utf8_flag_shows_the_real_japanese_names() -> None:
    """What Japanese Windows' "send to compressed folder" writes: CP932 bytes, no flag."""
    data = build_zip([
        RawEntry("見積書/令和7年度_見積書.txt".encode("cp932"), "金額".encode()),
        RawEntry("議事録.txt".encode("cp932"), b"minutes", method=8),
        # 表 and ソ end in byte 0x5C ("\"): decoding must come before separator handling.
        RawEntry("集計表/ソフト.txt".encode("cp932"), b"5c"),
    ])
    assert "表".encode("cp932")[1:] == b"\\"
    got = members(data)
    assert got == {"見積書/令和7年度_見積書.txt": "金額".encode(), "議事録.txt": b"minutes",
                   "集計表/ソフト.txt": b"5c"}


def test_zip_with_utf8_flag_and_mac_style_utf8_without_flag_both_decode() -> None:
    data = build_zip([
        RawEntry("報告.txt".encode(), b"1", flags=0x800),
        RawEntry("資料.csv".encode(), b"2"),  # macOS: UTF-8 bytes, no flag
    ])
    assert set(members(data)) == {"報告.txt", "資料.csv"}


def test_zip_names_with_traversal_become_plain_display_paths() -> None:
    data = build_zip([RawEntry(b"../../etc/passwd", b"x"), RawEntry(b"/abs\\win.txt", b"y")])
    assert set(members(data)) == {"etc/passwd", "abs/win.txt"}


def test_nested_zip_comes_back_as_a_member_that_unpacks_again() -> None:
    inner = build_zip([RawEntry("中身.txt".encode("cp932"), b"deep")])
    outer = build_zip([RawEntry(b"inner.zip", inner)])
    level1 = members(outer)
    assert list(level1) == ["inner.zip"]
    assert kind_of(level1["inner.zip"]) == "zip"
    assert members(level1["inner.zip"]) == {"中身.txt": b"deep"}


def test_7z_made_by_py7zr_unpacks(tmp_path: Path) -> None:
    path = tmp_path / "a.7z"
    with py7zr.SevenZipFile(path, "w") as z:
        z.writestr("請求書の本文".encode(), "請求書.txt")
    assert members(path.read_bytes()) == {"請求書.txt": "請求書の本文".encode()}


def test_tar_and_compressed_tars_unpack() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("フォルダ/メモ.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"memo"))
    plain = buf.getvalue()
    for data in (plain, gzip.compress(plain), bz2.compress(plain), lzma.compress(plain)):
        assert members(data) == {"フォルダ/メモ.txt": b"memo"}


def test_lone_gz_bz2_xz_files_unpack_to_the_name_without_the_suffix() -> None:
    body = "本文".encode() * 100
    assert members(gzip.compress(body), "報告.txt.gz") == {"報告.txt": body}
    assert members(bz2.compress(body), "報告.txt.bz2") == {"報告.txt": body}
    assert members(lzma.compress(body), "報告.txt.xz") == {"報告.txt": body}


def test_lzh_level0_with_cp932_name_unpacks_and_lhasa_agrees(tmp_path: Path) -> None:
    """The archive is hand-built; lhasa (a second, independent reader) must accept it too."""
    data = build_lzh([("申請書.txt".encode("cp932"), b"shinsei"), (b"b.txt", b"second"),
                      ("集計表.csv".encode("cp932"), b"0x5C trail byte")])
    assert members(data) == {"申請書.txt": b"shinsei", "b.txt": b"second",
                             "集計表.csv": b"0x5C trail byte"}
    path = tmp_path / "a.lzh"
    path.write_bytes(data)
    check = subprocess.run(["lha", "t", str(path)], capture_output=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr


def test_encrypted_zips_are_held_as_ppap(tmp_path: Path) -> None:
    import pyzipper

    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", encryption=pyzipper.WZ_AES) as z:
        z.setpassword(b"secret")
        z.writestr("見積.txt", b"x")
    with pytest.raises(errors.Encrypted) as aes:
        CONVERT.convert(buf.getvalue(), "a.zip", POLICY)
    assert aes.value.holdable and aes.value.detail == "zip-aes"

    (tmp_path / "doc.txt").write_bytes(b"secret text")
    out = tmp_path / "zc.zip"
    subprocess.run(["7z", "a", "-pPASS", "-mem=ZipCrypto", str(out), str(tmp_path / "doc.txt")],
                   check=True, capture_output=True, timeout=60)
    with pytest.raises(errors.Encrypted) as zc:
        CONVERT.convert(out.read_bytes(), "a.zip", POLICY)
    assert zc.value.detail == "zip-zipcrypto"


def test_encrypted_7z_is_held(tmp_path: Path) -> None:
    for header_encryption in (True, False):
        path = tmp_path / f"e{header_encryption}.7z"
        with py7zr.SevenZipFile(path, "w", password="secret",
                                header_encryption=header_encryption) as z:
            z.writestr(b"confidential" * 10, "a.txt")
        with pytest.raises(errors.Encrypted):
            CONVERT.convert(path.read_bytes(), "a.7z", POLICY)


def test_not_an_archive_and_damaged_archives_fail_with_a_reason() -> None:
    with pytest.raises(errors.Unsupported):
        CONVERT.convert(b"just text", "a.zip", POLICY)
    good = build_zip([RawEntry(b"a.txt", b"hello world" * 100, method=8)])
    with pytest.raises(errors.Corrupt):
        CONVERT.convert(good[:40] + b"\xff" * 20 + good[60:], "a.zip", POLICY)
    with pytest.raises(errors.Corrupt):
        CONVERT.convert(gzip.compress(b"x" * 1000)[:-12], "a.gz", POLICY)


def test_zipfile_written_archives_round_trip() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("dir/", b"")
        z.writestr("dir/表.csv", b"a,b\n")
    conv = CONVERT.convert(buf.getvalue(), "a.zip", POLICY)
    assert {m.path for m in conv.members} == {"dir/表.csv"}
    assert conv.notes[0] == "archive: zip, 1 files"


def test_renderings_repacked_into_one_zip_keep_japanese_paths_and_unique_names() -> None:
    from converters.archive_pack import pack_renderings
    from converters.base import Rendering

    packed = pack_renderings("資料一式.zip", [
        Rendering("見積/令和7年度.pdf", "application/pdf", b"%PDF-a"),
        Rendering("見積/令和7年度.pdf", "application/pdf", b"%PDF-b"),
        Rendering("議事録.txt", "text/plain", "本文".encode()),
    ])
    assert packed.filename == "資料一式.zip" and packed.content_type == "application/zip"
    # Our own reader (which would expose a missing UTF-8 flag as mojibake) reads it back.
    assert members(packed.data) == {"見積/令和7年度.pdf": b"%PDF-a",
                                    "見積/令和7年度 (2).pdf": b"%PDF-b",
                                    "議事録.txt": "本文".encode()}
    with zipfile.ZipFile(io.BytesIO(packed.data)) as z:
        assert all(i.flag_bits & 0x800 for i in z.infolist())
