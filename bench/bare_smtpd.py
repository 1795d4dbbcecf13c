"""A bare aiosmtpd server that accepts every message and discards it: the baseline.

Run as its own process (`python -m bench.bare_smtpd --port P`) so that it gets a core of
its own, like the gateway does, and the client's work is not counted against it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP


class Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 discarded"


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Discard(), hostname="bare"),
                                      "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
