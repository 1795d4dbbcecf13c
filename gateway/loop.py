"""Running a coroutine on the fastest event loop installed.

uvloop (a requirement, but optional at run time) cuts the loop's own cost per SMTP
command and per thread hand-back; `mugaika serve` and the load test use it. The load test
shares the machine's cores with the gateway it measures, so its own cost matters too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # the stdlib loop is just slower
        return asyncio.run(main)
    return uvloop.run(main)
