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
from dataclasses import replace
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
        description="Add mail-bridge to this mail server: reads Dovecot's and Postfix's effective configuration,"
        " shows every change as a diff with the reasons, asks, writes, and reloads both. Options are remembered"
        " in the state file: --check, --uninstall and a re-run use them without repeating them.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report what is missing or different; exit 1 if any")
    mode.add_argument("--uninstall", action="store_true", help="put back everything the install changed")
    p.add_argument("--yes", action="store_true", help="apply without asking (the diff is still shown)")
    p.add_argument(
        "--no-reload", action="store_true", help="do not run `doveadm reload` and `postfix reload` afterwards"
    )
    # Every other flag defaults to None: "what the last install used, else the built-in default".
    paths = (
        ("dovecot-dir", d.dovecot_dir, "Dovecot's configuration directory"),
        ("postfix-dir", d.postfix_dir, "Postfix's configuration directory"),
        ("hook-dir", d.hook_dir, "where the Lua hook and the Sieve script go"),
        ("spool-dir", d.spool_dir, "where the hook keeps events while Redis is unreachable (owned by the mail user)"),
        ("env-file", d.env_file, "the bridge's settings, written mode 0600 (holds secrets)"),
        ("state-file", d.state_file, "what the install changed and the options it used"),
    )
    for name, default, text in paths:
        p.add_argument(f"--{name}", type=Path, default=None, help=f"{text} (default {default})")
    p.add_argument(
        "--mail-user", default=None, help="Dovecot's mail user (default: its mail_uid setting, else vmail)"
    )
    p.add_argument("--redis-host", default=None, help=f"Redis for the hook and the bridge (default {d.redis_host})")
    p.add_argument("--redis-port", type=int, default=None, help=f"(default {d.redis_port})")
    p.add_argument(
        "--redis-sentinels",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="publish through Redis Sentinel (then --redis-host/--redis-port are unused); addresses, not names",
    )
    p.add_argument(
        "--redis-master", default=None, help=f"the sentinels' name for the master (default {d.redis_master})"
    )
    p.add_argument(
        "--redis-cluster",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="publish to Redis Cluster (keys prefixed {mail}; then --redis-host/--redis-port are unused)",
    )
    p.add_argument(
        "--filter-port",
        type=int,
        default=None,
        help="where the content filter listens (default 10025, or the next port no master.cf service holds)",
    )
    p.add_argument(
        "--reinject-port",
        type=int,
        default=None,
        help="the re-injection smtpd's port (default: the filter's + 1, or the next free one)",
    )
    p.add_argument(
        "--chain-content-filter",
        action="store_true",
        default=None,
        help="keep an existing content_filter (e.g. amavis): mail passes ours first, then yours as before",
    )
    p.add_argument(
        "--http-port", type=int, default=None, help=f"the bridge's HTTP port, behind your proxy (default {d.http_port})"
    )
    p.add_argument("--imap-port", type=int, default=None, help="Dovecot's IMAP port for the bridge (default: found)")
    p.add_argument(
        "--submission-port", type=int, default=None, help="Postfix's submission port for sending (default: found)"
    )
    p.add_argument(
        "--mongodb-url",
        default=None,
        help="your MongoDB for the bridge's index (a replica set URL: mongodb://db1,db2,db3/?replicaSet=rs0)",
    )
    p.add_argument(
        "--store",
        action="store_true",
        default=None,
        help="no MongoDB here: install the embedded store (FerretDB on SQLite, loopback, its own unit)",
    )
    p.add_argument(
        "--ferretdb-bin",
        default=None,
        help="with --store: the FerretDB program to install (`make dist` puts one in dist/); else it is built with Go",
    )
    p.add_argument(
        "--store-port", type=int, default=None, help=f"with --store: its loopback port (default {d.store_port})"
    )
    p.add_argument(
        "--systemd-dir",
        type=Path,
        default=None,
        help=f"where the units go (default {d.systemd_dir}); they are enabled and started when systemd runs",
    )


def install(args: argparse.Namespace) -> int:
    from bridge.install import Options, check, install, load_remembered, uninstall  # noqa: PLC0415
    from bridge.redis_url import parse_cluster_url, parse_sentinel_url  # noqa: PLC0415

    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in (
            "dovecot_dir", "postfix_dir", "hook_dir", "spool_dir", "env_file", "mail_user", "redis_host",
            "redis_port", "redis_master", "filter_port", "reinject_port", "chain_content_filter", "http_port",
            "imap_port", "submission_port", "mongodb_url", "store", "ferretdb_bin", "store_port", "systemd_dir",
        )
    }  # fmt: skip
    try:
        if args.redis_sentinels and args.redis_cluster:
            raise ConfigError("Redis Sentinel or Redis Cluster, not both")
        if args.redis_sentinels:
            master = args.redis_master or Options().redis_master
            url = f"redis+sentinel://{args.redis_sentinels}/{master}"
            given["redis_sentinels"] = parse_sentinel_url(url).sentinels
        if args.redis_cluster:
            given["redis_cluster"] = parse_cluster_url(f"redis+cluster://{args.redis_cluster}").nodes
    except BridgeError as exc:
        print(f"mail-bridge install: --redis-sentinels/--redis-cluster: {exc}", file=sys.stderr)
        return 2
    state_file = args.state_file or Options().state_file
    try:
        options = Options.from_layers(load_remembered(state_file), given)
        options = replace(options, state_file=state_file)
        if args.check:
            return check(options, out=sys.stdout)
        if args.uninstall:
            return uninstall(options, reload=not args.no_reload, out=sys.stdout)
        return install(options, assume_yes=args.yes, reload=not args.no_reload, out=sys.stdout, answer=sys.stdin)
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
