"""Containment of the PPAP decrypter, tested as an attacker would: assume the encrypted
file took it over.

The hostile decrypters below run exactly where `converters.decrypt` runs (the same
sandbox, environment, descriptors and process group; only the program after the
interpreter differs). Each test asserts the attack failed and that the next attempt,
with the real decrypter, opens a PPAP ZIP.
"""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile
from collections.abc import Callable

import pytest
import pyzipper

from converters.errors import LimitExceeded
from gateway.custody.ppap import output_bound, sandboxed_decrypter
from gateway.custody.quarantine import Decrypter
from gateway.settings import Settings
from tests.containment_helpers import marked_processes

PASSWORD = "Kz7-m2Qp"
TEXT = "令和8年度 予算案\n".encode()
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("var"), archive_max_total_bytes=MiB,
                    converter_timeout_seconds=20)


@pytest.fixture(scope="module")
def decrypt(settings: Settings) -> Decrypter:
    return sandboxed_decrypter(settings, sandboxed=True)


Hostile = Callable[[str], Decrypter]


@pytest.fixture
def hostile(settings: Settings) -> Hostile:
    """A decrypter whose program is `code`, in the real decrypter's sandbox."""
    return lambda code: sandboxed_decrypter(settings, sandboxed=True, program=("-c", code))


def _ppap() -> bytes:
    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED,
                             encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(PASSWORD.encode())
        zf.writestr("yosan.txt", TEXT)
    return buf.getvalue()


def _next_attempt_works(decrypt: Decrypter) -> None:
    with zipfile.ZipFile(io.BytesIO(decrypt(_ppap(), "yosan.zip", PASSWORD))) as plain:
        assert plain.read("yosan.txt") == TEXT


def test_output_beyond_the_bound_is_refused(settings: Settings, hostile: Hostile,
                                            decrypt: Decrypter) -> None:
    data = os.urandom(2 * MiB)  # more than a pipe holds: the writers below never read it
    bound = output_bound(settings, len(data))
    write = "import os, sys\nos.write(1, b'x' * {})\n"
    # Control: exactly the bound is a decrypted file like any other.
    assert len(hostile(write.format(bound))(data, "a.zip", PASSWORD)) == bound
    with pytest.raises(LimitExceeded):
        hostile(write.format(bound + 1))(data, "a.zip", PASSWORD)
    started = time.monotonic()
    with pytest.raises(LimitExceeded):  # refused at the bound, not at the timeout
        hostile("import os\nwhile True: os.write(1, b'x' * 65536)")(data, "a.zip", PASSWORD)
    assert time.monotonic() - started < settings.converter_timeout_seconds / 2
    _next_attempt_works(decrypt)


def test_nothing_it_started_survives_it(hostile: Hostile, decrypt: Decrypter) -> None:
    marker = f"mugaika-ppap-{os.getpid()}-{time.monotonic_ns()}"
    code = f"""
import subprocess, sys, time
sleeper = ["python3", "-c", "import time; time.sleep(600)", "{marker}"]
quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
subprocess.Popen(sleeper, start_new_session=True, **quiet)  # detached
subprocess.Popen(["sh", "-c", '"$@" &', "sh", *sleeper], **quiet)  # orphaned
time.sleep(1)  # long enough for the test to see them
sys.stdout.write("done")
"""
    seen: list[int] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            seen.extend(marked_processes(marker))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert hostile(code)(b"x", "a.zip", PASSWORD) == b"done"
    finally:
        watching.set()
        watcher.join()
    assert len(set(seen)) == 2  # control: both ran while it did
    assert marked_processes(marker) == []
    _next_attempt_works(decrypt)


def test_only_its_pipes_and_the_filter(hostile: Hostile, decrypt: Decrypter) -> None:
    code = """
import errno, os, socket, sys
links = [f"/proc/self/fd/{fd}" for fd in range(1024)]
names = [f"{link.rsplit('/', 1)[1]}={os.readlink(link).split(':')[0]}"
         for link in links if os.path.exists(link)]
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    net = "opened"
except OSError as exc:
    net = errno.errorcode[exc.errno]
sys.stdout.write(" ".join([*names, net]))
"""
    # 0 and 1 are the pipes to the gateway, 2 is /dev/null, and the filter refuses AF_INET.
    assert hostile(code)(b"x", "a.zip", PASSWORD) == b"0=pipe 1=pipe 2=/dev/null EAFNOSUPPORT"
    _next_attempt_works(decrypt)
