"""The SMTP server side of ingress: one `SMTPSession` per inbound connection.

RFC 5321 with SIZE (RFC 1870), 8BITMIME, PIPELINING (RFC 2920) and ENHANCEDSTATUSCODES
(RFC 2034); no AUTH, no STARTTLS (the gateway listens for the Internet MTA in front of
it, not for users). The policy lives in the hooks object (`gateway.relay.ingress.IngressHandler`,
shaped after aiosmtpd's handlers): `handle_RCPT` decides a recipient, `handle_DATA`
spools a message and answers for it.

mugaika first used aiosmtpd's server here, and keeps its rules (the command and
bogus-command limits, the address parser, DATA ended only by <CRLF>.<CRLF>). It is not
used any more because of what it costs per message: a coroutine per connection awaiting
each line through a StreamReader, a timer re-armed per command and a send() per reply
were 15 % of a gateway process under load, while the gateway must fit SMTP in, sanitize
and SMTP out into the time aiosmtpd alone takes to accept. Here a connection is a plain
asyncio.Protocol: the commands that arrived together are answered together in one write
(what PIPELINING is for), DATA content is found with one search per received block, and
only DATA's hook (the spool write and its fsync) is awaited.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Protocol, cast

import structlog

log = structlog.get_logger("mugaika.smtpd")

#: The end of DATA (RFC 5321 4.1.1.4), with the CRLF that ends the message's last line.
DATA_END = b"\r\n.\r\n"
#: RFC 5321 4.5.3.1.4: 512 octets a command line; MAIL and RCPT get room for parameters.
COMMAND_LINE_BYTES = 512
PATH_LINE_BYTES = 1024
#: Junk lines (unknown commands, empty or non-ASCII lines, overlong commands) tolerated in
#: one session before it is closed (aiosmtpd counted unknown commands only; Postfix has a
#: hard error limit): a pipelined flood of junk must not make a reply per line.
BOGUS_LIMIT = 5
#: While a hook runs (or the client reads no replies), input is buffered; beyond this
#: much the socket stops being read.
PAUSE_BYTES = 256 * 1024
#: During DATA, the idle timer moves on with each this many bytes received, not with
#: every byte: a client that trickles a byte now and then (slowloris) cannot hold its
#: connection slot for ever. At the default 60 s timeout a message must arrive at 1 KiB/s
#: or more; RFC 5321 4.5.3.2.5 lets a server give up after 3 minutes without progress.
DATA_PROGRESS_BYTES = 64 * 1024
#: Replies written together at most: then the transport may say its buffer is full.
REPLY_BATCH = 64
#: A client over its connection cap is given this long for a slot before it hears 421,
#: asked again every ADMISSION_RETRY seconds. Postfix by default sends QUIT and closes
#: without reading the 221 (`smtp_skip_quit_response`), and its next connection may
#: reach another gateway process before this one has read that QUIT: refusing at once
#: deferred the front MTA's mail (20 sessions reconnecting: 421s in 3 of 3 runs).
ADMISSION_GRACE = 0.5
ADMISSION_RETRY = 0.02
#: RFC 5321 4.5.3.1.3: a local part of at most 64 octets.
LOCAL_PART_LIMIT = 64

REPLY_TEMPFAIL = "451 4.3.0 Temporary local problem, try again later"
REPLY_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
_SYNTAX = "501 5.5.4 Syntax: {}"
#: `<local@domain>` with a dot-atom local part and a plain domain: what nearly every MTA
#: sends. The stdlib header parser (5 % of the gateway's time under load when it read
#: every address) returns exactly these two strings for it; anything else still goes to it.
_PLAIN_PATH = re.compile(
    r"<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\.)*[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>\s*(.*)", re.S)
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
#: What a reply must not echo from the client: anything but printable ASCII.
_UNPRINTABLE = re.compile(r"[^ -~]")
#: What an address may be once parsed (RFC 5321 4.1.2): a Dot-string or a Quoted-string of
#: qtextSMTP and quoted-pairSMTP (no control character, no DEL), then a domain or an
#: address literal; a bare local part too (RCPT's `<postmaster>`; the policy decides).
#: The stdlib parser lets `"x\rX-Injected: yes"`, NUL, ESC and `a..b` through, and the
#: address ends up in our own Received line and the envelope sent downstream.
_ADDRESS = re.compile(
    rf'(?:{_ATOM}(?:\.{_ATOM})*|"(?:[ !#-\[\]-~]|\\[ -~])*")'
    r"(?:@(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[!-Z^-~]+\]))?")


@dataclass(frozen=True)
class ServerLimits:
    hostname: str
    max_message_bytes: int
    max_line_bytes: int
    timeout: float
    #: How often one session may send each command (aiosmtpd's command_call_limit).
    max_commands: int


@dataclass
class Session:
    peer: str
    helo: str = ""
    extended: bool = False


@dataclass
class Transaction:
    """One MAIL ... DATA. `mail_from` is None before MAIL and "" for the null sender."""

    mail_from: str | None = None
    rcpt_tos: list[str] = field(default_factory=list)
    #: The message as received: dot-stuffing undone, the end marker gone.
    content: bytes = b""


class Hooks(Protocol):
    def handle_RCPT(self, session: Session, txn: Transaction, address: str) -> str:
        """The reply to RCPT; append `address` to `txn.rcpt_tos` to accept it."""

    async def handle_DATA(self, session: Session, txn: Transaction) -> str:
        """The reply to the end of DATA; `250` only once the message is safe."""


class Admission(Protocol):
    """Who may open a session (`gateway.relay.ingress.ConnectionLimiter`)."""

    def acquire(self, addr: str) -> bool: ...

    def release(self, addr: str) -> None: ...


def parse_path(arg: str) -> tuple[str | None, str]:
    """The address of a MAIL FROM/RCPT TO argument and the parameters after it.

    The address is None when it cannot be parsed or is not RFC 5321's (553), "" for
    "<>". `<a@b>` takes a fast path; anything else goes to the stdlib parser, as
    aiosmtpd's `_getaddr` did, and what it makes of it is checked against `_ADDRESS`."""
    plain = _PLAIN_PATH.fullmatch(arg)
    if plain is not None:
        address, rest = plain[1], plain[2]
    else:
        try:
            parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
            token, rest = parse(arg)
            address = token.addr_spec
        # The 3.11 parser raises more than HeaderParseError on some invalid domains
        # (`<x@[>`): a malformed address (553), not a local problem.
        except (HeaderParseError, AttributeError, IndexError, ValueError):
            return None, ""
    if address == "<>":  # the null reverse-path
        return "", rest
    if (not address or len(address.rpartition("@")[0]) > LOCAL_PART_LIMIT
            or not _ADDRESS.fullmatch(address)):
        return None, ""
    return address, rest


