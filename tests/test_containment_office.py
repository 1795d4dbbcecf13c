"""Containment of LibreOffice, tested as an attacker would: assume a document took it over.

Two kinds of attack. Shell probes run in the LibreOffice sandbox exactly as the pool
starts it (`launch`, the same command, descriptors and process group; only the bridge is
replaced by the attacker's program) and each try one escape. A hijacked bridge (the real
one, plus what a crafted document could make it do) answers the gateway with lies. Each
test asserts the attempt failed and that the next document still converts.
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from converters import errors
from converters.office_pool import (
    BRIDGE,
    SYSTEM_PYTHON,
    OfficeConfig,
    OfficePool,
    launch,
    sandbox_command,
    stop,
)
from tests.containment_helpers import marked_processes
from tests.office_helpers import japanese_docx

pytestmark = pytest.mark.slow
SANDBOX = OfficeConfig()
SECRET = b"another citizen's quarantined mail"


@pytest.fixture(scope="module")
def pool() -> Iterator[OfficePool]:
    with OfficePool(OfficeConfig(timeout_seconds=30)) as p:
        yield p


def _next_document_converts(pool: OfficePool) -> None:
    pdf, reply = pool.convert(japanese_docx(), ".docx", 50)
    assert reply["ok"] and reply["kind"] == "writer" and pdf.startswith(b"%PDF-")
    assert b"/Type /Page" in pdf or b"/Type/Page" in pdf


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Stands for the gateway's data directory: the database and a quarantined original."""
    path = Path(tempfile.mkdtemp(prefix="mugaika-data-", dir="/var/tmp"))
    (path / "mugaika.db").write_bytes(SECRET)
    (path / "original.eml").write_bytes(SECRET)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _untouched(data_dir: Path) -> bool:
    return (sorted(p.name for p in data_dir.iterdir()) == ["mugaika.db", "original.eml"]
            and all((data_dir / n).read_bytes() == SECRET for n in ("mugaika.db", "original.eml")))


def _run(inner: list[str], config: OfficeConfig = SANDBOX) -> list[str]:
    proc = launch(config, inner)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        stop(proc)
    return out.decode().splitlines()


def _sh(script: str, config: OfficeConfig = SANDBOX) -> list[str]:
    return _run(["/bin/sh", "-c", script], config)


def _py(code: str, config: OfficeConfig = SANDBOX) -> list[str]:
    return _run([SYSTEM_PYTHON, "-c", code], config)


# --- shell probes ---------------------------------------------------------------------

WRITABLE_MOUNTS = r"""
while read -r line; do
  mnt=$(echo "$line" | cut -d" " -f5); fstype=$(echo "$line" | sed "s/.* - //" | cut -d" " -f1)
  if ( : > "$mnt/.probe" ) 2>/dev/null; then echo "writable $mnt $fstype"; rm -f "$mnt/.probe"; fi
done < /proc/self/mountinfo
"""


def test_no_host_path_is_writable_not_even_the_data_dir(data_dir: Path, pool: OfficePool) -> None:
    command = sandbox_command(SANDBOX, ["true"], None)
    assert not {"--bind", "--bind-try", "--dev-bind", "--dev-bind-try"} & set(command)
    targets = [data_dir / "mugaika.db", data_dir / "new.eml", "/usr/probe", "/etc/passwd",
               "/probe", "/opt/mugaika/office_bridge.py"]
    script = "".join(f'( echo pwned > "{t}" ) 2>/dev/null && echo "wrote {t}"\n' for t in targets)
    script += f'mkdir -p "{data_dir}" 2>/dev/null && echo made-data-dir\n' + WRITABLE_MOUNTS
    bridge = BRIDGE.read_bytes()
    # Only the sandbox's own, sized tmpfs mounts take a file; nothing of the host does.
    assert set(_sh(script)) == {"writable /dev/shm tmpfs", "writable /tmp tmpfs"}
    assert _untouched(data_dir) and BRIDGE.read_bytes() == bridge
    _next_document_converts(pool)


