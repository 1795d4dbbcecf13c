"""Where a fresh message is made durable before its `250`: an append-only log, synced
once for every message that arrived meanwhile (group commit).

Why: a spool file per message cost six system calls in a writer thread (open, writev,
fsync, close, rename, a shared fsync of the directory) and a thread hop; every one of
them gave up the GIL and waited to get it back from the busy event loop
(docs/performance.md). Here the SMTP session appends its message and awaits; one thread
writes everything appended meanwhile in one `writev`, `fdatasync`s once, and wakes the
loop once for the whole batch. Only messages that a worker of the same process takes
with their bytes (`ingress.HAND_OVER_MAX_BYTES`) come here: they live in the journal and
in memory until they are settled, and in no spool file.

A record is `+ID LENGTH CRC32\\n` and LENGTH bytes: the bytes of a spool file
(`spool.MAGIC`, envelope, message), so that recovery writes them out as one. `-ID\\n`
says the message left the journal (delivered, or now kept in a spool file of its own).
Done records are not synced: one lost in a crash means a duplicate delivery, never a
loss. The log is cut in segments; a segment is deleted once every message appended to
it has left (a done record that goes with it may then be missed after a crash: again a
duplicate at worst).

After a crash, `Spool.recover()` writes every record without a done record out as a
spool file (`replay`) before anything new is appended. A torn record can only be the
last one written: its `fdatasync` never returned, so its message was never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, SimpleQueue

import structlog

from gateway.queue.durable import fsync_dir, write_all

log = structlog.get_logger("mugaika.journal")

#: A new segment is begun once the current one is this long.
SEGMENT_BYTES = 32 << 20
SUFFIX = ".log"

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]
#: What the writer thread is handed: a record and who waits for it, the queue id of a
#: message that left, or None to stop.
_Item = tuple["_Record", asyncio.AbstractEventLoop, "asyncio.Future[None]"] | str | None


class JournalError(OSError):
    """A batch could not be written or synced: its messages were not acknowledged."""


@dataclass
class _Record:
    queue_id: str
    header: bytes
    content: list[bytes]
    size: int


@dataclass
class _Segment:
    seq: int
    fd: int
    size: int = 0
    #: Messages appended here that have not left yet.
    live: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Place:
    seq: int
    offset: int
    length: int


class Journal:
    """One process's journal directory: `append` from an event loop, `done` and `read`
    from any thread. The writer thread starts with the first append."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: To the writer thread. A C queue, not a Condition: put() is one call for the
        #: loop, where a Condition's acquire, notify and release were Python code.
        self._queue: SimpleQueue[_Item] = SimpleQueue()
        #: Guards where live messages are (`_places`, the segments' `live` sets).
        self._lock = threading.Lock()
        self._places: dict[str, _Place] = {}
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    async def append(self, queue_id: str, content: list[bytes]) -> None:
        """Return once `content` (a spool file's bytes, in pieces) is on disk; raise
        `JournalError` when it could not be put there."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        size, crc = 0, 0
        for piece in content:
            size, crc = size + len(piece), zlib.crc32(piece, crc)
        record = _Record(queue_id, f"+{queue_id} {size} {crc:08x}\n".encode(), content, size)
        if self._closed:
            raise JournalError("journal closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
            self._thread.start()
        self._queue.put((record, loop, waiter))
        await waiter

    def holds(self, queue_id: str) -> bool:
        """Whether `queue_id` lives in this journal (appended, not yet left)."""
        return queue_id in self._places

    def done(self, queue_id: str) -> None:
        """The message left the journal: delivered, or kept in a spool file now."""
        with self._lock:
            place = self._places.pop(queue_id, None)
            if place is None:
                return
            self._segments[place.seq].live.discard(queue_id)
        self._queue.put(queue_id)

    def read(self, queue_id: str) -> bytes:
        """A live record's content (a spool file's bytes), read back from its segment."""
        with self._lock:
            place = self._places[queue_id]
            return os.pread(self._segments[place.seq].fd, place.length, place.offset)

    def live(self) -> int:
        """How many messages live here now."""
        return len(self._places)

    def close(self) -> None:
        """Write what is queued, stop the writer thread, close the segments."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        for segment in self._segments.values():
            os.close(segment.fd)
        self._segments.clear()

    # --- the writer thread ---------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            records: list[_Record] = []
            waiters: list[_Waiter] = []
            dones: list[str] = []
            for item in self._take_all():
                if item is None:
                    stop = True
                elif isinstance(item, str):
                    dones.append(item)
                else:
                    records.append(item[0])
                    waiters.append(item[1:])
            try:
                self._write(records, dones)
                error = None
            except Exception as exc:  # never a session left waiting: it answers 451
                log.exception("journal_write_failed", messages=len(records))
                reason = exc.strerror if isinstance(exc, OSError) else None
                error = JournalError(getattr(exc, "errno", None) or errno.EIO,
                                     reason or type(exc).__name__)
            for loop, waiter in waiters:
                loop.call_soon_threadsafe(_resolve, waiter, error)

    def _take_all(self) -> list[_Item]:
        """Wait for the next item, then take whatever else is queued: the batch."""
        items = [self._queue.get()]
        with contextlib.suppress(Empty):
            while True:
                items.append(self._queue.get_nowait())
        return items

    def _write(self, records: list[_Record], dones: list[str]) -> None:
        """One writev of the batch and the done records; one fdatasync when the batch
        holds messages. After a failure nothing of the batch counts and a new segment is
        begun: what the failed write left in this one is unknown."""
        buffers = [piece for r in records for piece in (r.header, *r.content)]
        buffers += [f"-{queue_id}\n".encode() for queue_id in dones]
        segment = self._segment()
        try:
            write_all(segment.fd, buffers)
            if records:
                os.fdatasync(segment.fd)
        except OSError:
            self._current = None
            raise
        self._placed(segment, records, sum(len(b) for b in buffers))
        if segment.size >= SEGMENT_BYTES:
            self._current = None
        self._drop_empty()

    def _placed(self, segment: _Segment, records: list[_Record], written: int) -> None:
        offset = segment.size
        with self._lock:
            for record in records:
                offset += len(record.header)
                self._places[record.queue_id] = _Place(segment.seq, offset, record.size)
                segment.live.add(record.queue_id)
                offset += record.size
            segment.size += written

    def _drop_empty(self) -> None:
        """Delete the segments, other than the current one, with no message left."""
        with self._lock:
            empty = [s for s in self._segments.values()
                     if not s.live and s is not self._current]
            for segment in empty:
                del self._segments[segment.seq]
        for segment in empty:
            os.close(segment.fd)
            with contextlib.suppress(OSError):
                os.unlink(self.directory / _name(segment.seq))

    def _segment(self) -> _Segment:
        if self._current is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            seq = max(_sequence_numbers(self.directory), default=0) + 1
            fd = os.open(self.directory / _name(seq), os.O_RDWR | os.O_CREAT | os.O_APPEND,
                         0o600)
            fsync_dir(self.directory)  # the segment's name must survive a crash too
            self._current = self._segments[seq] = _Segment(seq, fd)
        return self._current


