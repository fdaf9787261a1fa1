"""CPU use from /proc: per process, per group of process trees, and the whole machine.

A group is named by its root pids (a service the launcher started, or this benchmark process). At
the start and at the end of a window every process on the machine is read from /proc/<pid>/stat
and put in the group of its nearest root ancestor (walking the parent links), so the processes a
service forks on demand (Postfix's smtpd, cleanup and lmtp; Dovecot's lmtp and imap) count for it.
A group's CPU at an instant is the sum over its processes of utime + stime + cutime + cstime: when
a process exits, its parent reaps it and its CPU moves into the parent's cutime + cstime, so the
CPU of processes that ended within the window is not lost (as long as the reaper is in the group).
A process's own CPU includes all its threads.

"machine" is every CPU busy (from /proc/stat, less idle and iowait): what the groups leave over is
the kernel's own work (softirqs of loopback traffic) and anything else running on the machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The groups of the stack: a launcher service named here is its own group, any other is the
# bridge's (one process or several: "bridge", "filter", ...); "load" is the benchmark itself
# (this process and its children: socket workers; the SMTP sender and the IDLE fleet are threads
# and tasks in it); "profiler" is py-spy, when it runs.
INFRASTRUCTURE = ("postfix", "dovecot", "redis", "ferretdb")
BRIDGE = "bridge"
LOAD = "load"
PROFILER = "profiler"
MACHINE = "machine"
GROUPS = (*INFRASTRUCTURE, BRIDGE, LOAD, PROFILER)


@dataclass(frozen=True)
class ProcStat:
    """The CPU figures of one process from /proc/<pid>/stat, in clock ticks."""

    pid: int
    ppid: int
    comm: str
    own_ticks: int  # utime + stime: the process itself, all its threads
    reaped_ticks: int  # cutime + cstime: its children that exited and were waited for

    @property
    def ticks(self) -> int:
        return self.own_ticks + self.reaped_ticks


def stat_fields(pid: int | str, proc: Path = PROC) -> tuple[str, list[str]]:
    """comm and the fields after it in /proc/<pid>/stat (state is index 0, ppid index 1,
    utime/stime/cutime/cstime indices 11-14); comm may hold spaces and parentheses."""
    raw = (proc / str(pid) / "stat").read_text()
    return raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()


def parse_stat(pid: int, comm: str, fields: Sequence[str]) -> ProcStat:
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        comm=comm,
        own_ticks=int(fields[11]) + int(fields[12]),
        reaped_ticks=int(fields[13]) + int(fields[14]),
    )


def cpu_seconds(pid: int, proc: Path = PROC) -> float:
    """utime + stime of a process, in seconds."""
    comm, fields = stat_fields(pid, proc)
    return parse_stat(pid, comm, fields).own_ticks / CLOCK_TICKS


def busy_cpu_seconds(proc: Path = PROC) -> float:
    """CPU time every process on the machine used (all cores, /proc/stat less idle and iowait):
    the load the measured processes do not account for is contention from elsewhere."""
    with (proc / "stat").open() as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def read_procs(proc: Path = PROC) -> dict[int, ProcStat]:
    """Every process in `proc` (a /proc-like tree), by pid; those that exit while read are skipped."""
    out: dict[int, ProcStat] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            comm, fields = stat_fields(entry, proc)
            out[int(entry)] = parse_stat(int(entry), comm, fields)
        except (OSError, ValueError, IndexError):
            continue
    return out


def assign_groups(procs: Mapping[int, ProcStat], roots: Mapping[str, Sequence[int]]) -> dict[int, str]:
    """{pid: group} for every process that is a root or descends from one; a process under two
    roots (a service started by this benchmark process) belongs to the nearer one."""
    root_of = {pid: group for group, pids in roots.items() for pid in pids}
    found: dict[int, str | None] = {}
    for start in procs:
        chain: list[int] = []
        group: str | None = None
        pid = start
        while pid in procs and pid not in chain:  # `not in chain`: a cycle if pids were reused while read
            if pid in found:
                group = found[pid]
                break
            chain.append(pid)
            if pid in root_of:
                group = root_of[pid]
                break
            pid = procs[pid].ppid
        found.update(dict.fromkeys(chain, group))
    return {pid: group for pid, group in found.items() if group is not None}


def group_ticks(procs: Mapping[int, ProcStat], roots: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """{group: CPU ticks so far} (own and reaped children's) of each group's processes."""
    totals = dict.fromkeys(roots, 0)
    for pid, group in assign_groups(procs, roots).items():
        totals[group] += procs[pid].ticks
    return totals


def service_group(service: str) -> str:
    """The group a launcher service counts for."""
    return service if service in INFRASTRUCTURE else BRIDGE


def stack_roots(services: Mapping[str, int], load: Sequence[int]) -> dict[str, list[int]]:
    """Root pids by group (in GROUPS order, empty groups left out) from {service name: pid}."""
    roots: dict[str, list[int]] = {group: [] for group in GROUPS}
    for name, pid in services.items():
        roots[service_group(name)].append(pid)
    roots[LOAD] = list(load)
    return {group: pids for group, pids in roots.items() if pids}


def cores_between(
    before: Mapping[str, float], after: Mapping[str, float], seconds: float, digits: int = 3
) -> dict[str, float]:
    """CPU seconds used between two readings, as cores (CPU seconds per wall second)."""
    wall = max(seconds, 1e-9)
    return {name: round((after[name] - before.get(name, 0.0)) / wall, digits) for name in after}


class CpuMeter:
    """Cores used by groups of process trees between `start()` and `stop()`, and by the whole
    machine ("machine": cores busy, out of os.cpu_count()).

    `roots` maps a group to its root pids; it may be changed between start and stop (a group added
    meanwhile, e.g. a profiler started after `start()`, counts from zero)."""

    def __init__(
        self, roots: Mapping[str, Sequence[int]], proc: Path = PROC, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.roots: dict[str, list[int]] = {name: list(p) for name, p in roots.items()}
        self.proc = proc
        self.clock = clock
        self._t0 = 0.0
        self._c0: dict[str, float] = {}
        self.seconds = 0.0
        self.result: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {name: ticks / CLOCK_TICKS for name, ticks in group_ticks(read_procs(self.proc), self.roots).items()}
        out[MACHINE] = busy_cpu_seconds(self.proc)
        return out

    def start(self) -> None:
        self._t0 = self.clock()
        self._c0 = self._read()

    def stop(self) -> dict[str, float]:
        c1 = self._read()
        self.seconds = self.clock() - self._t0
        self.result = cores_between(self._c0, c1, self.seconds)
        return self.result
