"""A copy of a typical Debian 12 virtual-mail server (Dovecot + Postfix), run from its own configs.

Contract of `VirtualMailServer`:
- It lives in one scratch root under /var/tmp (mode 0755, so the mail user can traverse it; pytest's
  tmp_path is 0700). `scratch_mail_server()` creates the root, builds the server, yields it, and
  always stops every process it started and removes the root, whatever the test did.
- `build()` writes what a mail admin has: copies of the stock /etc/dovecot and /etc/postfix (a
  main.cf as Debian's postinst writes it when the copy has none), then the admin's own edits in the
  files an admin edits (Dovecot conf.d, Postfix main.cf with `postconf -e`, master.cf): virtual users
  of example.test in a passwd-file, Maildir under `<root>/vmail/%d/%n` owned by the system user
  `vmail`, LMTP from Postfix, SASL submission through Dovecot, an amavis-style after-queue content
  filter (Postfix FILTER_README, "advanced") and a global `sieve_before` that files spam into Junk.
  Users' homes are not created in advance: as on a real server, a new user has none until the first
  delivery. Nothing outside the root is written, except that the `vmail` user is created when
  missing (and kept: other tests may use it).
- Every runtime path is in the root: Dovecot's base_dir, state_dir and log, Postfix's queue and data
  dirs and its maillog_file; every listener is on a free 127.0.0.1 port.
- `start()` validates first (`doveconf -n`, `postfix check`; raises `MailServerError` with the
  tool's own message), then runs `dovecot -F` and Postfix's `master` directly as children, plus the
  stand-in for amavisd (the admin's filter: aiosmtpd in a thread of this process), and returns once
  SMTP, submission, IMAP and LMTP answer with their banners. `stop()` sends SIGTERM to each by PID
  and waits, bounded (SIGKILL by PID past the bound); it is safe to call twice, and `start()` may
  follow it again (a restart from the configs as they are then).
- The configs may be changed between `build()` and `start()`, e.g. by `mail-bridge install` pointed
  at `dovecot_dir` / `postfix_dir` (`install_command()` gives that command line, `run_install()` runs
  it); `start()` then runs the server from the installed configs.
- Logs are read, not judged: `errors_in_logs()` returns the suspicious lines and tests decide (give
  it a `log_mark()` to look only at what came after). Known noise: Dovecot's `master: Warning: Killed
  with signal 15` after a stop and `master: Warning: SIGHUP received - reloading configuration` after
  a `doveadm reload` (which `mail-bridge install` runs unless given --no-reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import email.policy
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from bridge.stack.launcher import free_ports

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "example.test"
MAIL_USER = "vmail"
POSTFIX_MASTER = Path("/usr/lib/postfix/sbin/master")
DEFAULT_USERS: Mapping[str, str] = {"alice": "alice-Pw-1", "bob": "bob-Pw-2"}
SPAM_SIEVE = (
    'require ["fileinto","mailbox"];\nif header :contains "X-Spam-Flag" "YES" { fileinto :create "Junk"; stop; }\n'
)
SUSPICIOUS = re.compile(r"\b(error|fatal|panic|warning)\b", re.IGNORECASE)
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


class MailServerError(RuntimeError):
    """The copy could not be validated, started or used; the message carries the tool's output."""


@dataclass(frozen=True)
class Ports:
    smtp: int  # Debian's `smtp inet` (port 25), moved to 127.0.0.1
    submission: int
    imap: int
    lmtp: int
    amavis: int  # the content filter's listener (amavisd's 10024 on a real server)
    reinject: int  # Postfix's re-injection smtpd (amavis' 10025)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if this process dies, so nothing is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _run(args: Sequence[str], *, tty: bool = False, timeout: float = 60.0) -> str:
    """Run a command; raise `MailServerError` with its output when it fails.

    Postfix commands print nothing when stderr is not a terminal (their messages go to syslog): with
    `tty`, the command runs under script(1) so that its message is seen."""
    argv = ["script", "-qec", shlex.join(args), "/dev/null"] if tty else list(args)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    output = (done.stdout + done.stderr).replace("\r\n", "\n").strip()
    if done.returncode != 0:
        raise MailServerError(f"{shlex.join(args)} failed (rc {done.returncode}): {output or '(no output)'}")
    return output


