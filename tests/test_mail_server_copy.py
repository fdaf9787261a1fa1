"""The copy of a Debian 12 virtual-mail server (tests/mail_server_copy.py) works before anything of
ours is installed: mail to a virtual user is delivered once, the admin's spam rule files tagged mail
into Junk through the admin's content filter, submission authenticates against Dovecot, and the
logs stay clean. The real-server install test builds on this server."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from email import message_from_bytes

import pytest

from tests.mail_server_copy import MailServerError, VirtualMailServer, scratch_mail_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def running_mail_server() -> Iterator[VirtualMailServer]:
    """One server for this module: started from the admin's configs, stopped and removed after."""
    with scratch_mail_server() as server:
        server.start()
        yield server


def test_the_copy_validates_without_warnings(running_mail_server: VirtualMailServer) -> None:
    assert running_mail_server.config_warnings == []


def test_a_mail_to_a_new_user_is_delivered_once_into_inbox(running_mail_server: VirtualMailServer) -> None:
    server = running_mail_server
    mark = server.log_mark()
    assert not server.home("alice").exists()  # a new user: no home until the first delivery
    message_id = server.send("carol@example.net", ["alice"], "Lunch?", "Noon at the usual place.\n")
    delivered = server.wait_for_messages("alice", 1)
    assert len(delivered) == 1
    mail = message_from_bytes(delivered[0].read_bytes())
    assert (mail["Message-ID"], mail["Subject"], mail["X-Spam-Flag"]) == (message_id, "Lunch?", None)
    assert server.filter.filtered >= 1  # it went through the admin's content filter
    assert server.maildir_messages("alice", "Junk") == []
    assert server.errors_in_logs(mark) == []


def test_the_admins_spam_rule_files_tagged_mail_into_junk(running_mail_server: VirtualMailServer) -> None:
    server = running_mail_server
    mark = server.log_mark()
    before = len(server.maildir_messages("bob"))
    server.send("spammer@example.net", ["bob"], "[SPAM] cheap watches")
    junk = server.wait_for_messages("bob", 1, folder="Junk")
    assert len(junk) == 1
    assert message_from_bytes(junk[0].read_bytes())["X-Spam-Flag"] == "YES"
    assert len(server.maildir_messages("bob")) == before
    assert "fileinto action: stored mail into mailbox 'Junk'" in server.logs(mark)
    assert server.errors_in_logs(mark) == []


def test_submission_with_a_password_relays_to_another_user(running_mail_server: VirtualMailServer) -> None:
    server = running_mail_server
    mark = server.log_mark()
    before = len(server.maildir_messages("bob"))
    message_id = server.send("alice", ["bob"], "Hi Bob", login=("alice", server.users["alice"]))
    delivered = server.wait_for_messages("bob", before + 1)
    assert message_id in [message_from_bytes(p.read_bytes())["Message-ID"] for p in delivered]
    assert "sasl_username=alice@example.test" in server.logs(mark)
    assert server.errors_in_logs(mark) == []


def test_submission_refuses_a_wrong_password_and_no_login(running_mail_server: VirtualMailServer) -> None:
    server = running_mail_server
    mark = server.log_mark()
    with (
        smtplib.SMTP("127.0.0.1", server.ports.submission, timeout=30) as client,
        pytest.raises(smtplib.SMTPAuthenticationError),
    ):
        client.starttls(context=ssl._create_unverified_context())  # submission: TLS before AUTH
        client.ehlo()
        client.user, client.password = "alice@example.test", "not-her-password"
        client.auth("PLAIN", client.auth_plain)  # one attempt: Dovecot delays each failure by 2 s
    with (
        smtplib.SMTP("127.0.0.1", server.ports.submission, timeout=30) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        client.starttls(context=ssl._create_unverified_context())
        client.sendmail("alice@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
    assert refused.value.recipients["bob@example.test"][0] == 554
    # Both leave the warnings one expects of a refused client, and nothing else.
    problems = server.errors_in_logs(mark)
    assert problems and all("authentication failed" in line for line in problems), problems


def test_start_refuses_a_config_that_does_not_validate_with_the_tools_message() -> None:
    with scratch_mail_server() as server:
        conf = server.dovecot_dir / "conf.d" / "10-mail.conf"
        conf.write_text(conf.read_text() + "no_such_dovecot_setting = 1\n")
        with pytest.raises(MailServerError, match="Unknown setting: no_such_dovecot_setting"):
            server.start()
        conf.write_text(conf.read_text().replace("no_such_dovecot_setting = 1\n", ""))
        main = server.postfix_dir / "main.cf"
        main.write_text(main.read_text() + f"queue_directory = {server.root / 'no-such-spool'}\n")
        with pytest.raises(MailServerError, match=r"postfix: fatal: chdir\(.*no-such-spool\)"):
            server.start()
        assert server.processes == {}
