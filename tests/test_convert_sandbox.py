"""The sandbox: no network, read-only system, and runaway converters stopped, failing closed."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from converters.errors import ConversionError, LimitExceeded, SandboxFailure, Timeout
from converters.limits import ConversionPolicy, Limits, MiB
from converters.sandbox import (
    PROJECT_ROOT,
    SandboxConfig,
    SandboxPool,
    SandboxUnavailable,
    Worker,
    WorkerDied,
    decide_sandboxing,
)
from tests.convert_helpers import hostile_registry

TARGETS = hostile_registry().targets()
QUICK = ConversionPolicy(limits=Limits(wall_seconds=3, cpu_seconds=2, memory_bytes=256 * MiB))


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(SandboxConfig(TARGETS), size=2) as sandboxed:
        yield sandboxed


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    yield server
    server.close()


def _accepted(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


def test_real_converter_runs_in_the_sandbox(pool: SandboxPool) -> None:
    conv = pool.convert("text", "件名,金額\n=1+1,3\n".encode(), "a.csv", QUICK)
    assert conv.outputs[0].data.decode("utf-8-sig") == "件名,金額\r\n'=1+1,3\r\n"


def test_network_is_denied(pool: SandboxPool, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(ConversionError):
        pool.convert("hostile", f"connect {port}".encode(), "a.txt", QUICK)
    assert not _accepted(listener)


def test_the_same_connect_succeeds_without_the_sandbox(listener: socket.socket) -> None:
    """Control: the network test above can fail; only bubblewrap makes it pass."""
    port = listener.getsockname()[1]
    with SandboxPool(SandboxConfig(TARGETS, sandboxed=False), size=1) as bare:
        conv = bare.convert("hostile", f"connect {port}".encode(), "a.txt", QUICK)
    assert conv.outputs[0].filename == "leaked.txt"
    assert _accepted(listener)


def test_seccomp_refuses_internet_sockets_and_ptrace(pool: SandboxPool) -> None:
    conv = pool.convert("hostile", b"socket", "a.txt", QUICK)
    assert conv.outputs[0].data == f"{errno.EAFNOSUPPORT} {errno.EAFNOSUPPORT} ok".encode()
    conv = pool.convert("hostile", b"ptrace", "a.txt", QUICK)
    assert conv.outputs[0].data == f"-1 {errno.EPERM}".encode()


def test_without_the_sandbox_the_same_calls_succeed() -> None:
    """Control for the seccomp test: the refusals come from the filter."""
    with SandboxPool(SandboxConfig(TARGETS, sandboxed=False), size=1) as bare:
        assert bare.convert("hostile", b"socket", "a.txt", QUICK).outputs[0].data == b"ok ok ok"


def test_system_is_read_only_and_tmp_is_private(pool: SandboxPool) -> None:
    outside = Path(__file__).parent / f"escaped-{uuid.uuid4().hex}"
    with pytest.raises(ConversionError):
        pool.convert("hostile", f"write {outside}".encode(), "a.txt", QUICK)
    assert not outside.exists()
    private = f"/tmp/mugaika-probe-{uuid.uuid4().hex}"
    conv = pool.convert("hostile", f"write {private}".encode(), "a.txt", QUICK)
    assert conv.outputs[0].filename == "wrote.txt"  # the converter could write its /tmp...
    assert not os.path.exists(private)  # ...which is not the host's


def test_sleeping_converter_is_stopped_at_the_wall_clock_limit(pool: SandboxPool) -> None:
    started = time.monotonic()
    with pytest.raises(Timeout):
        pool.convert("hostile", b"sleep", "a.txt", QUICK)
    assert time.monotonic() - started < QUICK.limits.wall_seconds + 3
    # The pool replaced the killed worker: the next attachment converts normally.
    assert pool.convert("hostile", b"ok", "a.txt", QUICK).outputs[0].data == b"ok"


def test_spinning_converter_is_stopped_by_the_cpu_limit(pool: SandboxPool) -> None:
    policy = ConversionPolicy(limits=Limits(wall_seconds=20, cpu_seconds=1))
    started = time.monotonic()
    with pytest.raises(Timeout):
        pool.convert("hostile", b"spin", "a.txt", policy)
    assert time.monotonic() - started < 10


def test_unbounded_allocation_is_stopped_by_the_memory_limit(pool: SandboxPool) -> None:
    with pytest.raises(LimitExceeded):
        pool.convert("hostile", b"alloc", "a.txt", QUICK)


def test_killed_worker_leaves_no_process_behind() -> None:
    worker = Worker(SandboxConfig(TARGETS))
    assert worker.startup_seconds < 30
    with pytest.raises(Timeout):
        worker.convert("hostile", b"sleep", "a.txt",
                       ConversionPolicy(limits=Limits(wall_seconds=1)))
    assert worker.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(worker.proc.pid, 0)


def test_crashing_converter_fails_closed_and_the_worker_survives(pool: SandboxPool) -> None:
    with pytest.raises(SandboxFailure):
        pool.convert("hostile", b"crash", "a.txt", QUICK)
    conv = pool.convert("hostile", b"ok", "a.txt", QUICK)
    assert conv.outputs[0].data == b"ok"
    assert int(conv.extra["cpu_ms"]) >= 0 and int(conv.extra["max_rss_kb"]) > 0


def test_output_beyond_the_cap_is_refused(pool: SandboxPool) -> None:
    policy = ConversionPolicy(limits=Limits(wall_seconds=5, max_output_bytes=1_000_000))
    assert len(pool.convert("hostile", b"big 900000", "a.txt", policy).outputs[0].data) == 900_000
    with pytest.raises(LimitExceeded):
        pool.convert("hostile", b"big 1100000", "a.txt", policy)


def test_a_worker_killed_between_attachments_is_replaced_transparently() -> None:
    with SandboxPool(SandboxConfig(TARGETS), size=1) as single:
        single.warm()
        (worker,) = [single._idle.get()]
        single._idle.put(worker)
        assert worker is not None
        os.killpg(worker.proc.pid, 9)
        time.sleep(0.2)  # dead, but the pool has not looked yet
        assert single.convert("hostile", b"ok", "a.txt", QUICK).outputs[0].data == b"ok"


def test_a_child_that_kills_its_worker_fails_closed_after_one_retry(pool: SandboxPool) -> None:
    with pytest.raises(WorkerDied):
        pool.convert("hostile", b"killserver", "a.txt", QUICK)
    assert pool.convert("hostile", b"ok", "a.txt", QUICK).outputs[0].data == b"ok"


def test_unknown_converter_name_fails_closed(pool: SandboxPool) -> None:
    with pytest.raises(SandboxFailure):
        pool.convert("no-such-converter", b"x", "a.txt", QUICK)


def test_refuses_to_start_without_bubblewrap_unless_allowed(
        caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SandboxUnavailable):
        decide_sandboxing(allow_unsandboxed=False, bwrap="/nonexistent/bwrap")
    with caplog.at_level(logging.CRITICAL, logger="mugaika.sandbox"):
        assert decide_sandboxing(allow_unsandboxed=True, bwrap="/nonexistent/bwrap") is False
    assert "SANDBOX DISABLED" in caplog.text
    assert decide_sandboxing(allow_unsandboxed=False) is True  # bwrap works on this host


def test_data_dir_is_hidden_from_converters() -> None:
    """Other messages' spool and quarantine are on the host: a converter must not read them.

    The default data directory (`./var`) lies inside the checkout, which the sandbox binds
    in for our code: it is masked there. Anywhere else on the host it is not bound at all."""
    data = PROJECT_ROOT / f"var-test-{uuid.uuid4().hex[:8]}"
    data.mkdir()
    try:
        secret = data / "quarantined-original.eml"
        secret.write_bytes(b"another citizen's mail")
        with SandboxPool(SandboxConfig(TARGETS), size=1) as plain:  # control: in the checkout
            conv = plain.convert("hostile", f"read {secret}".encode(), "a.txt", QUICK)
            assert conv.outputs[0].data == b"another citizen's mail"
        with SandboxPool(SandboxConfig(TARGETS, hidden=(str(data),)), size=1) as masked:
            with pytest.raises(ConversionError):
                masked.convert("hostile", f"read {secret}".encode(), "a.txt", QUICK)
    finally:
        shutil.rmtree(data)


def test_host_outside_the_system_view_is_not_there() -> None:
    """/var, /etc (beyond a few files), /home, /work: not bound, whatever their permissions."""
    elsewhere = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        secret = elsewhere / "spool-entry.eml"
        secret.write_bytes(b"another citizen's mail")
        with SandboxPool(SandboxConfig(TARGETS), size=1) as pool:
            for path in (secret, Path("/etc/hostname"), Path("/etc/shadow")):
                with pytest.raises(ConversionError):
                    pool.convert("hostile", f"read {path}".encode(), "a.txt", QUICK)
            assert pool.convert("hostile", b"read /etc/passwd", "a.txt", QUICK).outputs
    finally:
        shutil.rmtree(elsewhere)