def test_symlinks_lead_nowhere_outside(data_dir: Path, pool: OfficePool) -> None:
    gateway = os.getpid()
    script = f"""
    echo linked > /tmp/real; ln -s /tmp/real /tmp/link; echo through >> /tmp/link
    cat /tmp/real | tr "\\n" " "; echo
    ln -s "{data_dir}/mugaika.db" /tmp/in-1.docx
    ( echo pwned > /tmp/in-1.docx ) 2>/dev/null && echo "wrote through a link"
    ln -s / /tmp/root; ( echo pwned > /tmp/root/probe ) 2>/dev/null && echo "wrote via /"
    for root in /proc/1/root /proc/{gateway}/root; do
      ( echo pwned > "$root{data_dir}/mugaika.db" ) 2>/dev/null && echo "wrote via $root"
      cat "$root{data_dir}/original.eml" 2>/dev/null && echo "read via $root"
    done
    """
    # The first line is the control: links work inside, they just reach nothing of the host.
    assert _sh(script) == ["linked through "]
    assert _untouched(data_dir)
    _next_document_converts(pool)


def test_only_the_pipes_are_inherited(pool: OfficePool) -> None:
    code = """
import os
def accepts(fd):
    try:
        os.write(fd, b"")
    except OSError:
        return False
    return True
links = [f"/proc/self/fd/{fd}" for fd in range(1024)]
names = [f"{link.rsplit('/', 1)[1]}={os.readlink(link).split(':')[0]}"
         for link in links if os.path.exists(link)]
print(*names)
print("writable", *[fd for fd in range(3, 1024) if accepts(fd)])
"""
    # 0 and 1 are the gateway's pipes, 2 is /dev/null; nothing else, nothing to write to.
    assert _py(code) == ["0=pipe 1=pipe 2=/dev/null", "writable"]
    _next_document_converts(pool)


