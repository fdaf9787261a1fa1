"""Process supervision for the local stack: start, wait until ready, stop.

Each service runs in the foreground as a child of the launcher, in its own session, its output in
`<logs>/<name>.out`. A child gets SIGTERM if the launcher itself dies (PR_SET_PDEATHSIG), so nothing
is orphaned; a service counts as ready only once every one of its probes said yes; services stop
in reverse order of their start. What to start, and how, is `bridge.stack.services`' job.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import BridgeError
from bridge.stack.probes import Probe

# The launcher's logger: its records keep the name they had before supervision had a module of its own.
log = logging.getLogger("bridge.stack.launcher")

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
PR_SET_PDEATHSIG = 1


class StackError(BridgeError):
    """A service could not be started; the message is one line naming it and its log."""


@dataclass
class Service:
    name: str
    argv: list[str]
    probes: list[Probe]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel to SIGTERM it when the launcher dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """The services started so far, in start order, and the ways to start and stop them."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.services: list[Service] = []

    def _spawn(self, service: Service, extra_args: tuple[str, ...] = ()) -> None:
        out = open(self.logs / f"{service.name}.out", "ab")  # noqa: SIM115 - the child owns it
        try:
            service.process = subprocess.Popen(
                [*service.argv, *extra_args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=service.env,
                cwd=service.cwd,
                start_new_session=True,  # a terminal's Ctrl-C reaches the launcher, which stops in order
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded launcher
            )
        except OSError as exc:
            raise StackError(f"{service.name} could not be started: {exc}") from None
        finally:
            out.close()
        if service not in self.services:
            self.services.append(service)
        log.debug("started %s pid %s", service.name, service.process.pid)

    def _wait_ready(self, services: list[Service]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = {s.name: list(s.probes) for s in services}
        while waiting:
            for service in services:
                probes = waiting.get(service.name)
                if probes is None:
                    continue
                assert service.process is not None
                code = service.process.poll()
                if code is not None:
                    raise StackError(
                        f"{service.name} exited with code {code} while starting; {self._log_hint(service)}"
                    )
                while probes and probes[0]():
                    probes.pop(0)
                if not probes:
                    del waiting[service.name]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(waiting)
                raise StackError(f"{names} did not answer within {READY_TIMEOUT_S:.0f} s; see {self.logs}")
            if waiting:
                time.sleep(0.02)

    def _log_hint(self, service: Service) -> str:
        out = self.logs / f"{service.name}.out"
        last = ""
        with contextlib.suppress(OSError):
            lines = [line for line in out.read_text(errors="replace").splitlines() if line.strip()]
            last = lines[-1].strip()[:300] if lines else ""
        where = f"see {out}"
        if service.name in ("dovecot", "postfix"):
            where += f" and {self.logs / (service.name + '.log')}"
        return f"{where}" + (f" (last line: {last})" if last else "")

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def stop_service(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one service (for fault tests): SIGTERM, or SIGKILL to simulate a crash."""
        service = self.service(name)
        assert service.process is not None
        if service.process.poll() is None:
            service.process.send_signal(sig)
            try:
                service.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()

    def start_service(self, name: str, *extra_args: str) -> None:
        """Start a stopped service again with the same command (plus `extra_args`, for this start
        only) and wait until it answers."""
        service = self.service(name)
        assert service.process is not None and service.process.poll() is not None, f"{name} is running"
        self._spawn(service, extra_args)
        self._wait_ready([service])

    def remove_service(self, name: str) -> None:
        """Stop a service and forget it (a node added by `Stack.add_bridge_node`)."""
        self.stop_service(name)
        self.services.remove(self.service(name))

    def dead(self) -> list[Service]:
        return [s for s in self.services if s.process is not None and s.process.poll() is not None]

    def stop_all(self) -> None:
        """Stop every service, last started first, so each stops while what it uses still runs."""
        for service in reversed(self.services):
            assert service.process is not None
            if service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    service.process.send_signal(signal.SIGTERM)
            try:
                service.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", service.name, STOP_TIMEOUT_S)
                service.process.kill()
                service.process.wait()
        self.services.clear()
