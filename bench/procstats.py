"""CPU seconds and peak RSS of processes, from /proc; Redis's own CPU from INFO."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import redis

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / TICK


def tree_cpu(pid: int) -> float:
    """CPU of a process and every live descendant (a prefork pool's children)."""
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in descendants(pid))


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@dataclass
class Sample:
    """Cumulative CPU seconds per named process at one moment."""

    cpu: dict[str, float]


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_pid(client: redis.Redis) -> int:
    return int(client.info("server")["process_id"])


def sample(pids: dict[str, int], client: redis.Redis) -> Sample:
    cpu = {name: tree_cpu(pid) for name, pid in pids.items()}
    cpu["redis"] = redis_cpu(client)
    cpu["postgresql"] = sum(cpu_seconds(pid) for pid in postgres_pids())
    return Sample(cpu)


def delta(before: Sample, after: Sample) -> dict[str, float]:
    return {k: max(0.0, after.cpu.get(k, 0.0) - v) for k, v in before.cpu.items()}
