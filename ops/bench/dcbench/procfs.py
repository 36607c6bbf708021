"""Resident memory and CPU time of processes, read from ``/proc`` (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    rss_mib: float  # VmRSS: resident now
    peak_mib: float  # VmHWM: the highest resident size the process ever had


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        return stat.read().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid``, sorted."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except OSError:
            continue
        # fields[0] is the state, fields[1] the parent pid.
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


def memory(pid: int) -> Memory:
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024  # kB -> MiB
    return Memory(values.get("VmRSS", 0.0), values.get("VmHWM", 0.0))


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU time of ``pid`` so far (0 if it is gone).

    With ``reaped_children``, add the time of its children that exited and were
    waited for (how a postmaster accounts for its finished backends).
    """
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 of stat; fields[] starts at field 3.
    seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    try:
        # Nanoseconds on the CPU: finer than stat's clock ticks (10 ms).
        with open(f"/proc/{pid}/schedstat") as schedstat:
            seconds = int(schedstat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    if reaped_children:
        seconds += (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    return seconds


def total_cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def exists(pid: int) -> bool:
    try:
        fields = _stat_fields(pid)
    except OSError:
        return False
    return fields[0] != "Z"
