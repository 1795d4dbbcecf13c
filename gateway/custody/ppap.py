"""The PPAP decrypter the gateway uses: `converters.decrypt` in its own bubblewrap sandbox.

One short-lived sandboxed process per attempt (a password release is rare, so no pool):
the same bwrap confinement and seccomp filter as the converter workers (no network,
read-only system, private /tmp, no capabilities), rlimits inside, the wall-clock timeout
here. The password
travels on stdin, never on a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from converters.decrypt import EXIT_CODES, EXIT_WRONG_PASSWORD
from converters.errors import SandboxFailure, Timeout, from_code
from converters.sandbox import PROJECT_ROOT, SandboxConfig, decide_sandboxing
from converters.seccomp import filter_fd
from gateway.custody.quarantine import Decrypter, WrongPassword
from gateway.pipeline.attachments import hidden_paths
from gateway.settings import Settings

_CODES_BY_EXIT = {status: code for code, status in EXIT_CODES.items()}


def sandboxed_decrypter(settings: Settings, sandboxed: bool | None = None) -> Decrypter:
    """A `Decrypter` for `create_app(decrypt=...)`.

    Raises `converters.sandbox.SandboxUnavailable` when bubblewrap cannot run and
    `allow_unsandboxed` is off, like the converter pool.
    """
    if sandboxed is None:
        sandboxed = decide_sandboxing(settings.allow_unsandboxed)
    config = SandboxConfig(targets={}, sandboxed=sandboxed, hidden=hidden_paths(settings))
    environment = config.environment()
    limits = {
        "max_members": settings.archive_max_members,
        "max_bytes": settings.archive_max_total_bytes,
        "max_ratio": settings.archive_max_ratio,
        "memory_bytes": settings.converter_memory_bytes,
        "cpu_seconds": max(1, int(settings.converter_timeout_seconds)),
    }

    def decrypt(untrusted: bytes, _filename: str | None, password: str) -> bytes:
        header = json.dumps({"password": password, "limits": limits}).encode() + b"\n"
        seccomp_fd = filter_fd() if sandboxed else None
        try:
            done = subprocess.run(
                config.wrap([sys.executable, "-m", "converters.decrypt"], seccomp_fd),
                input=header + untrusted, capture_output=True,
                env=environment, cwd=PROJECT_ROOT, timeout=settings.converter_timeout_seconds,
                check=False, pass_fds=(seccomp_fd,) if seccomp_fd is not None else (),
            )
        except subprocess.TimeoutExpired:
            raise Timeout("decryption took too long") from None
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        if done.returncode == 0:
            return done.stdout
        if done.returncode == EXIT_WRONG_PASSWORD:
            raise WrongPassword()
        code = _CODES_BY_EXIT.get(done.returncode)
        raise from_code(code) if code else SandboxFailure(f"exit {done.returncode}")

    return decrypt


