"""The default readiness checks behind /readyz: can the gateway take and pass on mail?"""

from __future__ import annotations

import ctypes.util
import os
import socket
from collections.abc import Callable
from pathlib import Path

from converters.sandbox import bwrap_problem
from gateway.settings import Settings

#: Kept short: a load balancer polls /readyz often and must not pile up waiting threads.
CONNECT_TIMEOUT = 2.0


def downstream_check(settings: Settings) -> Callable[[], bool]:
    """TCP connect to the downstream MTA, or a writable maildir when there is none."""
    host = settings.downstream_host
    if host is None:
        return lambda: _writable_dir(settings.maildir)

    def check() -> bool:
        try:
            with socket.create_connection((host, settings.downstream_port), CONNECT_TIMEOUT):
                return True
        except OSError:
            return False

    return check


def converters_check(settings: Settings) -> Callable[[], bool]:
    """bubblewrap can confine a process (or is explicitly not required) and libmagic is
    installed. Only found, not loaded: it parses attachments, so it runs in the sandbox."""

    def check() -> bool:
        if not settings.allow_unsandboxed and bwrap_problem() is not None:
            return False
        return ctypes.util.find_library("magic") is not None

    return check


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)
