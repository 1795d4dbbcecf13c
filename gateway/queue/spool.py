"""The durable queue between SMTP and everything after it.

Layout under the spool root (one file per message, like Postfix's queue files):

    journal/    fresh messages a worker of this process took with their bytes, in an
                append-only log synced once per batch (`gateway.queue.journal`, `put_fresh`);
                with several gateway processes, each has its own `journal.N/`
    tmp/        being written; never read
    incoming/   complete and fsynced; waiting for a worker
    active/     claimed by a worker (claim = rename, so two workers never share one);
                with several gateway processes, each claims into its own `active.N/`
    deferred/   waiting for a retry; `state/ID.json` says when
    hold/       the original of a sanitized message, kept until its output is delivered
    failed/     bounced or undeliverable; kept for operators, never deleted by mugaika
    state/      retry bookkeeping (attempts, next try, recipients still pending)

A file is `MAGIC + envelope JSON + "\\n" + message bytes`. It reaches `incoming/` only by
`rename` after `fsync` of the file, and the rename is made durable with `fsync` of the
directory: the SMTP `250` is sent after that, never before (or, for a message in the
journal, after the `fdatasync` of the batch that holds it). On start every message still
in a journal becomes a file in its process's `active/`, and every file in `active/` goes
back to `incoming/`: a crash may deliver a message twice, never lose it.
A restarted gateway process of a group (`Spool(root, slot=N)`) takes back only its own
`active.N/`; the rest of the spool belongs to the processes still running.

The sanitized output of an inbound message is the one entry written *without* fsync
(`put_derived`): it can always be made again from its original, which waits fsynced in
`hold/`. It is named `ORIGIN.out` and carries its length and CRC-32, so that `recover()`
can tell an output that a power loss cut short; such an output is dropped and its
original goes back to `incoming/` to be sanitized again (a duplicate at worst, never a
loss). This saves two of the four fsyncs a message cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from gateway.queue import journal
from gateway.queue.durable import fsync_dir, write_all
from gateway.queue.envelope import Envelope
from gateway.queue.journal import Journal

MAGIC = b"MUGAIKA1 "
DIRS = ("tmp", "incoming", "active", "deferred", "hold", "failed", "state")
#: A derived (sanitized output) entry is named after its original with this suffix.
DERIVED_SUFFIX = ".out"


class SpoolError(Exception):
    """The spool could not store or read an entry (disk full, permissions, corruption)."""


@dataclass
class RetryState:
    """Bookkeeping for an entry whose delivery failed temporarily."""

    attempts: int = 0
    first_attempt: float = 0.0
    next_try: float = 0.0
    last_error: str = ""
    #: Recipients not yet delivered; empty means "all of the envelope's".
    pending: list[str] = field(default_factory=list)
    #: How often a gateway process died while it held this entry (see `recover`).
    crashes: int = 0


@dataclass(frozen=True)
class Entry:
    """A claimed spool entry: its id, envelope and message bytes."""

    queue_id: str
    envelope: Envelope
    data: bytes
    state: RetryState


def new_queue_id() -> str:
    """Time-ordered and unguessable: microseconds since the epoch, then 24 random bits."""
    return f"{time.time_ns() // 1000:013X}{secrets.token_hex(3).upper()}"


def derived_id(origin: str) -> str:
    """The queue id of the sanitized output of `origin` (one output per original)."""
    return origin + DERIVED_SUFFIX


def _head(envelope: Envelope) -> bytes:
    """What a spool file holds before the message."""
    return MAGIC + envelope.to_json() + b"\n"


def _every_process_area(root: Path, stem: str) -> list[str]:
    """`stem` and every `stem.N`: an area that each process of a group has its own of
    (claims: `active`, journals: `journal`)."""
    return sorted(p.name for p in root.iterdir()
                  if p.name == stem or p.name.startswith(f"{stem}."))


def _every_claim_area(root: Path) -> list[str]:
    return _every_process_area(root, "active")


class _SharedDirSync:
    """fsync of one directory, shared by the threads that need it at the same time.

    A rename is durable once an fsync of its directory that *started after it* has
    finished. The spool's writer threads rename into `incoming/` at nearly the same
    moments, and every fsync waits for an ext4 journal commit: so a caller that finds
    one running waits for it and, since it may have started before the caller's rename,
    for the next one, which one of the waiters starts. A failed fsync counts for nobody.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cv = threading.Condition()
        self._started = 0
        self._finished = 0
        self._running = False

    def sync(self) -> None:
        with self._cv:
            wanted = self._started + 1
            while self._finished < wanted:
                if self._running:
                    self._cv.wait()
                else:
                    self._run_one()

    def _run_one(self) -> None:
        """Start the next fsync, with the lock released while it runs (caller holds it)."""
        self._running = True
        self._started += 1
        generation, synced = self._started, False
        self._cv.release()
        try:
            fsync_dir(self.path)
            synced = True
        finally:
            self._cv.acquire()
            self._running = False
            if synced:
                self._finished = generation
            self._cv.notify_all()


