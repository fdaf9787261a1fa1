"""docs/events.md's consumer example, run as written against the real stack."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bridge.stack.launcher import StackInfo
from tests.common import REPO, Account
from tests.mailtools import send_smtp, wait_for_messages
from tests.test_e2e_mail import message

pytestmark = pytest.mark.e2e


def test_the_documented_consumer_reads_the_events(stack: StackInfo, account: Account) -> None:
    doc = (REPO / "docs" / "events.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    subject = f"documented {uuid.uuid4().hex[:8]}"
    send_smtp(stack, [message("carol@outside.test", account.email, subject)])
    wait_for_messages(stack, account.email, account.password, 1)
    result = subprocess.run(
        [sys.executable, "-c", example.replace('"my-app"', f'"doc-test-{uuid.uuid4().hex[:6]}"')],
        env={"REDIS_URL": stack.redis_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"mail:dovecot message.new {account.email} {subject}" in lines
    assert f"mail:postfix mta.accepted {account.email} {subject}" in lines


def test_the_readme_example_receives_new_email(stack: StackInfo) -> None:
    readme = (REPO / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    stack_json = str(Path(stack.state_dir) / "stack.json")
    assert 'open("var/stack.json")' in example
    result = subprocess.run(
        [sys.executable, "-c", example.replace('open("var/stack.json")', f"open({stack_json!r})")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "'subject': 'hello'" in result.stdout and "'preview': 'Hi Alice'" in result.stdout
