"""The benchmark's PNG: lateness distributions and throughput against offered load, or,
for `--scale`, cost per poll and p99 lateness against the fleet size."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .analyze import Figures


def plot(results: list[Figures], out: Path, *, scale: bool) -> Path:
    if scale:
        return _plot_scale(results, out)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
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
    path = out / "bench.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _plot_scale(results: list[Figures], out: Path) -> Path:
    """Per setup and device latency, against the fleet size (one offered rate): CPU per
    poll of everything but the devices, of the pollers alone, and p99 lateness."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for setup in sorted({f.setup for f in results}):
        for latency, group in _by_latency(results, setup).items():
            rows = sorted(group, key=lambda f: f.gateways)
            n = [f.gateways for f in rows]
            label = f"{setup}, device {latency:g} ms"
            axes[0].plot(n, [f.cpu_total_per_1000 for f in rows], marker="o", label=label)
            axes[1].plot(n, [poller_cpu(f) for f in rows], marker="o", label=label)
            axes[2].plot(n, [f.lateness_ms["p99"] for f in rows], marker="o", label=label)
    axes[0].set(ylabel="CPU ms per poll (all but the devices)")
    axes[1].set(ylabel="CPU ms per poll (polling workers / floor)")
    axes[2].set(ylabel="p99 lateness (ms)", yscale="log")
    for ax in axes:
        ax.set(xscale="log", xlabel="gateways", ylim=(0, None) if ax is not axes[2] else None)
        ax.legend()
        ax.grid(alpha=0.3)
    path = out / "scale.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def poller_cpu(f: Figures) -> float:
    """CPU ms per poll of the processes that poll: pollctl's polling workers, the floor."""
    return sum(v for k, v in f.cpu_per_1000.items() if k.startswith(("worker", "floor")))


def _by_latency(results: list[Figures], setup: str) -> dict[float, list[Figures]]:
    groups: dict[float, list[Figures]] = {}
    for f in results:
        if f.setup == setup:
            groups.setdefault(f.device_latency_ms, []).append(f)
    return groups
