"""`mugaika samples --out DIR`: write the test corpus and its manifest.

The manifest (`manifest.json`) is the contract the load test checks deliveries against:
for each file, what it exercises, the SMTP reply class expected, the acceptable verdicts
and the expected action per attachment. Building is deterministic (fixed dates, seeds, boundaries
and Message-IDs), so two runs give the same files and sha256 in the manifest, except the
samples holding 7z or encrypted archives (random salts and IVs, 7z time stamps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gateway.loadtest.corpus.catalogue import Sample, catalogue

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def sample_filename(index: int, sample: Sample) -> str:
    return f"{index:02d}-{sample.name}.eml"


def manifest_entry(filename: str, sample: Sample, data: bytes) -> dict[str, Any]:
    """One manifest record; `expect` is what `mugaika loadtest` verifies."""
    return {
        "file": filename,
        "name": sample.name,
        "exercises": sample.exercises,
        "tags": list(sample.tags),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "envelope": {"rcpt": sample.rcpt},
        "expect": {
            "smtp": sample.smtp,
            "verdicts": list(sample.verdicts),
            "attachments": [asdict(a) | {"codes": list(a.codes)} for a in sample.attachments],
            "pages": sum(a.pages for a in sample.attachments),
        },
        "notes": list(sample.notes),
    }


def write_corpus(out: Path, only: set[str] | None = None) -> dict[str, Any]:
    """Build every sample (or those named in `only`) into `out`; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, sample in enumerate(catalogue(), 1):
        if only and sample.name not in only:
            continue
        data = sample.build()
        filename = sample_filename(index, sample)
        (out / filename).write_bytes(data)
        entries.append(manifest_entry(filename, sample, data))
    manifest = {"version": MANIFEST_VERSION, "generator": "mugaika samples", "samples": entries}
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
                                encoding="utf-8")
    return manifest


def load_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a corpus directory, or None for a plain directory of .eml files."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if data.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: unsupported manifest version {data.get('version')!r}")
    return data


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    names = {s.name for s in catalogue()} if args.only else None
    unknown = set(args.only or ()) - (names or set())
    if unknown:
        print(f"unknown sample(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    manifest = write_corpus(Path(args.out), set(args.only) if args.only else None)
    total = sum(e["size"] for e in manifest["samples"])
    print(f"wrote {len(manifest['samples'])} samples ({total / 1e6:.1f} MB) and {MANIFEST} "
          f"to {args.out} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `samples` to the `mugaika` command line (called by gateway.cli)."""
    parser = subparsers.add_parser("samples", description=__doc__)
    _arguments(parser)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory to write the .eml files to")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="write only these samples")
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway.loadtest.samples --out DIR` (the same as `mugaika samples`)."""
    parser = argparse.ArgumentParser(prog="mugaika samples", description=__doc__)
    _arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