def parse_params(rest: str) -> dict[str, str] | None:
    """ESMTP parameters `KEY[=VALUE]` (upper-cased), or None when one is malformed."""
    params: dict[str, str] = {}
    for param in rest.upper().split():
        key, eq, value = param.partition("=")
        if not key.isalnum() or (eq and not value):
            return None
        params[key] = value
    return params


class SMTPSession(asyncio.Protocol):
    """One inbound SMTP connection. Commands are answered in order; the replies to what
    arrived in one read go out in one write."""

    def __init__(self, hooks: Hooks, limits: ServerLimits, admission: Admission) -> None:
        self.hooks = hooks
        self.limits = limits
        self.admission = admission
        self.session = Session("")
        self.txn = Transaction()
        self.transport: asyncio.Transport | None = None
        self._in = bytearray()
        self._out: list[bytes] = []
        #: DATA content as it arrives, after the CRLF that ended the DATA line.
        self._data: bytearray | None = None
        self._searched = 0
        self._too_big = False
        self._skipping_line = False
        self._busy = False
        self._paused = False
        #: The client does not read its replies (the transport's buffer is full).
        self._unread = False
        self._counts: Counter[str] = Counter()
        self._bogus = 0
        self._admitted = False
        #: Until the client is greeted (or refused), what it sends is only buffered.
        self._welcomed = False
        self._last = 0.0
        self._progress = 0
        self._timer: asyncio.TimerHandle | None = None
        self._hook: asyncio.Task[None] | None = None
        self._commands: dict[str, Callable[[str], None]] = {
            "HELO": self._helo, "EHLO": self._ehlo, "MAIL": self._mail, "RCPT": self._rcpt,
            "DATA": self._data_command, "RSET": self._rset, "NOOP": self._noop,
            "QUIT": self._quit, "VRFY": self._vrfy, "HELP": self._help,
        }

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.session.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self._admit(asyncio.get_running_loop().time() + ADMISSION_GRACE)

    def _admit(self, deadline: float) -> None:
        """Greet once the connection cap has room, waiting up to ADMISSION_GRACE for it."""
        if self.transport is None:
            return  # the client left while it waited
        loop = asyncio.get_running_loop()
        if not self.admission.acquire(self.session.peer):
            if loop.time() < deadline:
                loop.call_later(ADMISSION_RETRY, self._admit, deadline)
                return
            self.transport.write(b"421 4.7.0 Too many connections from your address\r\n")
            self.transport.close()
            return
        self._admitted = self._welcomed = True
        self._reply(f"220 {self.limits.hostname} mugaika ESMTP")
        self._flush()
        self._last = loop.time()
        self._timer = loop.call_later(self.limits.timeout, self._check_idle)
        if self._in:  # it talked before the greeting: its commands are answered after it
            self._advance()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._leave()
        self.transport = None

    def _leave(self) -> None:
        """The session is over: free its slot now, before its last reply is written, not
        once the transport is gone. A front MTA at its concurrency limit reconnects as
        soon as it reads `221`, maybe to another process of the group: the closed session
        must not still count then."""
        if self._admitted:
            self._admitted = False
            self.admission.release(self.session.peer)

    def pause_writing(self) -> None:
        """The client stopped reading its replies: stop reading its commands until it
        does, so that pipelined commands cannot pile replies up in memory."""
        self._unread = True

    def resume_writing(self) -> None:
        self._unread = False
        self._advance()

    def eof_received(self) -> bool:
        """The client closed its side: close ours, and its slot is free already."""
        self._leave()
        return False

    def _check_idle(self) -> None:
        """One timer a session, moved on when it fires (not re-armed per command); a
        session whose DATA hook is running is not idle.

        What counts as activity is a whole command line, or DATA_PROGRESS_BYTES of a
        message (Postfix's `smtpd_per_record_deadline`): bytes that never complete a
        command do not keep a session alive."""
        loop = asyncio.get_running_loop()
        idle = 0.0 if self._busy else loop.time() - self._last
        if idle < self.limits.timeout:
            self._timer = loop.call_later(self.limits.timeout - idle, self._check_idle)
            return
        log.info("smtp_timeout", client=self.session.peer)
        self._reply("421 4.4.2 Timeout, closing connection")
        self._close()

    def data_received(self, data: bytes) -> None:
        self._in += data
        if not self._welcomed:
            if len(self._in) > PAUSE_BYTES and self.transport is not None:
                self.transport.pause_reading()
                self._paused = True
            return
        if self._data is not None:
            self._progress += len(data)
            if self._progress >= DATA_PROGRESS_BYTES:
                self._progress = 0
                self._last = asyncio.get_running_loop().time()
        if not self._busy and not self._unread:
            self._advance()
        elif len(self._in) > PAUSE_BYTES and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def _advance(self) -> None:
        """Handle every complete command (and DATA content) waiting, then answer at once
        (every REPLY_BATCH replies at the latest, so that a full buffer stops the loop)."""
        while not self._busy and not self._unread and self.transport is not None:
            if self._data is not None:
                if not self._read_data():
                    break
            elif (line := self._next_line()) is not None:
                self._command(line)
                if len(self._out) >= REPLY_BATCH:
                    self._flush()
            else:
                break
        self._flush()
        if self._paused and not self._busy and not self._unread and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _reply(self, line: str) -> None:
        self._out.append(line.encode("ascii") + b"\r\n")

    def _flush(self) -> None:
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def _close(self) -> None:
        self._leave()
        self._flush()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # -- commands ------------------------------------------------------------------------

    def _next_line(self) -> bytes | None:
        """The next command line without its line end. An overlong one is skipped whole
        and answered with 500 (as aiosmtpd did), without keeping it in memory."""
        while (end := self._in.find(b"\n")) >= 0:
            line = bytes(self._in[:end]).rstrip(b"\r")
            del self._in[:end + 1]
            self._last = asyncio.get_running_loop().time()  # a whole line: activity
            if not self._skipping_line:
                return line
            self._skipping_line = False
            self._junk("500 5.5.2 Command line too long")
        if len(self._in) > self.limits.max_line_bytes:
            self._skipping_line = True
            self._in.clear()
        return None

    def _command(self, line: bytes) -> None:
        verb_bytes, _, arg_bytes = line.partition(b" ")
        try:
            verb = verb_bytes.upper().decode("ascii")
            arg = arg_bytes.strip().decode("ascii")
        except UnicodeDecodeError:
            self._junk("500 5.5.2 Error: strict ASCII mode")
            return
        if not verb:
            self._junk("500 5.5.2 Error: bad syntax")
            return
        limit = PATH_LINE_BYTES if verb in ("MAIL", "RCPT") else COMMAND_LINE_BYTES
        if len(line) + 2 > limit:
            self._junk("500 5.5.2 Command line too long")
            return
        handler = self._commands.get(verb)
        if handler is None:
            # Echoed as printable ASCII only: a control character (NUL, ESC, a bare CR)
            # in the verb made the reply itself malformed (found by fuzz/, issue 17).
            shown = _UNPRINTABLE.sub("?", verb[:20])
            self._junk(f'500 5.5.2 Error: command "{shown}" not recognized')
            return
        self._counts[verb] += 1
        if self._counts[verb] > self.limits.max_commands:
            log.warning("smtp_command_limit", client=self.session.peer, command=verb)
            self._reply(f"421 4.7.0 {verb} sent too many times")
            self._close()
            return
        try:
            handler(arg)
        except Exception as error:  # a bug in a hook: the client retries, no traceback
            log.error("smtp_internal_error", error=type(error).__name__,
                      client=self.session.peer)
            self._reply(REPLY_TEMPFAIL)

    def _junk(self, reply: str) -> None:
        self._bogus += 1
        if self._bogus >= BOGUS_LIMIT:
            log.warning("smtp_bogus_commands", client=self.session.peer)
            self._reply("502 5.5.1 Too many unrecognized commands, goodbye.")
            self._close()
            return
        self._reply(reply)

    def _helo(self, arg: str) -> None:
        if self._greeted("HELO", arg, extended=False):
            self._reply(f"250 {self.limits.hostname}")

    def _ehlo(self, arg: str) -> None:
        if self._greeted("EHLO", arg, extended=True):
            for line in (self.limits.hostname, f"SIZE {self.limits.max_message_bytes}",
                         "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"):
                self._reply(f"250-{line}")
            self._reply("250 HELP")

    def _greeted(self, verb: str, arg: str, extended: bool) -> bool:
        """What HELO and EHLO share: a name is required, and a greeting starts afresh."""
        if not arg:
            self._reply(_SYNTAX.format(f"{verb} hostname"))
            return False
        self.session.helo, self.session.extended, self.txn = arg, extended, Transaction()
        return True

    def _mail(self, arg: str) -> None:
        nested = "503 5.5.1 Error: nested MAIL command" if self.txn.mail_from is not None else None
        if (checked := self._checked_path("FROM:", arg, nested)) is None:
            return
        path, address, rest = checked
        params = parse_params(rest) if self.session.extended or not rest else None
        if not path or params is None:
            self._reply(_SYNTAX.format("MAIL FROM:<address>"))
            return
        if (refusal := self._mail_params(params)) is not None:
            self._reply(refusal)
            return
        self.txn.mail_from = address
        self._reply("250 2.1.0 OK")

    def _checked_path(self, keyword: str, arg: str,
                      out_of_order: str | None) -> tuple[str, str, str] | None:
        """MAIL's or RCPT's argument as given, its address and what follows; None once
        refused (the order of commands first, then the address)."""
        path = _keyword_arg(keyword, arg)
        address, rest = parse_path(path) if path else ("", "")
        if not self.session.helo:
            self._reply("503 5.5.1 Send HELO/EHLO first")
        elif out_of_order is not None:
            self._reply(out_of_order)
        elif address is None:
            self._reply("553 5.1.3 Error: malformed address")
        else:
            return path or "", address, rest
        return None

    def _mail_params(self, params: dict[str, str]) -> str | None:
        """Why MAIL's parameters are refused, or None (SIZE and BODY are known)."""
        body = params.pop("BODY", "7BIT")
        if body not in ("7BIT", "8BITMIME"):
            return "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"
        size = params.pop("SIZE", "0")
        if not size.isdigit():
            return _SYNTAX.format("MAIL FROM:<address> SIZE=number")
        if int(size) > self.limits.max_message_bytes:
            return REPLY_TOO_BIG
        if params:
            return "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
        return None

    def _rcpt(self, arg: str) -> None:
        need_mail = "503 5.5.1 Need MAIL command" if self.txn.mail_from is None else None
        if (checked := self._checked_path("TO:", arg, need_mail)) is None:
            return
        _, address, rest = checked
        if not address:
            self._reply(_SYNTAX.format("RCPT TO:<address>"))
        elif rest.strip():
            self._reply("555 5.5.4 RCPT TO parameters not recognized or not implemented")
        else:
            self._reply(self.hooks.handle_RCPT(self.session, self.txn, address))

    def _data_command(self, arg: str) -> None:
        if not self.session.helo:
            self._reply("503 5.5.1 Send HELO/EHLO first")
        elif not self.txn.rcpt_tos:
            self._reply("503 5.5.1 Need RCPT command")
        elif arg:
            self._reply(_SYNTAX.format("DATA"))
        else:
            self._reply("354 End data with <CR><LF>.<CR><LF>")
            self._data = bytearray(b"\r\n")  # an empty message ends at once
            self._searched = 0
            self._progress = 0
            self._too_big = False

    def _rset(self, arg: str) -> None:
        if arg:
            self._reply(_SYNTAX.format("RSET"))
            return
        self.txn = Transaction()
        self._reply("250 2.0.0 OK")

    def _noop(self, arg: str) -> None:
        self._reply("250 2.0.0 OK")

    def _quit(self, arg: str) -> None:
        if arg:
            self._reply(_SYNTAX.format("QUIT"))
            return
        self._reply("221 2.0.0 Bye")
        self._close()

    def _vrfy(self, arg: str) -> None:
        if not arg:
            self._reply(_SYNTAX.format("VRFY <address>"))
            return
        self._reply("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery")

    def _help(self, arg: str) -> None:
        self._reply("214 2.0.0 Supported commands: " + " ".join(sorted(self._commands)))

    # -- DATA ----------------------------------------------------------------------------

    def _read_data(self) -> bool:
        """Take in what arrived of the message; True once its end marker was found.

        Only <CRLF>.<CRLF> ends it: a bare LF or CR before the dot (SMTP smuggling) stays
        inside. Beyond the size limit only the last bytes are kept (they may start the end
        marker), and the message is read to its end before 552 (RFC 5321 4.2.5)."""
        data = self._data
        assert data is not None
        data += self._in
        self._in.clear()
        end = data.find(DATA_END, self._searched)
        if end < 0:
            self._searched = max(len(data) - len(DATA_END) + 1, 0)
            if len(data) > self.limits.max_message_bytes + len(DATA_END) + 2:
                self._too_big = True
                del data[:-(len(DATA_END) - 1)]
                self._searched = 0
            return False
        self._in += memoryview(data)[end + len(DATA_END):]  # what was pipelined after it
        self._data = None
        if self._too_big or end > self.limits.max_message_bytes:
            self._reply(REPLY_TOO_BIG)
            self.txn = Transaction()
            return True
        self.txn.content = unstuff(bytes(memoryview(data)[2:end + 2]))
        self._busy = True
        # Held here: the loop keeps only a weak reference to a task.
        self._hook = asyncio.get_running_loop().create_task(self._finish_data(self.txn))
        return True

    async def _finish_data(self, txn: Transaction) -> None:
        """Run the DATA hook; its reply, then whatever the client pipelined after."""
        try:
            reply = await self.hooks.handle_DATA(self.session, txn)
        except Exception as error:  # never a traceback to the client; it keeps the mail
            log.error("smtp_internal_error", error=type(error).__name__,
                      client=self.session.peer)
            reply = REPLY_TEMPFAIL
        self.txn = Transaction()
        self._busy, self._hook = False, None
        self._last = asyncio.get_running_loop().time()
        self._reply(reply)
        self._advance()


def _keyword_arg(keyword: str, arg: str) -> str | None:
    """The argument after "FROM:" / "TO:" (any case), or None when the keyword is missing."""
    if arg[:len(keyword)].upper() != keyword:
        return None
    return arg[len(keyword):].strip()


def unstuff(content: bytes) -> bytes:
    """Undo DATA transparency (RFC 5321 4.5.2): a leading "." of each line is dropped."""
    if content.startswith(b"."):
        content = content[1:]
    return content.replace(b"\r\n.", b"\r\n")
