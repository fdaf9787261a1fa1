"""Command line: `mail-bridge serve` (the bridge: HTTP, Socket.IO, relay, index, and the content
filter unless BRIDGE_FILTER_PORT=0), `mail-bridge filter` (the content filter alone),
`mail-bridge stack` (the local stack) and `mail-bridge install` (into an existing mail server).

Failures print one line naming what failed and where its log is, and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bridge.errors import BridgeError, ConfigError
from bridge.settings import Settings, StackSettings


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # aiosmtpd logs every SMTP command at INFO, peers and envelope included: keep only its problems.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _event_loop() -> asyncio.AbstractEventLoop:
    # uvloop (libuv) runs the same asyncio code with less CPU per socket write and wake-up, which
    # is most of what the relay does; the standard loop stays the fallback.
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


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
        loop=_event_loop(),
    )
    return 0


def run_filter() -> int:
    from aiohttp import web  # noqa: PLC0415

    from bridge.app import create_filter_app  # noqa: PLC0415

    settings = Settings.from_env()
    _logging(settings.log_level)
    if settings.filter_port == 0:
        raise ConfigError("BRIDGE_FILTER_PORT must be set for `mail-bridge filter`")

    async def run() -> None:
        runner = web.AppRunner(create_filter_app(settings), handle_signals=False)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await runner.setup()  # opens Redis and the SMTP listener
        try:
            await stop.wait()
        finally:
            await runner.cleanup()  # stops accepting and closes Redis; Postfix retries a mail cut short

    loop = _event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
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


def _install_parser(sub: Any) -> None:
    from bridge.install import Options  # noqa: PLC0415

    d = Options()
    p = sub.add_parser(
        "install",
        help="add the hooks and snippets to an existing Dovecot and Postfix (shows a diff, asks first)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report what is missing or different; exit 1 if any")
    mode.add_argument("--uninstall", action="store_true", help="put back everything the install changed")
    p.add_argument("--yes", action="store_true", help="apply without asking")
    for name, default in (
        ("dovecot-dir", d.dovecot_dir),
        ("postfix-dir", d.postfix_dir),
        ("hook-dir", d.hook_dir),
        ("spool-dir", d.spool_dir),
        ("env-file", d.env_file),
        ("state-file", d.state_file),
    ):
        p.add_argument(f"--{name}", type=Path, default=default, help=f"default {default}")
    p.add_argument("--mail-user", default=d.mail_user, help=f"Dovecot's mail user (mail_uid), default {d.mail_user}")
    p.add_argument("--redis-host", default=d.redis_host)
    p.add_argument("--redis-port", type=int, default=d.redis_port)
    p.add_argument(
        "--redis-sentinels",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="publish through Redis Sentinel (then --redis-host/--redis-port are unused)",
    )
    p.add_argument("--redis-master", default=d.redis_master, help="the sentinels' name for the master")
    p.add_argument(
        "--redis-cluster",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="publish to Redis Cluster (keys prefixed {mail}; then --redis-host/--redis-port are unused)",
    )
    p.add_argument("--filter-port", type=int, default=d.filter_port)
    p.add_argument("--reinject-port", type=int, default=d.reinject_port)


def install(args: argparse.Namespace) -> int:
    from bridge.install import Options, check, install, uninstall  # noqa: PLC0415
    from bridge.settings import parse_cluster_url, parse_sentinel_url  # noqa: PLC0415

    sentinels: tuple[tuple[str, int], ...] = ()
    cluster: tuple[tuple[str, int], ...] = ()
    try:
        if args.redis_sentinels and args.redis_cluster:
            raise ConfigError("Redis Sentinel or Redis Cluster, not both")
        if args.redis_sentinels:
            sentinels = parse_sentinel_url(f"redis+sentinel://{args.redis_sentinels}/{args.redis_master}").sentinels
        if args.redis_cluster:
            cluster = parse_cluster_url(f"redis+cluster://{args.redis_cluster}").nodes
    except BridgeError as exc:
        print(f"mail-bridge install: --redis-sentinels/--redis-cluster: {exc}", file=sys.stderr)
        return 2
    options = Options(
        dovecot_dir=args.dovecot_dir,
        postfix_dir=args.postfix_dir,
        hook_dir=args.hook_dir,
        spool_dir=args.spool_dir,
        env_file=args.env_file,
        state_file=args.state_file,
        mail_user=args.mail_user,
        redis_host=args.redis_host,
        redis_port=args.redis_port,
        redis_sentinels=sentinels,
        redis_master=args.redis_master,
        redis_cluster=cluster,
        filter_port=args.filter_port,
        reinject_port=args.reinject_port,
    )
    try:
        if args.check:
            return check(options, out=sys.stdout)
        if args.uninstall:
            return uninstall(options, out=sys.stdout)
        return install(options, assume_yes=args.yes, out=sys.stdout, answer=sys.stdin)
    except BridgeError as exc:
        print(f"mail-bridge install: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mail-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run one bridge process (settings from the environment)")
    sub.add_parser("filter", help="run the Postfix content filter alone (settings from the environment)")
    sub.add_parser("stack", help="run the whole local stack in the foreground until Ctrl-C")
    _install_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            return install(args)
        commands = {"serve": serve, "filter": run_filter, "stack": stack}
        return commands[args.command]()
    except ConfigError as exc:
        print(f"mail-bridge: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
