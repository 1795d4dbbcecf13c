"""`mugaika serve | sanitize | check-config` and the subcommands other modules register.

The command line starts fast because it imports only what the chosen command needs:
the other commands appear in `mugaika --help` by name and help text alone (`_COMMANDS`),
and the module that defines a command's arguments is imported only when that command
runs (the database layer, the API and the converters cost seconds to import).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import Settings

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2

#: Subcommands defined by other modules: name → (module with `register(subparsers)`, help).
_COMMANDS = {
    "token": ("gateway.admin_cli", "API tokens"),
    "quarantine": ("gateway.admin_cli", "review and release held mail"),
    "user": ("gateway.user_cli", "console accounts"),
    "samples": ("gateway.loadtest.samples", "write the benign and hostile test corpus"),
    "loadtest": ("gateway.loadtest.run", "load-test a gateway and account for every message"),
    "office-check": ("gateway.office_cli",
                     "start LibreOffice in its sandbox and convert a Japanese probe"),
}


def _settings(args: argparse.Namespace) -> Settings:
    from gateway.settings import load_settings

    return load_settings(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.config is not None:  # read again on SIGHUP (`gateway.reload`), by every member
        os.environ["MUGAIKA_CONFIG"] = str(args.config.resolve())
    settings = _settings(args)
    if settings.processes > 1:
        # A group's supervisor only starts and watches its members: this process's
        # imports (the database layer, converters, API: ~100 MB) would be dead weight.
        config = ["--config", str(args.config)] if args.config else []
        os.execv(sys.executable, [sys.executable, "-m", "gateway.processes", *config])  # noqa: S606
    from gateway import loop
    from gateway.logs import configure_logging
    from gateway.server import serve

    configure_logging()
    loop.run(serve(settings))
    return EXIT_OK


def cmd_sanitize(args: argparse.Namespace) -> int:
    from gateway.pipeline.rebuild import rebuild
    from gateway.pipeline.sanitize import sanitize

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
    from gateway.settings import describe

    settings = _settings(args)
    print(json.dumps(describe(settings), ensure_ascii=False, indent=2))
    return EXIT_OK


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; only the module of the command named in `argv` is imported."""
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
    chosen = _command_name(sys.argv[1:] if argv is None else argv)
    if chosen in _COMMANDS:
        importlib.import_module(_COMMANDS[chosen][0]).register(sub)
    for name, (_module, help_text) in _COMMANDS.items():
        if name not in sub.choices:  # listed in --help; never parsed: `chosen` is the command
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_name(argv: list[str]) -> str | None:
    """The first word that is neither an option nor the value of `--config`."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError
    from tomli import TOMLDecodeError

    args = build_parser(argv).parse_args(argv)
    try:
        code: int = args.func(args)
    except (ValidationError, FileNotFoundError, TOMLDecodeError) as exc:
        print(f"mugaika: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code