def _name(seq: int) -> str:
    return f"{seq:08d}{SUFFIX}"


def _sequence_numbers(directory: Path) -> list[int]:
    return [int(p.stem) for p in directory.glob(f"*{SUFFIX}") if p.stem.isdigit()]


def _resolve(waiter: asyncio.Future[None], error: JournalError | None) -> None:
    if waiter.done():  # the session went away meanwhile
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


def replay(directory: Path) -> Iterator[tuple[str, bytes]]:
    """The messages still live in a journal directory, oldest first: (queue id, the
    bytes of its spool file). A torn record ends its segment."""
    if not directory.is_dir():
        return
    contents: dict[str, bytes] = {}
    for seq in sorted(_sequence_numbers(directory)):
        name = _name(seq)
        data = (directory / name).read_bytes()
        position = 0
        while (end := data.find(b"\n", position)) >= 0:
            line, position = data[position:end], end + 1
            if line.startswith(b"-"):
                contents.pop(line[1:].decode("ascii", "replace"), None)
                continue
            record = _record(line, data, position)
            if record is None:
                log.warning("journal_torn_record", segment=name, offset=position)
                break
            contents[record[0]] = record[1]
            position += len(record[1])
    yield from contents.items()


def _record(line: bytes, data: bytes, position: int) -> tuple[str, bytes] | None:
    """A `+` record's queue id and content, or None when it is torn or not a record."""
    try:
        queue_id, size, crc = line.removeprefix(b"+").decode("ascii").split(" ")
        length, checksum = int(size), int(crc, 16)
    except ValueError:
        return None
    content = data[position:position + length]
    if not line.startswith(b"+") or len(content) != length or zlib.crc32(content) != checksum:
        return None
    return queue_id, content


def clear(directory: Path) -> None:
    """Delete a journal's segments, once `replay` put their messages in spool files."""
    for seq in _sequence_numbers(directory):
        (directory / _name(seq)).unlink()
