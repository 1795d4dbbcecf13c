"""Coverage-guided fuzzing with atheris (libFuzzer): `python -m fuzz.run TARGET [ARGS]`.

TARGET is `smtp` or `pipeline` (`pipeline --real-converters`: the real sandbox instead of
`FakeConverters`, for a smaller budget). ARGS go to libFuzzer (`-max_total_time=600`,
`-runs=N`, a corpus directory, `-artifact_prefix=DIR/`). `make fuzz` runs both targets
with the seeds of `fuzz.seeds` and keeps corpora and crashes under `fuzz/work/`.

Input layout (the first byte chooses how the rest is used):
- smtp: bit 0 small mail to the journal (a gateway with a worker) instead of
  incoming/; bit 1 send while the DATA hook runs; bits 2-7 = n, the client's sends are
  n² bytes each (0: all at once). The rest is what the client sends.
- pipeline: bit 0 ISO-2022-JP output instead of UTF-8. The rest is the message.
An invariant broken raises AssertionError, which libFuzzer reports as a crash and saves.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

WORK = Path(__file__).resolve().parent / "work"


def smtp_target() -> Callable[[bytes], None]:
    from fuzz.smtp_harness import SmtpHarness, SyncLog, split, watching_syncs

    # Entered for the whole run, and kept: a context manager collected as garbage would
    # put the real fsync back (its generator's `finally` runs) and every 250 look unsynced.
    watch = watching_syncs()
    syncs: SyncLog = watch.__enter__()
    harness = SmtpHarness(Path(tempfile.mkdtemp(prefix="mugaika-fuzz-", dir="/dev/shm")), syncs)

    def one(data: bytes, _watch: object = watch) -> None:
        if not data:
            return
        mode, stream = data[0], data[1:]
        outcome = harness.run(split(stream, (mode >> 2) ** 2), fresh=bool(mode & 1),
                              settle=not mode & 2)
        if outcome.problems:
            raise AssertionError("\n".join(outcome.problems) + f"\nreplies:\n{outcome.replies!r}")

    return one


def pipeline_target(real: bool) -> Callable[[bytes], None]:
    from fuzz.pipeline_harness import SETTINGS, SETTINGS_JIS, check, fake_context, real_context

    ctx = real_context() if real else fake_context()

    def one(data: bytes) -> None:
        if not data:
            return
        settings = SETTINGS_JIS if data[0] & 1 else SETTINGS
        problems = check(data[1:], settings, ctx)
        if problems:
            raise AssertionError("\n".join(problems))

    return one


def seed(target: str, directory: Path) -> None:
    """Write the seed inputs of `target` into `directory` (what `make fuzz` starts from)."""
    from fuzz.seeds import pipeline_seeds, smtp_seeds, write_seeds

    if target == "smtp":
        count = write_seeds(directory, smtp_seeds(), bytes([0x00, 0x01, 0x06, 0x1E, 0x2B]))
    else:
        count = write_seeds(directory, pipeline_seeds(), bytes([0x00, 0x01]))
    print(f"wrote {count} {target} seeds to {directory}", file=sys.stderr)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in ("smtp", "pipeline", "seed"):
        sys.exit("usage: python -m fuzz.run smtp|pipeline [--real-converters] [libFuzzer args]"
                 "\n       python -m fuzz.run seed smtp|pipeline DIR")
    if argv[1] == "seed":
        seed(argv[2], Path(argv[3]))
        return
    real = "--real-converters" in argv
    args = [a for a in argv if a != "--real-converters"]
    # Only our code is instrumented: coverage of the stdlib's email package would
    # drown the gateway's own branches.
    with atheris.instrument_imports(include=["gateway", "converters", "fuzz"]):
        one = smtp_target() if argv[1] == "smtp" else pipeline_target(real)
    atheris.Setup([args[0], *args[2:]], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
