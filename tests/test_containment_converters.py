"""Containment, tried as an attacker: a converter hijacked by the attachment it parses
gets nothing beyond that one attachment.

Each test runs one escape inside the real sandbox (the tests' hostile converter,
`tests.containment_helpers`), checks that it failed, and then that the next conversion
in the same worker, for another mail, is unaffected.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from converters import cgroup
from converters.errors import ConversionError, SandboxFailure
from converters.limits import ConversionPolicy, Limits, MiB, OcrPolicy
from converters.package import Packager
from converters.sandbox import PROJECT_ROOT, SandboxConfig, SandboxPool
from gateway.pipeline.attachments import AttachmentContext
from gateway.pipeline.rebuild import rebuild
from gateway.pipeline.report import ActionKind
from gateway.pipeline.sanitize import sanitize
from gateway.settings import Settings
from tests.convert_helpers import hostile_registry, japanese_pdf, mail

TARGETS = hostile_registry().targets()
#: OCR off: the hostile converter's forged pixels must reach the gateway's own check (with
#: OCR on, the child's OCR stage trips over them first and the answer is an error anyway).
QUICK = ConversionPolicy(limits=Limits(wall_seconds=10, cpu_seconds=5, memory_bytes=256 * MiB),
                         ocr=OcrPolicy(enabled=False))
SETTINGS = Settings(converter_timeout_seconds=10, converter_memory_bytes=256 * MiB, workers=1)


@pytest.fixture
def pool() -> Iterator[SandboxPool]:
    """One worker: the next conversion runs where the attack ran."""
    with SandboxPool(SandboxConfig(TARGETS), size=1) as sandboxed:
        yield sandboxed


def _report(pool: SandboxPool, verb: str) -> str:
    conv = pool.convert("hostile", verb.encode(), "attack.txt", QUICK)
    return conv.outputs[0].data.decode()


def _packaged(pool: SandboxPool, verb: str) -> str:
    """The attack's answer as the gateway would deliver it (text files only here)."""
    with Packager("attack", QUICK) as packager:
        files = packager.finish(pool.convert("hostile", verb.encode(), "attack.txt", QUICK,
                                             packager.add))
    return files[0].data.decode()


def _next_conversion_is_clean(pool: SandboxPool) -> None:
    """Another mail's attachment: nothing left over, and converted as usual."""
    assert _report(pool, "look") == "files: []\nprocesses: []"
    csv = pool.convert("text", "件名,金額\n見積,3\n".encode(), "next.csv", QUICK)
    assert csv.outputs[0].data.decode("utf-8-sig") == "件名,金額\r\n見積,3\r\n"


def test_a_conversion_holds_no_descriptor_but_its_own_answer_pipe(pool: SandboxPool) -> None:
    held = _report(pool, "fds").splitlines()
    assert len(held) == 1 and "=pipe:[" in held[0], held  # not the server's, not the gateway's
    _next_conversion_is_clean(pool)


def test_a_forged_answer_written_into_every_descriptor_reaches_no_other_mail(
        pool: SandboxPool) -> None:
    with pytest.raises(SandboxFailure):  # its own answer is spoiled, and refused
        _report(pool, "spray")
    _next_conversion_is_clean(pool)


def test_a_process_left_behind_is_killed_before_the_next_conversion(pool: SandboxPool) -> None:
    assert _report(pool, "linger 5") == "lingering"
    _next_conversion_is_clean(pool)
    time.sleep(1.0)  # it would have written by now, had it survived
    _next_conversion_is_clean(pool)


def test_files_planted_for_the_next_conversion_are_gone(pool: SandboxPool) -> None:
    assert _report(pool, "plant") == "planted"
    _next_conversion_is_clean(pool)


def test_files_planted_in_a_masked_directory_are_gone_too(tmp_path: Path) -> None:
    """The data directory, when it lies under /tmp, is masked by a tmpfs of its own inside
    the sandbox: writable there, and emptied like the rest (its mount point stays)."""
    masked = tmp_path / "var"
    masked.mkdir()
    with SandboxPool(SandboxConfig(TARGETS, hidden=(str(masked),)), size=1) as pool:
        assert _report(pool, f"plant {masked}") == "planted"
        _next_conversion_is_clean(pool)
    assert list(masked.iterdir()) == []  # and nothing reached the host's directory


def test_new_namespaces_cannot_be_made(pool: SandboxPool) -> None:
    """clone(CLONE_NEWUSER) and clone(CLONE_NEWNS) EPERM, clone3 ENOSYS, unshare EPERM."""
    assert _report(pool, "namespaces") == "EPERM EPERM ENOSYS EPERM"
    _next_conversion_is_clean(pool)


