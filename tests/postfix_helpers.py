"""Private Postfix instances for the tests, configured from deploy/postfix.md.

Each instance has its own configuration, queue and data directories under one temporary
directory, listens on 127.0.0.1 only, and its `master` runs as a child of the test (why,
and what is added to the document's blocks: deploy/postfix.md, "How the tests run this").
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from tests.conftest import ROOT, wait_for_port

DOC = ROOT / "deploy" / "postfix.md"
STOCK_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")
MASTER = Path("/usr/lib/postfix/sbin/master")
SMTP_SOURCE = Path("/usr/sbin/smtp-source")
#: Seconds after which an instance's master exits on its own (pytest's timeout is 300).
MASTER_LIFETIME = 600
#: The Maildirs belong to this uid and gid (the document's `static:5000`).
MAIL_UID = 5000
_FENCE = re.compile(r"^```([^\n`]+)\n(.*?)^```$", re.M | re.S)
_SITE_ROW = re.compile(r"^\| `([^`]+)` \|", re.M)


def doc_blocks(text: str) -> dict[str, str]:
    """The fenced blocks of the document whose info string names a file and a side,
    e.g. ```` ```main.cf internet ```` -> {"main.cf internet": "..."}."""
    return {info.strip(): body for info, body in _FENCE.findall(text)
            if info.split()[0] in ("main.cf", "master.cf")}


def site_values(text: str) -> set[str]:
    """The literals the document's "Site-specific values" table lists."""
    section = text.split("## Site-specific values", 1)[1].split("\n## ", 1)[0]
    return set(_SITE_ROW.findall(section))


def substitute(blocks: list[str], values: dict[str, str]) -> list[str]:
    """`blocks` with each site-specific literal replaced; every literal must occur in them,
    so that a test cannot silently keep a value the document no longer has."""
    for literal, value in values.items():
        assert any(literal in b for b in blocks), f"{literal!r} is not in the blocks any more"
        blocks = [b.replace(literal, value) for b in blocks]
    return blocks


def settings(main_cf: str) -> list[str]:
    """`name = value` of each logical line of a main.cf text (continuations joined)."""
    lines: list[str] = []
    for line in main_cf.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and lines:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.strip())
    return lines


def postfix_binaries_missing() -> list[str]:
    needed = [MASTER, SMTP_SOURCE, STOCK_MASTER_CF, Path("/usr/sbin/postconf"),
              Path("/usr/sbin/sendmail"), Path("/usr/sbin/postmap")]
    return [str(p) for p in needed if not p.exists()]


class Postfix:
    """One private Postfix instance; `configure`, then `start`/`stop` as often as needed."""

    def __init__(self, name: str, root: Path, hostname: str) -> None:
        self.name = name
        self.dir = root / name
        self.conf = self.dir / "etc"
        self.queue = self.dir / "queue"
        self.maillog = self.dir / "maillog"
        self.hostname = hostname
        self.proc: subprocess.Popen[bytes] | None = None

    def postconf(self, *args: str) -> None:
        subprocess.run(["postconf", "-c", str(self.conf), *args], check=True,
                       capture_output=True)

    def configure(self, main_cf: str, master_cf: str, listen_port: int | None) -> None:
        """Stock master.cf + the scaffolding of a private instance + the given blocks."""
        for d in (self.conf, self.queue, self.dir / "data"):
            d.mkdir(parents=True)
        shutil.chown(self.dir / "data", "postfix")
        shutil.copy(STOCK_MASTER_CF, self.conf / "master.cf")
        (self.conf / "main.cf").write_text("")
        self.postconf("-e", "compatibility_level = 3.6", f"queue_directory = {self.queue}",
                      f"data_directory = {self.dir / 'data'}", f"myhostname = {self.hostname}",
                      f"maillog_file = {self.maillog}", f"maillog_file_prefixes = {self.dir}",
                      "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4",
                      "mydestination =", "alias_maps =", "alias_database =")
        self.postconf("-F", "*/*/chroot = n")
        self.postconf("-M#", "smtp/inet")
        if listen_port is not None:
            self.append_master(f"127.0.0.1:{listen_port} inet n - n - - smtpd\n")
        self.postconf("-e", *settings(main_cf))
        self.append_master(master_cf)

    def append_master(self, text: str) -> None:
        with open(self.conf / "master.cf", "a", encoding="utf-8") as f:
            f.write("\n" + text)

    def mailboxes(self, source: Path, domain: str, base: Path, names: list[str]) -> None:
        """virtual(8) Maildirs `names`@`domain` under `base`: the map `source` and its .db."""
        base.mkdir(parents=True, exist_ok=True)
        os.chown(base, MAIL_UID, MAIL_UID)
        source.write_text("".join(f"{n}@{domain} {domain}/{n}/\n" for n in names))
        subprocess.run(["postmap", "-c", str(self.conf), f"hash:{source}"], check=True)

    def sender_mailbox(self, domain: str, base: Path) -> None:
        """A Maildir for the sender's domain, standing in for the Internet: DSNs land there."""
        source = self.conf / "senders"
        self.postconf("-e", f"virtual_mailbox_domains = {domain}",
                      f"virtual_mailbox_base = {base}",
                      f"virtual_mailbox_maps = hash:{source}",
                      f"virtual_uid_maps = static:{MAIL_UID}",
                      f"virtual_gid_maps = static:{MAIL_UID}")
        self.mailboxes(source, domain, base, ["alice"])

    def start(self, port: int) -> Postfix:
        """Create missing queue directories (`postfix check`), then run `master` in the
        foreground in a session of its own, until `port` answers."""
        subprocess.run(["postfix", "-c", str(self.conf), "check"], check=True,
                       capture_output=True)
        # -e: should the test process be killed before it can stop master, master exits
        # by itself after that long (its daemons follow). A parent-death signal would not
        # do: master changes its effective uid at start, which clears it.
        self.proc = subprocess.Popen([str(MASTER), "-c", str(self.conf), "-d",
                                      "-e", str(MASTER_LIFETIME)], start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port(port, proc=self.proc)
        return self

    def stop(self) -> None:
        """SIGTERM to master (it ends its children, as `postfix stop` does); SIGKILL to the
        whole session if it does not exit in time."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        self._wait_session_gone(proc.pid)

    @staticmethod
    def _wait_session_gone(sid: int, timeout: float = 10.0) -> None:
        """Every process of master's session has exited (daemons finish their work)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(sid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.killpg(sid, signal.SIGKILL)

    def sendmail(self, message: bytes, sender: str, *recipients: str) -> None:
        """Postfix's own sendmail(1) into this instance (pickup), as a local program would."""
        subprocess.run(["sendmail", "-C", str(self.conf), "-f", sender, "-i", *recipients],
                       input=message, check=True, timeout=30)

    def queue_is_empty(self) -> bool:
        areas = ("maildrop", "incoming", "active", "deferred", "hold")
        return not any(p.is_file() for a in areas for p in (self.queue / a).rglob("*"))

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""


def private_root() -> Path:
    """A temporary directory Postfix's own users can reach (pytest's tmp_path is 0700 and
    root's: virtual(8) writes the Maildirs as uid 5000, the daemons run as `postfix`)."""
    root = Path(tempfile.mkdtemp(prefix="mugaika-postfix-"))
    root.chmod(0o755)
    return root


def smtp_source(port: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Postfix's C load client against 127.0.0.1:`port` (it exits non-zero on a refusal)."""
    return subprocess.run([str(SMTP_SOURCE), *args, f"127.0.0.1:{port}"], check=True,
                          capture_output=True, timeout=60)


def maildir_messages(base: Path) -> list[EmailMessage]:
    """Every message delivered under `base` (all Maildirs, `new/` and `cur/`)."""
    messages = []
    for path in sorted(base.glob("**/new/*")) + sorted(base.glob("**/cur/*")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        messages.append(msg)
    return messages


def wait_until(what: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.1)
