"""The benchmark's profile summaries (py-spy collapsed stacks) and CPU by process group (/proc trees).

Pure functions on real data shapes: collapsed stacks as py-spy 0.4 writes them (`--format raw
--full-filenames --subprocesses`), and /proc-like trees built in a temporary directory (stat lines
in the kernel's format). One test runs py-spy itself on a small Python process, when it is installed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bench.cpu import (
    CLOCK_TICKS,
    CpuMeter,
    assign_groups,
    busy_cpu_seconds,
    group_ticks,
    read_procs,
    stack_roots,
)
from bench.profile import Frame, Profiler, area, module_path, parse_collapsed, parse_frame, summarise

SITE = "/srv/mail-bridge/.venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"
REPO = "/srv/mail-bridge"

ROOT = 'process 4242:"/srv/mail-bridge/.venv/bin/python -m bridge serve"'
LOOP = (
    f"<module> ({REPO}/bridge/__main__.py:9);run ({STDLIB}/asyncio/runners.py:190);"
    f"BaseEventLoop.run_forever ({STDLIB}/asyncio/base_events.py:607);"
    f"BaseEventLoop._run_once ({STDLIB}/asyncio/base_events.py:1922);Handle._run ({STDLIB}/asyncio/events.py:80)"
)
COLLAPSED = f"""\
{ROOT};{LOOP};Relay._handle ({REPO}/bridge/realtime.py:210);Relay._emit ({REPO}/bridge/realtime.py:250);\
AsyncServer.emit ({SITE}/socketio/async_server.py:170);Packet.encode ({SITE}/engineio/packet.py:40) 30
{ROOT};{LOOP};Relay._handle ({REPO}/bridge/realtime.py:212);Redis.execute_command \
({SITE}/redis/asyncio/client.py:600);PythonParser.read_response ({SITE}/redis/_parsers/resp2.py:20) 20
{ROOT};{LOOP};Relay._handle ({REPO}/bridge/realtime.py:205);decode ({REPO}/bridge/codec.py:80);\
unpackb ({SITE}/msgpack/fallback.py:120) 10
{ROOT};{LOOP};Indexer.apply ({REPO}/bridge/store.py:90);Indexer.apply ({REPO}/bridge/store.py:95);\
Collection.update_one ({SITE}/pymongo/asynchronous/collection.py:1100) 15
{ROOT};{LOOP};Filter.handle_DATA ({REPO}/bridge/smtp_filter.py:60);BytesParser.parsebytes \
({STDLIB}/email/parser.py:120);FeedParser.feed ({STDLIB}/email/feedparser.py:173) 10
{ROOT};BaseEventLoop._run_once ({STDLIB}/asyncio/base_events.py:1900);EpollSelector.select \
({STDLIB}/selectors.py:468) 5
{ROOT};{LOOP};RequestHandler.start ({SITE}/aiohttp/web_protocol.py:500);CIMultiDict.add \
({SITE}/multidict/_multidict_py.py:300) 5
{ROOT};Thread._bootstrap ({STDLIB}/threading.py:995);_worker ({STDLIB}/concurrent/futures/thread.py:83);\
_WorkItem.run ({STDLIB}/concurrent/futures/thread.py:58);resolve ({REPO}/bridge/smtp_filter.py:30);\
getfqdn ({STDLIB}/socket.py:792) 5

