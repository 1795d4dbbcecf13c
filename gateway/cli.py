"""`mugaika serve | sanitize | check-config` (and the subcommands other modules register)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from gateway import admin_cli, loadtest, loop, office_cli, samples
from gateway.logs import configure_logging
from gateway.settings import Settings, describe, load_settings

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.processes > 1:
        # A group's supervisor only starts and watches its members: this process's
        # imports (the database layer, converters, API: ~100 MB) would be dead weight.
        config = ["--config", str(args.config)] if args.config else []
        os.execv(sys.executable, [sys.executable, "-m", "gateway.processes", *config])  # noqa: S606
    from gateway.server import serve

    configure_logging()
    loop.run(serve(settings))
    return EXIT_OK


def cmd_sanitize(args: argparse.Namespace) -> int:
    from gateway.rebuild import rebuild
    from gateway.sanitize import sanitize

    settings = _settings(args)
    try:
        raw = Path(args.input).read_bytes() if args.input != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        print(f"mugaika: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return EXIT_INPUT
    result = sanitize(raw, "offline", settings)
    output = rebuild(result, settings)
    if args.output:
        Path(args.output).write_bytes(output)
    else:
        sys.stdout.buffer.write(output)
    if args.report:
        Path(args.report).write_text(result.report.to_json() + "\n", encoding="utf-8")
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(describe(settings), ensure_ascii=False, indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mugaika", description="無害化 mail gateway")
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML settings file (also MUGAIKA_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run SMTP listener, workers and HTTP API").set_defaults(
        func=cmd_serve)
    p = sub.add_parser("sanitize", help="sanitize one .eml file without SMTP")
    p.add_argument("input", help="message file, or - for stdin")
    p.add_argument("-o", "--output", help="write the sanitized message here (default: stdout)")
    p.add_argument("--report", help="write the JSON report here")
    p.set_defaults(func=cmd_sanitize)
    sub.add_parser("check-config", help="validate and print the effective settings").set_defaults(
        func=cmd_check_config)
    for module in (admin_cli, samples, loadtest, office_cli):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (ValidationError, FileNotFoundError) as exc:
        print(f"mugaika: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code
