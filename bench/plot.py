"""The benchmark's PNG: lateness distributions and throughput against offered load, or,
for `--scale`, cost per poll and p99 lateness against the fleet size."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .analyze import Figures


def plot(results: list[Figures], out: Path, *, scale: bool) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    setups = sorted({f.setup for f in results})
    if scale:
        for setup in setups:
            for latency, group in _by_latency(results, setup).items():
                rows = sorted(group, key=lambda f: f.gateways)
                n = [f.gateways for f in rows]
                label = f"{setup}, device {latency:g} ms"
                left.plot(n, [f.cpu_total_per_1000 for f in rows], marker="o", label=label)
                right.plot(n, [f.lateness_ms["p99"] for f in rows], marker="o", label=label)
        left.set(xscale="log", xlabel="gateways", ylabel="CPU s per 1000 polls")
        right.set(xscale="log", xlabel="gateways", ylabel="p99 lateness (ms)")
    else:
        for f in results:
            ordered = sorted(f.samples_ms)
            if ordered:
                ys = [i / len(ordered) for i in range(len(ordered))]
                left.plot(ordered, ys, label=f.setup)
        left.set(xscale="symlog", xlabel="lateness (ms)", ylabel="share of polls (CDF)")
        right.bar([f.setup for f in results], [f.achieved for f in results], label="achieved")
        right.axhline(results[0].offered, color="k", linestyle="--", label="offered")
        right.set(ylabel="polls/s")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    path = out / ("scale.png" if scale else "bench.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _by_latency(results: list[Figures], setup: str) -> dict[float, list[Figures]]:
    groups: dict[float, list[Figures]] = {}
    for f in results:
        if f.setup == setup:
            groups.setdefault(f.device_latency_ms, []).append(f)
    return groups