not a line
{ROOT};half a line without a count
"""


# ============================================================================ collapsed stacks


def test_parse_frame_forms() -> None:
    assert parse_frame(f"Relay._handle ({REPO}/bridge/realtime.py:210)") == Frame(
        "Relay._handle", f"{REPO}/bridge/realtime.py", 210
    )
    assert parse_frame("<module> (spin.py:7)") == Frame("<module>", "spin.py", 7)
    assert parse_frame("work (/tmp/a dir (copy)/spin.py:5)") == Frame("work", "/tmp/a dir (copy)/spin.py", 5)
    assert parse_frame("native_call (libfoo.so)") == Frame("native_call", "libfoo.so", None)
    assert parse_frame("<lambda> (<frozen importlib._bootstrap>:1)").path == "<frozen importlib._bootstrap>"
    assert parse_frame("no location at all") == Frame("no location at all", "")


def test_parse_collapsed_reads_counts_and_process_frames() -> None:
    stacks = parse_collapsed(COLLAPSED)
    assert [s.count for s in stacks] == [30, 20, 10, 15, 10, 5, 5, 5]
    assert {s.pid for s in stacks} == {4242}
    first = stacks[0]
    assert first.frames[0] == Frame("<module>", f"{REPO}/bridge/__main__.py", 9)
    assert first.frames[-1] == Frame("Packet.encode", f"{SITE}/engineio/packet.py", 40)
    # Without --subprocesses there is no process frame; a cmdline with ";" stays in the process frame.
    plain = parse_collapsed('work (spin.py:5);dumps (json/__init__.py:231) 3\nprocess 7:"sh -c a;b";f (x.py:1) 2\n')
    assert plain[0].pid is None and [f.function for f in plain[0].frames] == ["work", "dumps"]
    assert plain[1].pid == 7 and plain[1].frames == (Frame("f", "x.py", 1),)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"{SITE}/redis/asyncio/client.py", "redis"),  # redis's asyncio package is redis, not the event loop
        (f"{STDLIB}/asyncio/base_events.py", "asyncio/selectors"),
        (f"{STDLIB}/selectors.py", "asyncio/selectors"),
        (f"{SITE}/uvloop/__init__.py", "asyncio/selectors"),
        (f"{SITE}/pymongo/asynchronous/collection.py", "pymongo"),
        (f"{SITE}/bson/__init__.py", "pymongo"),
        (f"{SITE}/engineio/async_socket.py", "engineio/socketio"),
        (f"{SITE}/socketio/async_server.py", "engineio/socketio"),
        (f"{SITE}/aiohttp/web_protocol.py", "aiohttp"),
        (f"{SITE}/yarl/_url.py", "aiohttp"),
        (f"{SITE}/aiosmtpd/smtp.py", "aiosmtpd"),
        (f"{STDLIB}/email/feedparser.py", "email (stdlib)"),
        (f"{SITE}/msgpack/fallback.py", "msgpack"),
        (f"{REPO}/bridge/realtime.py", "bridge"),
        (f"{REPO}/bridge/stack/launcher.py", "bridge"),
        ("bridge/realtime.py", "bridge"),  # as py-spy shortens paths without --full-filenames
        ("asyncio/events.py", "asyncio/selectors"),
        (f"{STDLIB}/json/encoder.py", "other"),
        (f"{REPO}/bench/latency.py", "other"),
        ("<frozen importlib._bootstrap>", "other"),
        ("", "other"),
    ],
)
def test_area_of_a_frame(path: str, expected: str) -> None:
    assert area(path) == expected


def test_module_path_is_from_the_top_level_package() -> None:
    assert module_path(f"{SITE}/redis/asyncio/client.py") == "redis/asyncio/client.py"
    assert module_path(f"{STDLIB}/asyncio/events.py") == "asyncio/events.py"
    assert module_path(f"{REPO}/bridge/stack/launcher.py") == "bridge/stack/launcher.py"
    assert module_path("/usr/lib/python3/dist-packages/yaml/main.py") == "yaml/main.py"


def test_summarise_shares() -> None:
    summary = summarise(parse_collapsed(COLLAPSED))
    assert summary["samples"] == 100
    assert summary["processes"] == {"4242": 100}
    areas = {a["area"]: a["share"] for a in summary["areas"]}
    assert areas == {
        "engineio/socketio": 0.30,
        "redis": 0.20,
        "pymongo": 0.15,
        "msgpack": 0.10,
        "email (stdlib)": 0.10,
        "asyncio/selectors": 0.05,
        "aiohttp": 0.05,
        "other": 0.05,
    }
    assert [a["samples"] for a in summary["areas"]] == sorted((a["samples"] for a in summary["areas"]), reverse=True)
    inclusive = {(f["function"], f["file"]): f["samples"] for f in summary["bridge_inclusive"]}
    # Three lines through Relay._handle at three different lines: one function; a recursive
    # Indexer.apply counts once per sample; a bridge function in a thread-pool thread counts too.
    assert inclusive[("Relay._handle", "bridge/realtime.py")] == 60
    assert inclusive[("Indexer.apply", "bridge/store.py")] == 15
    assert inclusive[("decode", "bridge/codec.py")] == 10
    assert inclusive[("resolve", "bridge/smtp_filter.py")] == 5
    # The start-up chain to the event loop (bridge/__main__.py's <module>) is on every loop sample: left out.
    assert ("<module>", "bridge/__main__.py") not in inclusive
    assert all(f["file"].startswith("bridge/") for f in summary["bridge_inclusive"])
    assert summary["bridge_inclusive"][0]["function"] == "Relay._handle"
    leaves = [(f["function"], f["file"], f["share"]) for f in summary["leaves"]]
    assert leaves[0] == ("Packet.encode", "engineio/packet.py", 0.30)
    assert leaves[1] == ("PythonParser.read_response", "redis/_parsers/resp2.py", 0.20)


def test_summarise_keeps_the_top() -> None:
    text = "".join(f"f{n} (/srv/mail-bridge/bridge/m{n}.py:1) {n + 1}\n" for n in range(40))
    summary = summarise(parse_collapsed(text), top=15)
    assert len(summary["leaves"]) == 15 and len(summary["bridge_inclusive"]) == 15
    assert summary["leaves"][0]["function"] == "f39"
    assert "processes" not in summary
    assert summarise([]) == {"samples": 0, "areas": [], "bridge_inclusive": [], "leaves": []}


# ============================================================================ /proc trees


def _stat(pid: int, comm: str, ppid: int, *, utime: int, stime: int, cutime: int, cstime: int) -> str:
    # The kernel's format (proc_pid_stat(5)): pid (comm) state ppid pgrp session tty_nr tpgid flags
    # minflt cminflt majflt cmajflt utime stime cutime cstime priority nice num_threads ...
    rest = f"S {ppid} {pid} {pid} 0 -1 4194560 1200 0 3 0 {utime} {stime} {cutime} {cstime} 20 0 1 0 5000 1000000"
    return f"{pid} ({comm}) {rest} 2000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n"


class FakeProc:
    """A /proc-like tree in a directory: <pid>/stat files and a stat line for the machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "self").mkdir(parents=True)  # not a pid: skipped
        (root / "sys").mkdir()
        self.machine(busy=0, idle=0)

    def add(
        self, pid: int, comm: str, ppid: int, utime: int, *, stime: int = 0, cutime: int = 0, cstime: int = 0
    ) -> None:
        stat = _stat(pid, comm, ppid, utime=utime, stime=stime, cutime=cutime, cstime=cstime)
        (self.root / str(pid)).mkdir(exist_ok=True)
        (self.root / str(pid) / "stat").write_text(stat)

    def exit(self, pid: int) -> None:
        (self.root / str(pid) / "stat").unlink()
        (self.root / str(pid)).rmdir()

    def machine(self, busy: int, idle: int) -> None:
        # cpu user nice system idle iowait irq softirq steal guest guest_nice
        user, system = busy // 2, busy - busy // 2
        (self.root / "stat").write_text(f"cpu  {user} 0 {system} {idle} 0 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\n")


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    """init; the benchmark (100) with the services it started and a socket worker; an unrelated process."""
    fake = FakeProc(tmp_path / "proc")
    fake.add(1, "systemd", 0, 50)
    fake.add(100, "python", 1, 300, stime=20)  # the benchmark: the load
    fake.add(110, "python", 100, 40)  # a socket worker
    fake.add(200, "master", 100, 10, stime=5, cutime=7, cstime=3)  # Postfix
    fake.add(201, "smtpd", 200, 20, stime=4)
    fake.add(202, "cleanup", 200, 6)
    fake.add(203, "trivial-rewrite", 202, 2)  # a grandchild: still Postfix's
    fake.add(300, "dovecot", 100, 8)
    fake.add(301, "lmtp", 300, 30)
    fake.add(400, "python", 100, 500, stime=60)  # the bridge
    fake.add(410, "python", 100, 200)  # a second bridge service ("filter")
    fake.add(411, "sh (x) y)", 410, 1)  # comm with spaces and parentheses
    fake.add(500, "redis-server", 100, 12)
    fake.add(900, "bash", 1, 70)  # nobody's
    return fake