def _gone(marker: str, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while marked_processes(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_background_processes_die_with_the_instance(pool: OfficePool) -> None:
    marker = f"mugaika-probe-{os.getpid()}-{time.monotonic_ns()}"
    sleeper = f"python3 -c \"import time; print('up', flush=True); time.sleep(600)\" {marker}"
    script = f"(setsid {sleeper} &); {sleeper} & nohup {sleeper} 2>/dev/null & exec sleep 600"
    proc = launch(SANDBOX, ["/bin/sh", "-c", script])
    try:
        assert proc.stdout is not None
        assert [proc.stdout.readline() for _ in range(3)] == [b"up\n"] * 3
        assert len(marked_processes(marker)) == 3  # control: the detached processes do run
    finally:
        stop(proc)
    assert _gone(marker, seconds=1.0)
    _next_document_converts(pool)


def _clone_newuser() -> str:
    number = {"x86_64": 56, "aarch64": 220}[platform.machine()]
    return f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
pid = libc.syscall({number}, 0x10000000 | 17, 0, 0, 0, 0)  # CLONE_NEWUSER | SIGCHLD
if pid == 0:
    os._exit(0)
print("clone", "refused" if pid < 0 else "made a user namespace")
"""


def test_no_new_user_namespace(pool: OfficePool) -> None:
    script = (f"unshare -U true 2>/dev/null && echo unshare-made-one || echo unshare-refused\n"
              f"exec python3 -c '{_clone_newuser()}'")
    assert _sh(script) == ["unshare-refused", "clone refused"]
    # Control: the same probe outside the sandbox does get its namespace.
    bare = _sh(script, OfficeConfig(sandboxed=False))
    assert bare == ["unshare-made-one", "clone made a user namespace"]
    _next_document_converts(pool)


def test_no_internet_socket(pool: OfficePool) -> None:
    code = """
import errno, socket
for family in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):
    try:
        socket.socket(family, socket.SOCK_DGRAM).close()
        print(family.name, "opened")
    except OSError as exc:
        print(family.name, errno.errorcode[exc.errno])
"""
    assert _py(code) == ["AF_INET EAFNOSUPPORT", "AF_INET6 EAFNOSUPPORT",
                         "AF_NETLINK EAFNOSUPPORT"]
    assert _py(code, OfficeConfig(sandboxed=False))[0] == "AF_INET opened"  # control
    _next_document_converts(pool)


def test_host_files_and_processes_are_not_there(data_dir: Path, pool: OfficePool) -> None:
    paths = ["/etc/shadow", "/etc/hostname", data_dir / "mugaika.db", data_dir,
             Path(__file__).parent, "/root", "/home", "/var/lib", "/var/spool"]
    script = "cat /etc/passwd >/dev/null && echo reads-passwd\n"  # control: reading works
    script += "".join(f'test -e "{p}" && echo "sees {p}"\n' for p in paths)
    script += 'cat /proc/[0-9]*/comm | sort -u | tr "\\n" " "'
    *lines, processes = _sh(script)
    assert lines == ["reads-passwd"]
    # Its own PID namespace: bwrap's init, the shell and its commands; no gateway, no host.
    assert set(processes.split()) <= {"bwrap", "sh", "cat", "sort", "tr"}
    _next_document_converts(pool)


def test_memory_and_tmpfs_are_bounded(pool: OfficePool) -> None:
    limit_kib = SANDBOX.memory_bytes // 1024
    code = f"""
import resource
print("as", resource.getrlimit(resource.RLIMIT_AS)[0] // 1024)
small = bytearray(64 << 20)  # control: allocating works
try:
    big = bytearray({SANDBOX.memory_bytes})
    print("allocated past the limit")
except MemoryError:
    print("MemoryError")
"""
    assert _py(code) == [f"as {limit_kib}", "MemoryError"]
    small = OfficeConfig(tmp_bytes=32 * 1024 * 1024)
    fill = ("i=0; while dd if=/dev/zero of=/tmp/fill$i bs=1M count=8 2>/dev/null; "
            "do i=$((i+1)); done; du -sm /tmp | cut -f1\n"
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=100 2>/dev/null; du -sm /dev/shm | cut -f1")
    tmp_mib, shm_mib = map(int, _sh(fill, small))
    assert tmp_mib <= 32 and shm_mib <= 64  # files are RAM: each tmpfs stops at its size
    _next_document_converts(pool)


# --- a hijacked bridge ----------------------------------------------------------------

#: Spliced into the real bridge before `main()` runs: documents starting "HOSTILE <attack>"
#: do what a soffice under the attacker's control could make the bridge say; others convert.
HIJACK = '''
_honest = convert_document


def _frame(reply, body):
    encoded = json.dumps({**reply, "size": len(body)}).encode()
    return FRAME_PREFIX.pack(len(encoded)) + encoded + body


def convert_document(proc, desktop, request, document):
    if not document.startswith(b"HOSTILE "):
        return _honest(proc, desktop, request, document)
    attack, _, argument = document[8:].decode().partition(" ")
    fake = {"ok": True, "kind": "writer", "sheets": [], "hidden_sheets": []}
    out = sys.stdout.buffer
    if attack == "oversize":
        return fake, b"%PDF-" + b"A" * int(argument)
    if attack == "malformed":
        return {**fake, "sheets": 5}, b"%PDF-"
    if attack == "garbage":
        out.write(b"\\xff" * 64)
    if attack == "chatter":  # the reply, then a reply prepared for the next document
        out.write(_frame(fake, b"%PDF-") + _frame(fake, b"%PDF- for the next one"))
    if attack == "deaf":  # answers, then never reads its stdin again
        out.write(_frame(fake, b"%PDF-"))
    if attack == "symlinks":
        os.makedirs("/tmp/job", exist_ok=True)
        for folder in ("/tmp", "/tmp/job", tempfile.gettempdir(), os.getcwd()):
            for n in range(1, 6):
                for name in (f"in-{n}.docx", f"out-{n}.pdf", "in.docx", "out.pdf"):
                    with contextlib.suppress(OSError):
                        os.symlink(argument, os.path.join(folder, name))
        return fake, b"%PDF-"
    if attack == "leave":  # a process and a mark in the profile, for the next document
        child = subprocess.Popen(["setsid", "python3", "-c", "import time; time.sleep(600)",
                                  argument], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        while argument.encode() not in open(f"/proc/{child.pid}/cmdline", "rb").read():
            time.sleep(0.01)  # running under its own name before the gateway looks
        with open(os.path.join(PROFILE_DIR, "user", "mark"), "w") as f:
            f.write("hijacked")
        return fake, b"%PDF-"
    if attack == "marked?":
        marked = os.path.exists(os.path.join(PROFILE_DIR, "user", "mark"))
        return {**fake, "kind": "marked" if marked else "clean"}, b"%PDF-"
    out.flush()
    time.sleep(3600)

'''
MAIN_GUARD = 'if __name__ == "__main__":'


@pytest.fixture(scope="module")
def hijacked_bridge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = BRIDGE.read_text()
    assert source.count(MAIN_GUARD) == 1
    path = tmp_path_factory.mktemp("hijack") / "office_bridge.py"
    path.write_text(source.replace(MAIN_GUARD, HIJACK + MAIN_GUARD))
    return path


@pytest.fixture
def hijacked(hijacked_bridge: Path) -> Iterator[OfficePool]:
    with OfficePool(OfficeConfig(timeout_seconds=10, bridge=hijacked_bridge)) as p:
        yield p


def _first_instance(pool: OfficePool) -> int:
    pool.warm_up()
    (instance,) = pool.instances()
    return instance.pid


def _replaced(pool: OfficePool, pid: int) -> bool:
    """The instance with bwrap `pid` was killed and forgotten, none took its place yet."""
    return pool.instances() == [] and not Path(f"/proc/{pid}").exists()


def test_an_oversize_pdf_is_refused_and_the_next_document_converts(hijacked: OfficePool) -> None:
    pid = _first_instance(hijacked)
    with pytest.raises(errors.LimitExceeded):
        hijacked.convert(b"HOSTILE oversize 2000000", ".docx", 50, max_pdf_bytes=1_000_000)
    assert _replaced(hijacked, pid)  # not retried: the same document would do it again
    _next_document_converts(hijacked)
    # Control: under the bound, the same answer is taken as it is.
    pdf, _ = hijacked.convert(b"HOSTILE oversize 900000", ".docx", 50, max_pdf_bytes=1_000_000)
    assert len(pdf) == 900_005


@pytest.mark.parametrize("attack", ["garbage", "malformed"])
def test_an_answer_out_of_protocol_fails_closed_and_the_next_document_converts(
    attack: str, hijacked: OfficePool,
) -> None:
    with pytest.raises(errors.SandboxFailure):
        hijacked.convert(f"HOSTILE {attack}".encode(), ".docx", 50)
    assert hijacked.restarts == 2  # the first instance, then the fresh one of the retry
    assert hijacked.instances() == []
    _next_document_converts(hijacked)


def test_an_instance_that_speaks_unasked_gets_no_other_document(hijacked: OfficePool) -> None:
    pid = _first_instance(hijacked)
    pdf, _ = hijacked.convert(b"HOSTILE chatter", ".docx", 50)
    assert pdf == b"%PDF-"
    assert _replaced(hijacked, pid)  # its prepared answer never reaches the next document
    _next_document_converts(hijacked)


def test_an_instance_that_stops_reading_cannot_hang_the_gateway(hijacked: OfficePool) -> None:
    hijacked.convert(b"HOSTILE deaf", ".docx", 50)
    started = time.monotonic()
    pdf, reply = hijacked.convert(_padded_docx(), ".docx", 50)  # more than a pipe holds
    assert reply["ok"] and pdf.startswith(b"%PDF")
    assert time.monotonic() - started < 10 + 30  # the timeout, then a fresh instance
    assert hijacked.restarts == 1


def _padded_docx(pad: int = 1024 * 1024) -> bytes:
    """A docx with a part LibreOffice ignores, of random (incompressible) bytes."""
    buf = io.BytesIO(japanese_docx())
    with zipfile.ZipFile(buf, "a") as docx:
        docx.writestr("customXml/pad.bin", os.urandom(pad))
    return buf.getvalue()


def test_the_gateway_follows_no_link_the_sandbox_made(data_dir: Path,
                                                      hijacked: OfficePool) -> None:
    """The attack that started issue 15: links named like the job files, to the database."""
    hijacked.convert(f"HOSTILE symlinks {data_dir / 'mugaika.db'}".encode(), ".docx", 50)
    for _ in range(3):
        pdf, _ = hijacked.convert(japanese_docx(), ".docx", 50)
        assert pdf.startswith(b"%PDF") and SECRET not in pdf
    assert _untouched(data_dir)


def test_a_recycled_instance_starts_clean(hijacked_bridge: Path) -> None:
    marker = f"mugaika-left-{os.getpid()}-{time.monotonic_ns()}"
    leave = f"HOSTILE leave {marker}".encode()
    # Control: kept for a second document, the instance still holds the mark and the process.
    with OfficePool(OfficeConfig(max_documents=2, bridge=hijacked_bridge)) as kept:
        kept.convert(leave, ".docx", 50)
        assert marked_processes(marker)
        assert kept.convert(b"HOSTILE marked?", ".docx", 50)[1]["kind"] == "marked"
    assert _gone(marker)
    with OfficePool(OfficeConfig(max_documents=1, bridge=hijacked_bridge)) as recycled:
        recycled.convert(leave, ".docx", 50)
        assert _gone(marker, seconds=1.0)  # recycled at once: its processes died with it
        assert recycled.convert(b"HOSTILE marked?", ".docx", 50)[1]["kind"] == "clean"
        _next_document_converts(recycled)
