"""What a hijacked converter would try, as verbs of the tests' hostile converter.

`tests.convert_helpers.Hostile` runs these inside the real sandbox when its input is
`<verb> [arg]`. Each either attempts an escape and reports what it saw (as text, which
the test reads back), or answers with something forged that the gateway must refuse.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from converters.base import Conversion, Rendering
from converters.pixels import Pixels

CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x00020000, 17
SYS_CLONE, SYS_CLONE3 = 56, 435  # x86-64
PROJECT = str(Path(__file__).resolve().parent.parent)
#: Where a conversion could leave something for the next one.
PLANT_SPOTS = ("/tmp", "/dev/shm")


def marked_processes(marker: str) -> list[int]:
    """Host pids of live processes whose argv carries `marker` (for tests outside a
    sandbox: did a sandbox leave something running?)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in argv and state != "Z":
            found.append(int(entry))
    return found


def _text(text: str) -> Conversion:
    return Conversion(outputs=(Rendering("report.txt", "text/plain", text.encode()),))


def fds(_: str) -> Conversion:
    """Every descriptor this conversion holds beyond stdin/stdout/stderr, and what it is."""
    seen = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            seen.append(f"{name}={os.readlink(f'/proc/self/fd/{name}')}")
    return _text("\n".join(sorted(s for s in seen if int(s.split("=")[0]) > 2)))


def spray(_: str) -> Conversion:
    """Write a forged answer into every descriptor held, hoping one leads to the gateway."""
    forged = b'\x00\x00\x00\x2e{"ok": true, "outputs": [], "members": [], "blobs": []}'
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            os.write(int(name), forged * 100)
    return _text("sprayed")


def linger(arg: str) -> Conversion:
    """Leave a detached process behind that would write into the next conversion's files
    (and, had it kept the gateway's pipe, into the next answer)."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            for _ in range(int(arg or 30) * 10):
                time.sleep(0.1)
                for spot in PLANT_SPOTS:
                    with contextlib.suppress(OSError):
                        Path(spot, "late").write_text("written after the conversion ended")
            os._exit(0)
        os._exit(0)
    time.sleep(0.2)
    return _text("lingering")


def plant(arg: str) -> Conversion:
    """Files and an unreadable directory in every writable place (and in the directories
    named in `arg`), for the next conversion."""
    spots = [*PLANT_SPOTS, os.environ.get("HOME", "/tmp"), os.getcwd(), *arg.split()]
    for spot in spots:
        with contextlib.suppress(OSError):
            Path(spot, "planted").write_text("from an earlier attachment")
            locked = Path(spot, "locked")
            locked.mkdir()
            (locked / "inside").write_text("hidden")
            locked.chmod(0)
    return _text("planted")


def look(_: str) -> Conversion:
    """What this conversion finds left by earlier ones, and which processes it sees."""
    found = []
    for spot in PLANT_SPOTS:
        for root, dirs, files in os.walk(spot):
            # Not our own scratch, nor our code (bound read-only when the checkout is in /tmp).
            dirs[:] = [d for d in dirs if os.path.join(root, d) not in (os.getcwd(), PROJECT)]
            found += [os.path.join(root, name) for name in files]
    own = {str(os.getpid()), str(os.getppid()), "1"}
    procs = [p for p in os.listdir("/proc") if p.isdigit() and p not in own]
    return _text(f"files: {sorted(found)}\nprocesses: {sorted(procs)}")


def namespaces(_: str) -> Conversion:
    """clone(CLONE_NEWUSER), clone(CLONE_NEWNS), clone3 and unshare: the errno of each."""
    libc = ctypes.CDLL(None, use_errno=True)
    results = []
    for flags in (CLONE_NEWUSER, CLONE_NEWNS):
        pid = libc.syscall(SYS_CLONE, flags | SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            os._exit(0)
        results.append(errno.errorcode.get(ctypes.get_errno(), "0") if pid < 0 else "created")
    results.append(errno.errorcode.get(ctypes.get_errno(), "0")
                   if libc.syscall(SYS_CLONE3, 0, 0) < 0 else "created")
    unshared = libc.unshare(CLONE_NEWUSER)  # os.unshare is Python 3.12
    results.append(errno.errorcode.get(ctypes.get_errno(), "0") if unshared < 0 else "created")
    return _text(" ".join(results))


def forkbomb(_: str) -> Conversion:
    """Fork until the kernel refuses; report how many processes were made."""
    made = 0
    for _ in range(5000):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        made += 1
    return _text(str(made))


def forge_pdf(_: str) -> Conversion:
    """A "rendering" that is a PDF with JavaScript, offered as the result."""
    pdf = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/OpenAction<</S/JavaScript/JS(app.alert(1))>>>>"
           b"endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
    return Conversion(outputs=(Rendering("report.pdf", "application/pdf", pdf),))


def forge_image(_: str) -> Conversion:
    """An executable offered as a PNG."""
    return Conversion(outputs=(Rendering("photo.png", "image/png", b"MZ\x90\x00" + b"\0" * 60),))


def huge_pixels(_: str) -> Conversion:
    """A page announced far beyond the pixel cap (few bytes actually sent)."""
    return Conversion(images=(Pixels("RGB", 100_000, 100_000, b"\0" * 30, 595.0, 842.0),))


def short_pixels(_: str) -> Conversion:
    """A 10x10 RGB page with one byte missing: the size and the bytes disagree."""
    return Conversion(images=(Pixels("RGB", 10, 10, b"\0" * 299, 595.0, 842.0),))


def bad_text(_: str) -> Conversion:
    return Conversion(outputs=(Rendering("t.txt", "text/plain", b"ok \xff\xfe broken"),))


def control_text(_: str) -> Conversion:
    return Conversion(outputs=(Rendering("t.txt", "text/plain",
                                         "見積\x1b[31m書\x00\x07です\r\n".encode()),))


def xfer(_: str) -> Conversion:
    """Twenty A4 pages at 150 DPI from memory, 13 grey and 7 colour: the transfer alone."""
    grey = Pixels("L", 1240, 1754, bytes(1240 * 1754), 595.0, 842.0)
    colour = Pixels("RGB", 1240, 1754, bytes(1240 * 1754 * 3), 595.0, 842.0)
    return Conversion(images=[colour if i % 3 == 2 else grey for i in range(20)])


ATTACKS: dict[str, Callable[[str], Conversion]] = {
    "xfer": xfer,
    "fds": fds, "spray": spray, "linger": linger, "plant": plant, "look": look,
    "namespaces": namespaces, "forkbomb": forkbomb, "forge-pdf": forge_pdf,
    "forge-image": forge_image, "huge-pixels": huge_pixels, "short-pixels": short_pixels,
    "bad-text": bad_text, "control-text": control_text,
}
