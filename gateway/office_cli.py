"""`mugaika office-check`: is LibreOffice usable here, sandboxed, with Japanese fonts?

An operator runs it after installing or upgrading the host (LibreOffice, fonts,
bubblewrap): it starts one sandboxed instance, converts a small Japanese document it
writes itself, and reports the start-up and conversion times and whether the text came
out as Japanese. Exit status 0 when everything works, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from typing import Any

from converters import errors
from converters.limits import ConversionPolicy
from converters.office import OfficeConverter
from converters.office_pool import OfficeConfig, OfficePool
from converters.package import package
from gateway.settings import Settings, load_settings

PROBE_TEXT = "無害化テスト 令和7年度 住民票"


def probe_rtf(text: str = PROBE_TEXT) -> bytes:
    """A one-line RTF document; non-ASCII as \\uN escapes, so no encoding guesswork."""
    body = "".join(c if ord(c) < 128 else f"\\u{ord(c)}?" for c in text)
    return ("{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0\\fnil IPAexGothic;}}\\f0\\fs32 "
            + body + "\\par}").encode("ascii")


def japanese_fonts() -> int:
    """How many installed fonts cover Japanese (fontconfig's view, as LibreOffice uses it)."""
    try:
        done = subprocess.run(["fc-list", ":lang=ja", "family"], capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return len([line for line in done.stdout.splitlines() if line.strip()])


def check(settings: Settings) -> dict[str, Any]:
    """Start one instance, convert the probe, report what happened."""
    config = OfficeConfig(pool_size=1, timeout_seconds=settings.office_timeout_seconds,
                          sandboxed=not settings.allow_unsandboxed)
    report: dict[str, Any] = {"sandboxed": config.sandboxed, "japanese_fonts": japanese_fonts()}
    with OfficePool(config) as pool:
        started = time.monotonic()
        try:
            pool.warm_up()
            report["startup_seconds"] = round(time.monotonic() - started, 2)
            started = time.monotonic()
            conv = OfficeConverter(pool).convert(probe_rtf(), "probe.rtf", ConversionPolicy())
            files = package(conv, "probe", ConversionPolicy())
        except errors.ConversionError as exc:
            report.update(ok=False, error=exc.code)
            return report
    report["convert_seconds"] = round(time.monotonic() - started, 2)
    text = b"".join(o.data for o in files if o.content_type == "text/plain").decode()
    # PDF text layers put spaces where scripts change ("令和 7 年度"): compare without them.
    report["japanese_text"] = "".join(PROBE_TEXT.split()) in "".join(text.split())
    report["ok"] = bool(conv.pages == 1 and report["japanese_text"] and report["japanese_fonts"])
    return report


def cmd_office_check(args: argparse.Namespace) -> int:
    report = check(load_settings(args.config))
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0 if report["ok"] else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subparsers.add_parser("office-check", description=__doc__).set_defaults(
        func=cmd_office_check)