SERVICES = {"redis": 500, "dovecot": 300, "bridge": 400, "filter": 410, "postfix": 200}


def test_stack_roots_group_every_other_service_as_the_bridge() -> None:
    roots = stack_roots(SERVICES, [100])
    assert roots == {
        "postfix": [200],
        "dovecot": [300],
        "redis": [500],
        "bridge": [400, 410],
        "load": [100],
    }
    assert list(stack_roots({"ferretdb": 7, "bridge": 8}, [1])) == ["ferretdb", "bridge", "load"]


def test_read_procs(proc: FakeProc) -> None:
    procs = read_procs(proc.root)
    assert set(procs) == {1, 100, 110, 200, 201, 202, 203, 300, 301, 400, 410, 411, 500, 900}
    assert procs[411].comm == "sh (x) y)" and procs[411].ppid == 410
    assert (procs[200].own_ticks, procs[200].reaped_ticks, procs[200].ticks) == (15, 10, 25)


def test_assign_groups_takes_the_nearest_root(proc: FakeProc) -> None:
    groups = assign_groups(read_procs(proc.root), stack_roots(SERVICES, [100]))
    assert {pid for pid, g in groups.items() if g == "postfix"} == {200, 201, 202, 203}
    assert {pid for pid, g in groups.items() if g == "dovecot"} == {300, 301}
    assert {pid for pid, g in groups.items() if g == "bridge"} == {400, 410, 411}
    assert {pid for pid, g in groups.items() if g == "load"} == {100, 110}
    assert groups[500] == "redis"
    assert 1 not in groups and 900 not in groups


def test_assign_groups_survives_a_parent_cycle(tmp_path: Path) -> None:
    fake = FakeProc(tmp_path / "proc")
    fake.add(10, "a", 11, 1)
    fake.add(11, "b", 10, 1)  # pids reused while read can make this
    fake.add(12, "c", 10, 1)
    assert assign_groups(read_procs(fake.root), {"x": [99]}) == {}


