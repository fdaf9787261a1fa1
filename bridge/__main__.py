"""Command line: `mail-bridge serve` (one bridge process) and `mail-bridge stack` (the local stack).

Failures print one line naming what failed and where its log is, and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from types import FrameType

from bridge.errors import BridgeError, ConfigError
from bridge.settings import Settings, StackSettings


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # aiosmtpd logs every SMTP command at INFO, peers and envelope included: keep only its problems.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def serve() -> int:
    from aiohttp import web  # noqa: PLC0415 - keep `stack` start-up light

    from bridge.app import create_app  # noqa: PLC0415

    settings = Settings.from_env()
    _logging(settings.log_level)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.http_port,
        print=None,
        access_log=None,
        handle_signals=True,
    )
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stack() -> int:
    from bridge.stack.launcher import Stack  # noqa: PLC0415

    _logging("INFO")
    # SIGTERM behaves like Ctrl-C: at any moment, everything started so far is stopped. SIGINT is
    # installed explicitly too: a shell starting us in the background hands it over ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    launcher = Stack(StackSettings.from_env())
    try:
        info = launcher.start()
        print(f"\nmail-bridge stack is up: {info.web_url}", flush=True)
        print(json.dumps(info.as_json(), indent=2), flush=True)
        print("demo logins:", ", ".join(f"{u['email']} / {u['password']}" for u in info.users), flush=True)
        print("Ctrl-C stops everything.", flush=True)
        while True:
            dead = launcher.dead()
            if dead:
                names = ", ".join(f"{s.name} (exit {s.process.returncode if s.process else '?'})" for s in dead)
                print(f"mail-bridge: {names} stopped unexpectedly; see {info.log_dir}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping...", file=sys.stderr)
        return 0
    except BridgeError as exc:
        print(f"mail-bridge: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        launcher.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mail-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run one bridge process (settings from the environment)")
    sub.add_parser("stack", help="run the whole local stack in the foreground until Ctrl-C")
    args = parser.parse_args(argv)
    try:
        return serve() if args.command == "serve" else stack()
    except ConfigError as exc:
        print(f"mail-bridge: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