class Spool:
    def __init__(self, root: Path, slot: int | None = None) -> None:
        self.root = root
        #: Which gateway process of a group this is (None: the only one).
        self.slot = slot
        #: Where this process's claims live (see the module docstring).
        self.claims = "active" if slot is None else f"active.{slot}"
        try:
            for name in (*DIRS, self.claims):
                (root / name).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool under {root}: {exc.strerror}") from exc
        self._incoming_sync = _SharedDirSync(root / "incoming")
        #: Fresh messages a worker of this process took with their bytes (`put_fresh`).
        self.journal = Journal(root / ("journal" if slot is None else f"journal.{slot}"))
        self._root = str(root)

    def _path(self, area: str, queue_id: str) -> Path:
        return self.root / area / queue_id

    def _file(self, area: str, queue_id: str) -> str:
        """`_path` as a string, for the calls every message makes: building a Path
        (parse, then join) cost more than the rename or unlink it was for."""
        return f"{self._root}/{area}/{queue_id}"

    # --- writing -------------------------------------------------------------------
    def put(self, raw: bytes, envelope: Envelope, queue_id: str | None = None,
            prefix: bytes = b"") -> str:
        """Store `prefix + raw` durably in `incoming/` and return its queue id (the two
        are written as they are, not joined: ingress puts its Received line before a
        message of up to 25 MB without copying it)."""
        queue_id = queue_id or new_queue_id()
        self._write_durably("incoming", queue_id, [_head(envelope), prefix, raw])
        self._incoming_sync.sync()
        return queue_id

    async def put_fresh(self, raw: bytes, envelope: Envelope, queue_id: str,
                        prefix: bytes = b"") -> None:
        """Store `prefix + raw` durably in this process's journal, for a worker of this
        process that takes it with its bytes: no spool file unless it must wait.

        From the event loop; as durable as `put` when it returns (`gateway.queue.journal`)."""
        try:
            await self.journal.append(queue_id, [_head(envelope), prefix, raw])
        except OSError as exc:
            raise SpoolError(f"cannot spool message: {exc.strerror}") from exc

    def _write_durably(self, area: str, queue_id: str, buffers: list[bytes],
                       from_journal: bool = False) -> None:
        """A spool file in `area`, fsynced (its directory is the caller's to sync).

        `from_journal`: a copy of a journaled message, which a crash may have cut short
        before: its stale tmp file goes first (for a new message, an existing tmp file
        means two messages with one queue id, and the write fails)."""
        tmp = self._file("tmp", queue_id)
        if from_journal:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        # Plain system calls, not a buffered file: each call gives up the GIL and waits
        # to get it back from a busy event loop, and open() alone made four of them.
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                write_all(fd, buffers)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self._file(area, queue_id))
        except OSError as exc:
            with contextlib.suppress(OSError):  # tmp/ itself may be what is broken
                os.unlink(tmp)
            raise SpoolError(f"cannot spool message: {exc.strerror}") from exc

    def put_derived(self, raw: bytes, envelope: Envelope, origin: str) -> Entry:
        """Store the sanitized output of `origin`, already claimed (in `active/`), unsynced.

        Only valid while `origin` is kept in `hold/` (the caller moves it there next):
        `recover()` remakes a lost or torn output from it. The CRC-32 and length in the
        envelope let `recover()` tell a torn file from a whole one. Claimed, because the
        worker that made it delivers it next, without a trip through the queue.
        """
        queue_id = derived_id(origin)
        extra = {**envelope.extra, "origin": origin, "size": len(raw), "crc32": zlib.crc32(raw)}
        sealed = replace(envelope, extra=extra)
        tmp = self._path("tmp", queue_id)
        try:
            with open(tmp, "wb") as fh:
                fh.write(MAGIC + sealed.to_json() + b"\n")
                fh.write(raw)
            os.rename(tmp, self._path(self.claims, queue_id))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot spool message: {exc.strerror}") from exc
        return Entry(queue_id, sealed, raw, RetryState())

    # --- claiming ------------------------------------------------------------------
    def incoming_ids(self) -> list[str]:
        return sorted(p.name for p in (self.root / "incoming").iterdir())

    def take(self, queue_id: str) -> bool:
        """Move `queue_id` from incoming/ to active/; False if another worker took it."""
        try:
            os.rename(self._file("incoming", queue_id), self._file(self.claims, queue_id))
        except FileNotFoundError:
            return False
        return True

    def claim(self, queue_id: str) -> Entry | None:
        """`take` and read the entry; None if another worker took it."""
        return self.load(queue_id) if self.take(queue_id) else None

    def load(self, queue_id: str) -> Entry:
        """A claimed entry (in this process's active area), read in full."""
        envelope, data = self._read(self._path(self.claims, queue_id))
        return Entry(queue_id, envelope, data, self.read_state(queue_id))

    def _read(self, path: Path) -> tuple[Envelope, bytes]:
        # The envelope line, then the message in one read: reading the file whole and
        # splitting it held a 20 MB mail twice.
        with open(path, "rb") as fh:
            head, data = fh.readline(), fh.read()
        head, sep = head.removesuffix(b"\n"), head.endswith(b"\n")
        if not head.startswith(MAGIC) or not sep:
            raise SpoolError(f"corrupt spool file {path.name}")
        try:
            envelope = Envelope.from_json(head[len(MAGIC):])
        except (ValueError, TypeError, KeyError) as exc:
            raise SpoolError(f"corrupt spool file {path.name}") from exc
        extra = envelope.extra
        if "crc32" in extra and (extra.get("size") != len(data)
                                 or extra["crc32"] != zlib.crc32(data)):
            raise SpoolError(f"torn spool file {path.name}")
        return envelope, data

    # --- outcomes ------------------------------------------------------------------
    def done(self, queue_id: str) -> None:
        """Delivered (or handed on as a new entry): forget the entry.

        For an output, call this before `release_hold` of its original: the other order
        would leave, after a crash between the two, an output that nothing can remake.
        """
        if self.journal.holds(queue_id):
            self.journal.done(queue_id)
            return
        for path in (self._file(self.claims, queue_id), self._file("state", f"{queue_id}.json")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def to_hold(self, queue_id: str) -> None:
        """Keep a sanitized message's original until its output is delivered or bounced.

        An original that lives in the journal gets a spool file of its own: its output
        must wait, and the journal is for messages in flight."""
        self._move_claimed(queue_id, "hold")

    def _move_claimed(self, queue_id: str, area: str) -> None:
        """A claimed entry, in a spool file or in the journal, moves to `area`."""
        if not self.journal.holds(queue_id):
            os.rename(self._path(self.claims, queue_id), self._path(area, queue_id))
            return
        self._write_durably(area, queue_id, [self.journal.read(queue_id)], from_journal=True)
        fsync_dir(self.root / area)
        self.journal.done(queue_id)

    def release_hold(self, queue_id: str, failed: bool) -> None:
        """The output of `queue_id` is settled: drop its original, or keep it in failed/."""
        held = self._path("hold", queue_id)
        if failed:
            if held.exists():
                os.rename(held, self._path("failed", f"{queue_id}.original"))
        else:
            held.unlink(missing_ok=True)

    def claimed(self, queue_id: str) -> bool:
        """Whether this process holds `queue_id` (a claimed file or a journaled message)."""
        return self.journal.holds(queue_id) or self._path(self.claims, queue_id).exists()

    def defer(self, queue_id: str, state: RetryState) -> None:
        self.write_state(queue_id, state)
        self._move_claimed(queue_id, "deferred")

    def fail(self, queue_id: str, state: RetryState | None = None) -> None:
        """Bounced, undeliverable or poison: kept in failed/ for operators. With `state`,
        state/ID.json stays beside it and says why (`last_error`) and after how many tries."""
        if state is not None:
            self.write_state(queue_id, state)
        self._move_claimed(queue_id, "failed")
        if state is None:
            self._path("state", f"{queue_id}.json").unlink(missing_ok=True)

    # --- retry bookkeeping ---------------------------------------------------------
    def read_state(self, queue_id: str) -> RetryState:
        try:
            return RetryState(**json.loads(self._path("state", f"{queue_id}.json").read_text()))
        except FileNotFoundError:
            return RetryState()

    def drop_state(self, queue_id: str) -> None:
        """Forget the retry bookkeeping of `queue_id` (none is fine)."""
        self._path("state", f"{queue_id}.json").unlink(missing_ok=True)

    def write_state(self, queue_id: str, state: RetryState) -> None:
        path = self._path("state", f"{queue_id}.json")
        tmp = self._path("tmp", f"{queue_id}.state")
        try:
            with open(tmp, "w") as fh:
                json.dump(asdict(state), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, path)
        except OSError:  # a full disk: no half-written state left in tmp/
            tmp.unlink(missing_ok=True)
            raise

    def due_deferred(self, now: float) -> Iterator[str]:
        """Deferred entries whose next try has come, moved back to incoming/."""
        for path in sorted((self.root / "deferred").iterdir()):
            if self.read_state(path.name).next_try <= now:
                try:
                    os.rename(path, self._path("incoming", path.name))
                except FileNotFoundError:
                    continue
                yield path.name

    def recover(self) -> int:
        """After a crash or restart, put every entry back where a worker finds it.

        Claimed entries go back to incoming/ (returned: how many). Outputs are not
        fsynced (see `put_derived`), so then: a torn output is dropped; an original whose
        output is whole goes to hold/ (the crash came between the two steps); an original
        in hold/ without a live output goes back to incoming/ to be sanitized again.
        With a slot, only this process's own claims are taken back: the rest of the
        spool belongs to the processes of the group that are still running. A slot
        recovers after its process died, so each entry taken back counts a crash.
        """
        whole = self.slot is None
        if whole:
            # Never acknowledged with 250 (the client still has it), or a copy of a
            # journaled message cut short (the journal still has it).
            for path in (self.root / "tmp").iterdir():
                path.unlink()
        self._replay_journals(_every_process_area(self.root, "journal") if whole
                              else [self.journal.directory.name])
        names = self._unclaim(_every_claim_area(self.root) if whole else [self.claims])
        if whole:
            self._drop_torn_outputs()
            names_to_check = sorted(p.name for p in (self.root / "incoming").iterdir())
        else:
            names_to_check = names
            for name in names:  # this process died holding them: one may be the cause
                state = self.read_state(name)
                self.write_state(name, replace(state, crashes=state.crashes + 1))
        live = self._live_areas()
        for name in names_to_check:
            if not name.endswith(DERIVED_SUFFIX) and self._live_output(name, live):
                os.rename(self._path("incoming", name), self._path("hold", name))
        if whole:
            for path in sorted((self.root / "hold").iterdir()):
                self._recover_held(path.name, live)
        self._incoming_sync.sync()
        return len(names)

    def _replay_journals(self, names: list[str]) -> None:
        """Messages still live in a journal become claimed spool files of the process
        that journaled them (`journal.N` → `active.N`), as if it had crashed holding
        them; then the journal is cleared."""
        for name in names:
            directory, area = self.root / name, "active" + name.removeprefix("journal")
            (self.root / area).mkdir(exist_ok=True)
            for queue_id, content in journal.replay(directory):
                self._write_durably(area, queue_id, [content], from_journal=True)
            fsync_dir(self.root / area)
            journal.clear(directory)

    def _unclaim(self, areas: list[str]) -> list[str]:
        names = []
        for area in areas:
            for path in (self.root / area).iterdir():
                os.rename(path, self._path("incoming", path.name))
                names.append(path.name)
        return names

    def _live_areas(self) -> list[str]:
        """Where an output may live while its original waits in hold/."""
        return ["incoming", "deferred", *_every_claim_area(self.root)]

    def _drop_torn_outputs(self) -> None:
        for area in self._live_areas():
            for path in (self.root / area).iterdir():
                if not path.name.endswith(DERIVED_SUFFIX):
                    continue
                try:
                    self._read(path)
                except SpoolError:  # cut short by a power loss: made again from its original
                    path.unlink()
                    self._path("state", f"{path.name}.json").unlink(missing_ok=True)

    def _live_output(self, origin: str, live: list[str]) -> bool:
        out = derived_id(origin)
        return any(self._path(area, out).exists() for area in live)

    def _recover_held(self, origin: str, live: list[str]) -> None:
        if self._path("failed", derived_id(origin)).exists():
            self.release_hold(origin, failed=True)  # bounced; crash before release_hold
        elif not self._live_output(origin, live):
            # Output lost before it reached the disk, or delivered just before the crash
            # removed the original (then this is a duplicate: at-least-once).
            os.rename(self._path("hold", origin), self._path("incoming", origin))

    # --- figures for metrics and readiness -----------------------------------------
    def depth(self) -> dict[str, int]:
        """Entries per area; "active" counts the claims of every process of a group."""
        def count(areas: list[str]) -> int:
            return sum(1 for area in areas for _ in (self.root / area).iterdir())
        every = _every_claim_area(self.root)
        return {"incoming": count(["incoming"]), "active": count(every) + self.journal.live(),
                "deferred": count(["deferred"]), "failed": count(["failed"])}

    def oldest_age(self, now: float) -> float:
        """Seconds since the oldest waiting entry was written (0 when empty)."""
        mtimes = [p.stat().st_mtime for area in self._live_areas()
                  for p in (self.root / area).iterdir()]
        return max(0.0, now - min(mtimes)) if mtimes else 0.0

    def writable(self) -> bool:
        return os.access(self.root / "tmp", os.W_OK) and os.access(self.root / "incoming", os.W_OK)