def _edit(path: Path, old: str, new: str) -> None:
    """Replace whole lines of a stock file, as an admin does; they must be there exactly once."""
    text = path.read_text()
    pattern = re.compile(rf"^{re.escape(old)}$", re.MULTILINE)
    if len(pattern.findall(text)) != 1:
        raise MailServerError(f"{path.name}: expected the stock line {old!r} once")
    path.write_text(pattern.sub(lambda _m: new, text))


def _banner(port: int, prefix: bytes, goodbye: bytes) -> bool:
    """True once the port answers with `prefix`; says goodbye, so no "lost connection" is logged."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            data = sock.recv(512)
            with contextlib.suppress(OSError):
                sock.sendall(goodbye)
                sock.recv(512)
            return data.startswith(prefix)
    except OSError:
        return False


def vmail_ids() -> tuple[int, int]:
    """The uid and gid of the system user `vmail`, created the Debian way if it does not exist."""
    try:
        entry = pwd.getpwnam(MAIL_USER)
    except KeyError:
        subprocess.run(  # its failure when another run created the user meanwhile is fine: looked up again
            [
                "useradd",
                "--system",
                "--user-group",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                MAIL_USER,
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        try:
            entry = pwd.getpwnam(MAIL_USER)
        except KeyError:
            raise MailServerError(f"could not create the system user {MAIL_USER!r} (useradd)") from None
    return entry.pw_uid, entry.pw_gid


class StandInFilter:
    """The admin's amavisd, reduced to what matters here: it tags mail whose Subject contains
    "[SPAM]" with `X-Spam-Flag: YES` (as SpamAssassin does), re-injects every mail into Postfix,
    and answers 250 only after the re-injection was accepted (4xx otherwise, so Postfix retries)."""

    def __init__(self, port: int, reinject_port: int) -> None:
        self.port = port
        self.reinject_port = reinject_port
        self.filtered = 0
        self.controller: Controller | None = None

    def _reinject(self, sender: str, recipients: list[str], content: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.reinject_port, timeout=30) as client:
            client.sendmail(sender, recipients, content)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        subject = str(BytesHeaderParser().parsebytes(content).get("Subject", ""))
        if "[SPAM]" in subject:
            content = b"X-Spam-Flag: YES\r\n" + content
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, self._reinject, envelope.mail_from or "", list(envelope.rcpt_tos), content
            )
        except (OSError, smtplib.SMTPException) as exc:
            return f"451 4.3.0 re-injection failed: {exc}"
        self.filtered += 1
        return "250 2.0.0 Ok: filtered and re-injected"

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, ready_timeout=10)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            with contextlib.suppress(Exception):  # aiosmtpd raises if its thread is already gone
                self.controller.stop()
            self.controller = None


class VirtualMailServer:
    """A Debian 12 virtual-mail server (Dovecot + Postfix) in a scratch root: see the module docstring."""

    def __init__(self, root: Path, users: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.users: dict[str, str] = dict(users or DEFAULT_USERS)  # local part -> password
        self.instance = f"mailcopy-{secrets.token_hex(3)}"
        smtp, submission, imap, lmtp, amavis, reinject = free_ports(6)
        self.ports = Ports(smtp, submission, imap, lmtp, amavis, reinject)
        self.filter = StandInFilter(amavis, reinject)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.config_warnings: list[str] = []  # what doveconf / postfix check printed without failing

    # ------------------------------------------------------------------------------- paths

    @property
    def dovecot_dir(self) -> Path:
        return self.root / "dovecot"

    @property
    def dovecot_conf(self) -> Path:
        return self.dovecot_dir / "dovecot.conf"

    @property
    def postfix_dir(self) -> Path:
        return self.root / "postfix"

    @property
    def queue_dir(self) -> Path:
        return self.root / "postfix-spool"

    @property
    def data_dir(self) -> Path:
        return self.root / "postfix-data"

    @property
    def base_dir(self) -> Path:
        return self.root / "dovecot-run"

    @property
    def state_dir(self) -> Path:
        return self.root / "dovecot-state"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def dovecot_log(self) -> Path:
        return self.log_dir / "dovecot.log"

    @property
    def postfix_log(self) -> Path:
        return self.log_dir / "postfix.log"

    @property
    def vmail_dir(self) -> Path:
        return self.root / "vmail"

    @property
    def sieve_dir(self) -> Path:
        return self.root / "sieve"

    def address(self, user: str) -> str:
        return user if "@" in user else f"{user}@{DOMAIN}"

    def home(self, user: str) -> Path:
        local, _, domain = self.address(user).partition("@")
        return self.vmail_dir / domain / local

    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        """Maildir++: INBOX is ~/Maildir, a folder "a/b" is ~/Maildir/.a.b (mail_location = maildir:~/Maildir)."""
        base = self.home(user) / "Maildir"
        return base if folder.upper() == "INBOX" else base / ("." + folder.replace("/", "."))

    # ------------------------------------------------------------------------------- build

    def build(self) -> None:
        """Write the copies and the admin's edits (nothing is started)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        uid, gid = vmail_ids()
        for d in (self.log_dir, self.state_dir, self.sieve_dir, self.queue_dir):
            d.mkdir(mode=0o755, exist_ok=True)
        postfix_uid = pwd.getpwnam("postfix").pw_uid
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_dir, postfix_uid, -1)
        self.vmail_dir.mkdir(mode=0o750, exist_ok=True)
        os.chown(self.vmail_dir, uid, gid)
        shutil.copytree("/etc/dovecot", self.dovecot_dir, symlinks=True)
        shutil.copytree("/etc/postfix", self.postfix_dir, symlinks=True)
        makedefs = self.postfix_dir / "makedefs.out"
        if makedefs.is_symlink():
            # Debian's postfix-script exempts only /etc/postfix/makedefs.out from "symlink leaves
            # directory": in a copy it is a plain file, so the copy checks as clean as the original.
            target = makedefs.resolve()
            makedefs.unlink()
            shutil.copyfile(target, makedefs)
        self._build_dovecot(uid)
        self._build_postfix()

    def _build_dovecot(self, uid: int) -> None:
        d, conf = self.dovecot_dir, self.dovecot_dir / "conf.d"
        _edit(self.dovecot_conf, "#listen = *, ::", "listen = 127.0.0.1")
        _edit(
            self.dovecot_conf,
            "#base_dir = /var/run/dovecot/",
            f"base_dir = {self.base_dir}\nstate_dir = {self.state_dir}",
        )
        _edit(self.dovecot_conf, "#instance_name = dovecot", f"instance_name = {self.instance}")
        with self.dovecot_conf.open("a") as f:
            f.write("\n# IMAP for the users, LMTP for Postfix.\nprotocols = imap lmtp\n")
        _edit(conf / "10-logging.conf", "#log_path = syslog", f"log_path = {self.dovecot_log}")
        # Postfix's SASL over Dovecot sees no TLS on this loopback-only box.
        _edit(conf / "10-auth.conf", "#disable_plaintext_auth = yes", "disable_plaintext_auth = no")
        _edit(conf / "10-auth.conf", "auth_mechanisms = plain", "auth_mechanisms = plain login")
        _edit(conf / "10-auth.conf", "!include auth-system.conf.ext", "#!include auth-system.conf.ext")
        _edit(conf / "10-auth.conf", "#!include auth-passwdfile.conf.ext", "!include auth-passwdfile.conf.ext")
        for args in ("scheme=CRYPT username_format=%u", "username_format=%u"):
            old = f"  args = {args} /etc/dovecot/users"
            _edit(conf / "auth-passwdfile.conf.ext", old, old.replace("/etc/dovecot/users", str(d / "users")))
        self.write_users()
        _edit(
            conf / "10-mail.conf",
            "mail_location = mbox:~/mail:INBOX=/var/mail/%u",
            f"mail_location = maildir:~/Maildir\nmail_home = {self.vmail_dir}/%d/%n",
        )
        _edit(conf / "10-mail.conf", "#mail_uid =", f"mail_uid = {MAIL_USER}")
        _edit(conf / "10-mail.conf", "#mail_gid =", f"mail_gid = {MAIL_USER}")
        _edit(conf / "10-mail.conf", "#first_valid_uid = 500", f"first_valid_uid = {uid}")
        master = conf / "10-master.conf"
        _edit(
            master, "  inet_listener imap {\n    #port = 143", f"  inet_listener imap {{\n    port = {self.ports.imap}"
        )
        _edit(master, "  inet_listener imaps {\n    #port = 993", "  inet_listener imaps {\n    port = 0")
        _edit(
            master,
            "  #inet_listener lmtp {\n    # Avoid making LMTP visible for the entire internet\n    #address =\n"
            "    #port = \n  #}",
            "  inet_listener lmtp {\n    # Avoid making LMTP visible for the entire internet\n"
            f"    address = 127.0.0.1\n    port = {self.ports.lmtp}\n  }}",
        )
        _edit(
            master,
            "  #unix_listener /var/spool/postfix/private/auth {\n  #  mode = 0666\n  #}",
            f"  unix_listener {self.queue_dir}/private/auth {{\n    mode = 0660\n    user = postfix\n"
            "    group = postfix\n  }",
        )
        _edit(conf / "20-lmtp.conf", "  #mail_plugins = $mail_plugins", "  mail_plugins = $mail_plugins sieve")
        ssl = conf / "10-ssl.conf"
        if (d / "private" / "dovecot.pem").exists() and (d / "private" / "dovecot.key").exists():
            ssl.write_text(ssl.read_text().replace("</etc/dovecot/private/", f"<{d}/private/"))
        else:
            _edit(ssl, "ssl = yes", "ssl = no")
        spam = self.sieve_dir / "spam.sieve"
        spam.write_text(SPAM_SIEVE)
        _edit(conf / "90-sieve.conf", "  #sieve_before = /var/lib/dovecot/sieve.d/", f"  sieve_before = {spam}")
        # Compiled as root: the mail user cannot write beside the script (Pigeonhole would try).
        _run(["sievec", "-c", str(self.dovecot_conf), str(spam)])

    def write_users(self) -> None:
        """The passwd-file: SHA512-CRYPT hashes from `doveadm pw`; uid, gid and home from mail_* settings."""
        lines = []
        for user, password in self.users.items():
            hashed = _run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password]).strip()
            lines.append(f"{self.address(user)}:{hashed}::::::\n")
        users = self.dovecot_dir / "users"
        users.write_text("".join(lines))
        os.chown(users, 0, pwd.getpwnam("dovecot").pw_gid)
        users.chmod(0o640)

    def _postconf(self, *settings: str) -> None:
        _run(["postconf", "-c", str(self.postfix_dir), "-e", *settings])

    def _build_postfix(self) -> None:
        p = self.postfix_dir
        if not (p / "main.cf").exists():
            # What Debian's postinst writes for "Internet Site".
            text = Path("/usr/share/postfix/main.cf.debian").read_text()
            if Path("/etc/ssl/private/ssl-cert-snakeoil.key").exists():
                text += Path("/usr/share/postfix/main.cf.tls").read_text()
            (p / "main.cf").write_text(text)
            self._postconf(
                "smtpd_relay_restrictions=permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
                "myhostname=mail.example.test",
                f"alias_maps=hash:{p / 'aliases'}",
                f"alias_database=hash:{p / 'aliases'}",
                "myorigin=$myhostname",
                "mydestination=$myhostname, mail.example.test, localhost.example.test, localhost",
                "relayhost=",
                "mynetworks=127.0.0.0/8",
                "mailbox_size_limit=0",
                "recipient_delimiter=+",
                "inet_interfaces=loopback-only",
                "inet_protocols=ipv4",
            )
            (p / "aliases").write_text("# See man 5 aliases for format\npostmaster:    root\n")
            _run(["postalias", "-c", str(p), str(p / "aliases")])
        (p / "vmailbox").write_text("".join(f"{self.address(u)}  {DOMAIN}/{u}/\n" for u in self.users))
        self._postconf(
            # Nothing of this copy's runtime outside the scratch root.
            f"queue_directory={self.queue_dir}",
            f"data_directory={self.data_dir}",
            f"maillog_file={self.postfix_log}",
            "inet_interfaces=127.0.0.1",
            "inet_protocols=ipv4",
            "smtp_dns_support_level=disabled",
            "lmtp_dns_support_level=disabled",
            # The virtual domain, delivered by Dovecot.
            f"virtual_mailbox_domains={DOMAIN}",
            f"virtual_mailbox_maps=texthash:{p / 'vmailbox'}",
            f"virtual_transport=lmtp:inet:127.0.0.1:{self.ports.lmtp}",
            # Submission authenticates against Dovecot (its auth socket in the queue dir: smtpd is chrooted).
            "smtpd_sasl_type=dovecot",
            "smtpd_sasl_path=private/auth",
            # amavisd-new, the usual way (Postfix FILTER_README, "advanced").
            f"content_filter=amavis:[127.0.0.1]:{self.ports.amavis}",
        )
        master = p / "master.cf"
        _edit(
            master,
            "smtp      inet  n       -       y       -       -       smtpd",
            f"127.0.0.1:{self.ports.smtp} inet n -       y       -       -       smtpd",
        )
        with master.open("a") as f:
            f.write(
                f"""127.0.0.1:{self.ports.submission} inet n - y       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o milter_macro_daemon_name=ORIGINATING
amavis    unix  -       -       n       -       2       smtp
  -o smtp_data_done_timeout=1200
  -o smtp_send_xforward_command=yes
  -o max_use=20
127.0.0.1:{self.ports.reinject} inet n  -       n       -       -       smtpd
  -o content_filter=
  -o local_recipient_maps=
  -o relay_recipient_maps=
  -o smtpd_restriction_classes=
  -o smtpd_delay_reject=no
  -o smtpd_client_restrictions=permit_mynetworks,reject
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_data_restrictions=reject_unauth_pipelining
  -o smtpd_end_of_data_restrictions=
  -o mynetworks=127.0.0.0/8
  -o smtpd_error_sleep_time=0
  -o smtpd_soft_error_limit=1001
  -o smtpd_hard_error_limit=1000
  -o smtpd_client_connection_count_limit=0
  -o smtpd_client_connection_rate_limit=0
  -o receive_override_options=no_header_body_checks,no_unknown_recipient_checks,no_milters
"""
            )

    # ------------------------------------------------------------------------------- run

    def validate(self) -> None:
        """`doveconf -n` and `postfix check` on the copy; raise with the tool's message if either fails.
        `postfix check` also creates the queue's subdirectories."""
        done = subprocess.run(
            ["doveconf", "-c", str(self.dovecot_conf), "-n"], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise MailServerError(f"doveconf -c {self.dovecot_conf} -n failed: {done.stderr.strip()}")
        self.config_warnings = [line for line in done.stderr.splitlines() if line.strip()]
        checked = _run(["postfix", "-c", str(self.postfix_dir), "check"], tty=True)
        self.config_warnings += [line for line in checked.splitlines() if line.strip()]

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.log_dir / f"{name}.out").open("ab") as out:
            self.processes[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (nothing else runs in the child)
                start_new_session=True,
            )

    def _wait_ready(self, timeout: float) -> None:
        probes = {
            "SMTP": (self.ports.smtp, b"220 ", b"QUIT\r\n"),
            "submission": (self.ports.submission, b"220 ", b"QUIT\r\n"),
            "IMAP": (self.ports.imap, b"* OK", b"a LOGOUT\r\n"),
            "LMTP": (self.ports.lmtp, b"220 ", b"QUIT\r\n"),
        }
        deadline = time.monotonic() + timeout
        waiting = dict(probes)
        while waiting:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise MailServerError(f"{name} exited with {process.returncode} during start:\n{self.logs()}")
            for what, (port, prefix, goodbye) in list(waiting.items()):
                if _banner(port, prefix, goodbye):
                    del waiting[what]
            if waiting and time.monotonic() > deadline:
                raise MailServerError(f"no banner within {timeout:.0f} s from {', '.join(waiting)}:\n{self.logs()}")
            if waiting:
                time.sleep(0.05)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Validate, then start Dovecot, the admin's filter and Postfix; return once all answer."""
        if self.processes:
            raise MailServerError("already started")
        self.validate()
        try:
            self._spawn("dovecot", ["dovecot", "-F", "-c", str(self.dovecot_conf)])
            self.filter.start()
            self._spawn("postfix", [str(POSTFIX_MASTER), "-c", str(self.postfix_dir), "-s"])
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to Postfix's master and Dovecot by PID (children go with them), wait, bounded."""
        for name in ("postfix", "dovecot"):
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(5)
        self.processes.clear()
        self.filter.stop()

    # ------------------------------------------------------------------------------- mail

    def message(
        self,
        sender: str,
        recipients: Sequence[str],
        subject: str,
        body: str = "Hello.\n",
        headers: Mapping[str, str] | None = None,
    ) -> EmailMessage:
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = self.address(sender)
        msg["To"] = ", ".join(self.address(r) for r in recipients)
        msg["Subject"] = subject
        msg["Message-ID"] = make_msgid(domain=DOMAIN)
        for name, value in (headers or {}).items():
            msg[name] = value
        msg.set_content(body)
        return msg

    def send(
        self,
        sender: str,
        recipients: Sequence[str],
        subject: str,
        body: str = "Hello.\n",
        headers: Mapping[str, str] | None = None,
        *,
        login: tuple[str, str] | None = None,
    ) -> str:
        """Send one mail over SMTP: to the port-25 listener, or with `login=(user, password)` to
        submission with SASL AUTH. Returns its Message-ID. Raises smtplib's errors as they come."""
        msg = self.message(sender, recipients, subject, body, headers)
        port = self.ports.smtp if login is None else self.ports.submission
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            if login is not None:
                # Submission demands TLS before AUTH (Debian's snakeoil certificate: not verified).
                client.starttls(context=ssl._create_unverified_context())
                client.login(self.address(login[0]), login[1])
            client.send_message(msg, self.address(sender), [self.address(r) for r in recipients])
        return str(msg["Message-ID"])

    def maildir_messages(self, user: str, folder: str = "INBOX") -> list[Path]:
        """The message files in new/ and cur/ of the user's folder (none if it does not exist yet)."""
        base = self.maildir(user, folder)
        return sorted(p for sub in ("new", "cur") if (base / sub).is_dir() for p in (base / sub).iterdir())

    def queued(self) -> list[str]:
        """Queue ids still in Postfix's queue (`postqueue -j`); the server must be running."""
        out = _run(["postqueue", "-c", str(self.postfix_dir), "-j"])
        return re.findall(r'"queue_id": "([^"]+)"', out)

    def wait_for_messages(self, user: str, count: int, folder: str = "INBOX", timeout: float = 20.0) -> list[Path]:
        """Wait, bounded, until the folder holds `count` messages and Postfix's queue is empty."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.maildir_messages(user, folder)
            if len(found) >= count and not self.queued():
                return found
            if time.monotonic() > deadline:
                raise MailServerError(
                    f"{self.address(user)} {folder}: {len(found)} of {count} messages after {timeout:.0f} s,"
                    f" queue {self.queued()}:\n{self.logs()}"
                )
            time.sleep(0.1)

    def wait_for_queue_empty(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.queued():
            if time.monotonic() > deadline:
                raise MailServerError(f"queue not empty after {timeout:.0f} s: {self.queued()}:\n{self.logs()}")
            time.sleep(0.1)

    # ------------------------------------------------------------------------------- logs

    def _log_files(self) -> list[Path]:
        return [self.dovecot_log, self.postfix_log, *sorted(self.log_dir.glob("*.out"))]

    def log_mark(self) -> dict[Path, int]:
        """Where each log ends now: give it to `logs()` / `errors_in_logs()` to read only what follows."""
        return {path: path.stat().st_size for path in self._log_files() if path.exists()}

    def logs(self, since: Mapping[Path, int] | None = None) -> str:
        """Dovecot's and Postfix's logs (and anything the daemons printed before their logs opened),
        each under a "==> name <==" line; with `since`, only what was written after that mark."""
        parts = []
        for path in self._log_files():
            if path.exists():
                with path.open("rb") as f:
                    f.seek((since or {}).get(path, 0))
                    parts.append(f"==> {path.name} <==\n{f.read().decode(errors='replace')}")
        return "\n".join(parts)

    def errors_in_logs(self, since: Mapping[Path, int] | None = None) -> list[str]:
        """Log lines that say error, fatal, panic or warning (any case); the caller judges them."""
        return [line for line in self.logs(since).splitlines() if SUSPICIOUS.search(line)]

    # ------------------------------------------------------------------------------- install

    def install_command(self, *extra: str, python: str = sys.executable) -> list[str]:
        """`mail-bridge install` into this copy (run it with cwd = the checkout); hook, spool, env and
        state files in the scratch root; add `--yes`, `--check`, `--uninstall` etc. as `extra`."""
        return [
            python,
            "-m",
            "bridge",
            "install",
            f"--dovecot-dir={self.dovecot_dir}",
            f"--postfix-dir={self.postfix_dir}",
            f"--hook-dir={self.root / 'mail-bridge' / 'lib'}",
            f"--spool-dir={self.root / 'mail-bridge' / 'spool'}",
            f"--env-file={self.root / 'mail-bridge' / 'etc' / 'mail-bridge.env'}",
            f"--state-file={self.root / 'mail-bridge' / 'state' / 'install.json'}",
            f"--mail-user={MAIL_USER}",
            f"--systemd-dir={self.root / 'mail-bridge' / 'systemd'}",
            *extra,
        ]

    def run_install(self, *extra: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """Run `install_command(*extra)` from the checkout with this interpreter; output captured."""
        return subprocess.run(
            self.install_command(*extra), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )


@contextlib.contextmanager
def scratch_mail_server(users: Mapping[str, str] | None = None) -> Iterator[VirtualMailServer]:
    """A built (not started) `VirtualMailServer` in a fresh root under /var/tmp; on exit every
    process it started is stopped and the root removed, whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="mail-server-copy-", dir="/var/tmp"))
    server = VirtualMailServer(root, users)
    try:
        server.build()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
