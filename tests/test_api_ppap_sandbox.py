"""The real PPAP decrypter: `converters.decrypt` under bubblewrap, on files made here.

ZIPs with ZipCrypto (as Windows and most Japanese PPAP tools make them, built with 7z)
and AES (pyzipper), an Office document encrypted with msoffcrypto, a compression bomb.
"""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import docx
import pytest
import pyzipper
from msoffcrypto.format.ooxml import OOXMLFile

from converters.errors import LimitExceeded, Unsupported
from gateway.custody.ppap import sandboxed_decrypter
from gateway.custody.quarantine import Decrypter, WrongPassword
from gateway.settings import Settings

PASSWORD = "Kz7-m2Qp"
TEXT = "令和8年度 予算案\n".encode()


@pytest.fixture(scope="module")
def decrypt(tmp_path_factory: pytest.TempPathFactory) -> Decrypter:
    settings = Settings(data_dir=tmp_path_factory.mktemp("var"),
                        archive_max_total_bytes=4 * 1024 * 1024)
    return sandboxed_decrypter(settings, sandboxed=True)


def _zipcrypto(tmp_path: Path) -> bytes:
    (tmp_path / "yosan.txt").write_bytes(TEXT)
    out = tmp_path / "yosan.zip"
    subprocess.run(["7z", "a", "-tzip", f"-p{PASSWORD}", "-mem=ZipCrypto", str(out),
                    str(tmp_path / "yosan.txt")], check=True, capture_output=True, timeout=60)
    return out.read_bytes()


def _aes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(PASSWORD.encode())
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _members(plain: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(plain)) as zf:
        assert not any(i.flag_bits & 0x1 for i in zf.infolist())
        return {name: zf.read(name) for name in zf.namelist()}


def test_zipcrypto_opens_with_the_right_password(decrypt: Decrypter, tmp_path: Path) -> None:
    data = _zipcrypto(tmp_path)
    assert _members(decrypt(data, "yosan.zip", PASSWORD)) == {"yosan.txt": TEXT}
    with pytest.raises(WrongPassword):
        decrypt(data, "yosan.zip", "guess")


def test_aes_zip_opens_with_the_right_password(decrypt: Decrypter) -> None:
    data = _aes({"a/yosan.txt": TEXT, "b.csv": b"1,2\n"})
    assert _members(decrypt(data, "x.zip", PASSWORD)) == {"a/yosan.txt": TEXT, "b.csv": b"1,2\n"}
    with pytest.raises(WrongPassword):
        decrypt(data, "x.zip", PASSWORD + "x")


def test_encrypted_docx_opens(decrypt: Decrypter, tmp_path: Path) -> None:
    document = docx.Document()
    document.add_paragraph("予算案")
    plain_path = tmp_path / "plain.docx"
    document.save(str(plain_path))
    encrypted = io.BytesIO()
    with open(plain_path, "rb") as fh:
        OOXMLFile(fh).encrypt(PASSWORD, encrypted)
    result = decrypt(encrypted.getvalue(), "yosan.docx", PASSWORD)
    assert result.startswith(b"PK\x03\x04")
    assert "予算案" in "\n".join(p.text for p in docx.Document(io.BytesIO(result)).paragraphs)
    with pytest.raises(WrongPassword):
        decrypt(encrypted.getvalue(), "yosan.docx", "nope")


def test_bomb_behind_a_password_is_stopped(decrypt: Decrypter) -> None:
    """Declared sizes over the archive limit (4 MiB here) fail closed inside the sandbox."""
    data = _aes({"zeros.bin": bytes(8 * 1024 * 1024)})
    with pytest.raises(LimitExceeded):
        decrypt(data, "z.zip", PASSWORD)


def test_other_files_are_refused(decrypt: Decrypter) -> None:
    with pytest.raises(Unsupported):
        decrypt(b"%PDF-1.7\n", "a.pdf", PASSWORD)