def test_a_fork_bomb_stops_at_the_sandbox_task_limit(pool: SandboxPool) -> None:
    probe = cgroup.make("probe-availability", 8)
    assert probe is not None, "this host offers a pids cgroup (v1 pids or delegated v2)"
    cgroup.remove(probe)
    made = int(_report(pool, "forkbomb"))
    assert 0 < made < pool.config.max_tasks
    _next_conversion_is_clean(pool)


@pytest.mark.parametrize("verb", ["forge-pdf", "forge-image", "bad-text"])
def test_a_forged_rendering_is_refused(pool: SandboxPool, verb: str) -> None:
    """A PDF with JavaScript, an executable called PNG, or text that is not UTF-8: only
    pixels and text may come back, and the files delivered are written by the gateway."""
    with pytest.raises(SandboxFailure, match=r"not text|not UTF-8"):
        _packaged(pool, verb)
    _next_conversion_is_clean(pool)


@pytest.mark.parametrize("verb", ["huge-pixels", "short-pixels"])
def test_forged_pixels_with_ocr_on_end_as_an_error_not_a_file(pool: SandboxPool,
                                                              verb: str) -> None:
    """With OCR on, the OCR stage in the same child reads the pixels first and fails on
    them: the answer is an error, nothing is delivered, the next conversion is clean."""
    with_ocr = dataclasses.replace(QUICK, ocr=OcrPolicy(enabled=True))
    with pytest.raises(ConversionError), Packager("attack", with_ocr) as packager:
        packager.finish(pool.convert("hostile", verb.encode(), "attack.txt", with_ocr,
                                     packager.add))
    _next_conversion_is_clean(pool)


@pytest.mark.parametrize("verb", ["huge-pixels", "short-pixels"])
def test_pixels_beyond_the_limits_are_refused_and_the_worker_replaced(
        pool: SandboxPool, verb: str) -> None:
    _report(pool, "look")
    assert pool.started == 1
    with pytest.raises(SandboxFailure, match="answer refused"):
        _packaged(pool, verb)
    _next_conversion_is_clean(pool)
    assert pool.started == 2  # a worker that forged an answer is not trusted again


def test_control_characters_are_removed_from_text(pool: SandboxPool) -> None:
    """ESC, NUL and BEL go (a terminal escape is left as plain, inert text); CR LF stay."""
    assert _packaged(pool, "control-text") == "見積[31m書です\r\n"


def test_a_worker_is_replaced_after_max_documents() -> None:
    with SandboxPool(SandboxConfig(TARGETS, max_documents=2), size=1) as pool:
        for _ in range(5):
            _report(pool, "look")
        assert pool.started == 3


def _delivered(raw: bytes, ctx: AttachmentContext, queue_id: str) -> tuple[EmailMessage, str]:
    s = sanitize(raw, queue_id, SETTINGS, ctx)
    out = rebuild(s, SETTINGS)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    [action] = [a for a in s.report.actions if a.filename == "attack.txt"] or [None]
    return msg, "" if action is None else f"{action.action.value}/{action.code}"


def test_end_to_end_a_forged_pdf_is_removed_and_the_next_mail_is_delivered() -> None:
    """The forged rendering never reaches the recipient; the next mail's PDF is rendered."""
    with AttachmentContext.from_settings(SETTINGS, registry=hostile_registry()) as ctx:
        first, fate = _delivered(mail([("attack.txt", "text/plain", b"forge-pdf")]), ctx, "Q1")
        assert fate == f"{ActionKind.REMOVED.value}/sandbox_failure"
        assert b"/JavaScript" not in first.as_bytes()
        second, _ = _delivered(mail([("お知らせ.pdf", "application/pdf", japanese_pdf(1))]),
                               ctx, "Q2")
        names = [part.get_filename() for part in second.iter_attachments()]
        assert names == ["お知らせ.pdf", "お知らせ.txt"]


def test_the_gateway_process_never_loads_libmagic() -> None:
    """Type detection runs in the sandbox: the process that sanitizes a mail with
    attachments never maps libmagic (which would parse the original bytes)."""
    code = (
        "import sys\n"
        "from gateway.pipeline.sanitize import sanitize\n"
        "from gateway.settings import Settings\n"
        "from tests.convert_helpers import japanese_pdf, mail, photo_jpeg\n"
        "raw = mail([('a.pdf', 'application/pdf', japanese_pdf(1)),\n"
        "            ('b.jpg', 'image/jpeg', photo_jpeg())])\n"
        "s = sanitize(raw, 'Q1', Settings())\n"
        "assert [a.action.value for a in s.report.actions][-2:] == ['converted'] * 2\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('magic' in sys.modules, 'libmagic' in maps)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]