def test_group_ticks(proc: FakeProc) -> None:
    totals = group_ticks(read_procs(proc.root), stack_roots(SERVICES, [100]))
    assert totals == {
        "postfix": 15 + 10 + 24 + 6 + 2,
        "dovecot": 8 + 30,
        "redis": 12,
        "bridge": 560 + 200 + 1,
        "load": 320 + 40,
    }


def test_cpu_meter_counts_processes_that_came_and_went(proc: FakeProc) -> None:
    now = [1000.0]
    meter = CpuMeter(stack_roots(SERVICES, [100]), proc=proc.root, clock=lambda: now[0])
    proc.machine(busy=1000, idle=5000)
    meter.start()
    # Two seconds later: smtpd 201 used 30 more ticks and exited, reaped by the master (its whole
    # 24 + 30 moved into the master's cutime/cstime); a new smtpd 204 used 40; the bridge 200 more;
    # a profiler (started after start()) used 10; the machine was busy 400 more ticks.
    proc.exit(201)
    proc.add(200, "master", 100, 10, stime=5, cutime=7 + 44, cstime=3 + 10)
    proc.add(204, "smtpd", 200, 40)
    proc.add(400, "python", 100, 650, stime=110)
    proc.add(700, "py-spy", 100, 10)
    meter.roots["profiler"] = [700]
    proc.machine(busy=1400, idle=5400)
    now[0] += 2.0
    cores = meter.stop()
    ticks = CLOCK_TICKS * 2.0
    assert cores["postfix"] == pytest.approx((30 + 40) / ticks, abs=1e-3)
    assert cores["bridge"] == pytest.approx(200 / ticks, abs=1e-3)
    assert cores["profiler"] == pytest.approx(10 / ticks, abs=1e-3)
    assert cores["load"] == 0.0 and cores["dovecot"] == 0.0
    assert cores["machine"] == pytest.approx(400 / ticks, abs=1e-3)
    assert meter.seconds == 2.0


def test_busy_cpu_seconds(tmp_path: Path) -> None:
    fake = FakeProc(tmp_path / "proc")
    fake.machine(busy=CLOCK_TICKS * 3, idle=CLOCK_TICKS * 10)
    assert busy_cpu_seconds(fake.root) == pytest.approx(3.0)


# ============================================================================ py-spy itself

BUSY = """\
import time

def spin(deadline):
    total = 0
    while time.monotonic() < deadline:
        total += sum(range(200))
    return total

print("ready", flush=True)
spin(time.monotonic() + 20)
"""


async def test_profiler_records_a_python_process(tmp_path: Path) -> None:
    source = tmp_path / "bridge" / "busy.py"
    source.parent.mkdir()
    source.write_text(BUSY)
    child = await asyncio.create_subprocess_exec(sys.executable, str(source), stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdout is not None
        await child.stdout.readline()
        profiler = Profiler({"busy": child.pid, "gone": 2**22 + 1}, tmp_path / "profiles", "t", rate=100)
        await profiler.start()
        await asyncio.sleep(1.0)
        profile = await profiler.stop()
    finally:
        child.kill()
        await child.wait()
    busy, gone = profile["services"]["busy"], profile["services"]["gone"]
    assert "error" not in busy, busy  # `make test` installs the bench extra, py-spy with it
    assert busy["samples"] > 20, busy
    assert Path(busy["raw"]).exists()
    # No event loop here: the whole stack, <module> included, is the program's.
    assert {f["function"] for f in busy["bridge_inclusive"]} == {"spin", "<module>"}
    assert busy["cpu_cores"] > 0.1, busy
    assert busy["areas"][0]["area"] == "bridge"
    assert gone["error"].startswith("py-spy exited with 1: Error: "), gone


def test_under_uvloop_the_start_up_chain_ends_at_the_command_line_module() -> None:
    """uvloop's loop is compiled: py-spy shows the handlers right under the command's frames."""
    chain = (
        f"<module> ({REPO}/bridge/__main__.py:140);main ({REPO}/bridge/__main__.py:135);"
        f"run_filter ({REPO}/bridge/__main__.py:80)"
    )
    text = (
        f"{ROOT};{chain};FilterHandler.handle_DATA ({REPO}/bridge/smtp_filter.py:170);"
        f"FilterHandler.reinject ({REPO}/bridge/smtp_filter.py:140) 7\n"
        f"{ROOT};{chain};Handle._run ({STDLIB}/asyncio/events.py:80) 3\n"
    )
    inclusive = {f["function"]: f["samples"] for f in summarise(parse_collapsed(text))["bridge_inclusive"]}
    assert inclusive == {"FilterHandler.handle_DATA": 7, "FilterHandler.reinject": 7}
