"""`python -m bench` (what `make bench` runs): first the microbenchmarks (raw pymodbus, a bare
Celery task, bare self-rescheduling chains; about 100 s), then pollctl, the naive setup and the
asyncio floor on one simulated fleet; prints tables, writes JSON and a PNG to the output
folder."""

from __future__ import annotations

import argparse
import json
import resource
from dataclasses import asdict, replace
from pathlib import Path

import redis

from . import micro_celery, micro_modbus
from .analyze import Figures
from .micro import Micro, Processes
from .micro import table as micro_table
from .noop import BROKER as MICRO_BROKER
from .run import Bench, Plan

SETUPS = ("pollctl", "naive", "floor")
#: Fleet sizes of the `--scale` sweep (all at one offered rate: cost per poll by size).
SCALE_SIZES = (100, 1000, 5000, 10000)


def raise_file_limit() -> None:
    """Every simulated device and every poller connection is a file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (262_144, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
            return
        except (ValueError, OSError):
            continue


def table(rows: list[Figures]) -> str:
    head = (
        f"{'setup':8} {'N':>6} {'int s':>5} {'offered/s':>9} {'achieved/s':>10} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'dup':>4} {'missed':>6} "
        f"{'failed':>6} {'CPU s/1000':>10} {'rows/s':>7}  CPU s per 1000 polls by process"
    )
    lines = [head]
    for f in rows:
        lat = f.lateness_ms
        per = ", ".join(f"{k} {v:.2f}" for k, v in f.cpu_per_1000.items())
        lines.append(
            f"{f.setup:8} {f.gateways:>6} {f.interval:>5g} {f.offered:>9.1f} {f.achieved:>10.1f} "
            f"{lat['p50']:>7.1f} {lat['p95']:>7.1f} {lat['p99']:>7.1f} {lat['max']:>7.1f} "
            f"{f.duplicates:>4} {f.missed:>6} {f.failed:>6} {f.cpu_total_per_1000:>10.2f} "
            f"{f.rows_per_s:>7.0f}  {per}"
        )
    return "\n".join(lines)


def overload_table(rows: list[Figures]) -> str:
    """The overload figures: what was shed, how evenly the shortfall fell on gateways."""
    head = (
        f"{'setup':24} {'capacity/s':>10} {'offered/s':>9} {'made/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'shed':>6} {'shed %':>6} {'missed':>6} {'worst/mean':>10} "
        f"{'starved':>7} {'dup':>4}"
    )
    lines = [head]
    for f in rows:
        lat = f.lateness_ms
        lines.append(
            f"{f.setup:24} {f.capacity:>10.1f} {f.offered:>9.1f} {f.achieved:>7.1f} "
            f"{lat['p50']:>7.1f} {lat['p99']:>7.1f} {f.shed:>6} {100 * f.shed_share:>6.1f} "
            f"{f.missed:>6} {f.worst_over_mean:>10.2f} {f.starved:>7} {f.duplicates:>4}"
        )
    return "\n".join(lines)


def start_line(f: Figures) -> str:
    """How the first round went: each gateway's first slot, how late it was polled."""
    if not f.first_round_ms:
        return f"{f.setup}: no first round recorded"
    lat = f.first_round_ms
    return (
        f"{f.setup} start: first slots spread over {f.first_round_s:.1f} s, lateness p50 "
        f"{lat['p50']:.1f} / p99 {lat['p99']:.1f} / max {lat['max']:.1f} ms, "
        f"{f.first_round_missed} missed"
    )


def run_micro(out: Path) -> list[Micro]:
    """The microbenchmarks in turn; their table printed, their figures in `out`/micro.json."""
    results: list[Micro] = []
    client = redis.Redis.from_url(MICRO_BROKER)
    try:
        with Processes(out / "micro") as processes:
            results += micro_modbus.run(processes)
            for pool, concurrency in (("prefork", 2), ("threads", 32)):
                print(f"-- celery no-op tasks, {pool} pool x{concurrency}", flush=True)
                results.append(
                    micro_celery.run_noop(processes, client, pool=pool, concurrency=concurrency)
                )
            for same_phase in (False, True):
                print(f"-- chains, {'one phase' if same_phase else 'phases spread'}", flush=True)
                results.append(micro_celery.run_chains(processes, client, same_phase=same_phase))
    finally:
        client.close()
    print(micro_table(results), flush=True)
    (out / "micro.json").write_text(json.dumps([asdict(m) for m in results], indent=2))
    print(f"microbenchmarks: {out / 'micro.json'}", flush=True)
    return results


def run(plan: Plan, setups: list[str]) -> list[Figures]:
    bench = Bench(plan)
    out = []
    with bench.fleet():
        for setup in setups:
            print(
                f"-- {setup}: {plan.gateways} gateways at {plan.interval:g} s, "
                f"{plan.seconds:g} s measured after {plan.warmup:g} s",
                flush=True,
            )
            figures = getattr(bench, f"run_{setup}")()
            figures.device_latency_ms = plan.latency_ms
            out.append(figures)
            print(start_line(figures), flush=True)
    return out


def run_scale_out(plan: Plan) -> list[Figures]:
    """pollctl with one polling worker, then two, on one fleet."""
    out = []
    for workers in (1, 2):
        step = replace(plan, workers=workers)
        bench = Bench(step)
        with bench.fleet():
            print(
                f"-- pollctl with {workers} polling workers: {plan.gateways} gateways", flush=True
            )
            figures = bench.run_pollctl()
            figures.device_latency_ms = plan.latency_ms
            out.append(figures)
    return out


def run_overload(plan: Plan, share: float) -> list[Figures]:
    """pollctl's polling worker pinned to `plan.cpus`: first its capacity, the polls it
    makes of an offered load that exceeds it with shedding off (every poll is then made,
    late: a shedding worker spends part of its time shedding), then the same number of
    gateways, shedding on, at the interval that offers `share` times that capacity."""
    probe = Bench(replace(plan, late_limit=0))
    with probe.fleet():
        print(
            f"-- capacity, no shedding: {plan.gateways} gateways at {plan.interval:g} s",
            flush=True,
        )
        measured = probe.run_pollctl()
    measured.setup = f"pollctl capacity (cpu {plan.cpus})"
    capacity = measured.capacity = measured.achieved
    if measured.lateness_ms["p50"] < 250:
        print(
            f"warning: {measured.offered:.0f} polls/s offered did not overload the worker "
            "(p50 lateness under 250 ms): its capacity is more; offer more (--gateways, "
            "--interval)",
            flush=True,
        )
    interval = round(plan.gateways / (share * capacity), 3)
    step = replace(
        plan, interval=interval, workdir=plan.workdir.with_name(plan.workdir.name + "-x")
    )
    bench = Bench(step)
    with bench.fleet():
        print(
            f"-- overload: {plan.gateways} gateways at {interval:g} s "
            f"({share:.0%} of {capacity:.0f} polls/s)",
            flush=True,
        )
        figures = bench.run_pollctl()
    figures.setup = f"pollctl {share:.0%} of capacity"
    figures.capacity = capacity
    return [measured, figures]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=16, help="worker threads")
    parser.add_argument("--workers", type=int, default=1, help="pollctl polling workers")
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="pollctl alone with 1, then 2 polling workers on the same fleet",
    )
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument(
        "--scale",
        action="store_true",
        help="sweep 100, 1000, 5000, 10000 gateways at one offered rate (--rate), each "
        "setup in turn on one fleet, at the device latencies of --latencies",
    )
    parser.add_argument(
        "--rate", type=float, default=400.0, help="polls/s offered in the --scale sweep"
    )
    parser.add_argument(
        "--latencies", default="0", help="device latencies (ms) of the --scale sweep: 0,20"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run pollctl's polling workers under py-spy (collapsed stacks in the work folder)",
    )
    parser.add_argument(
        "--overload",
        type=float,
        nargs="?",
        const=1.5,
        default=None,
        metavar="SHARE",
        help="pin pollctl's polling worker to --cpus, measure its capacity on the fleet given "
        "(offer more than it can do), then offer SHARE (default 1.5) times that capacity",
    )
    parser.add_argument("--cpus", default="1", help="CPUs for --overload's polling worker")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    micro = parser.add_mutually_exclusive_group()
    micro.add_argument("--no-micro", action="store_true", help="skip the microbenchmarks")
    micro.add_argument("--micro-only", action="store_true", help="run only the microbenchmarks")
    args = parser.parse_args()
    setups = [s for s in args.setups.split(",") if s]
    unknown = set(setups) - set(SETUPS)
    if unknown:
        parser.error(f"unknown setups: {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    raise_file_limit()
    if not args.no_micro:
        run_micro(args.out)
    if args.micro_only:
        return
    latencies = [float(x) for x in args.latencies.split(",") if x]
    sizes = (
        [(n, lat) for lat in latencies for n in SCALE_SIZES]
        if args.scale
        else [(args.gateways, args.latency_ms)]
    )
    results: list[Figures] = []
    for n, latency in sizes:
        plan = Plan(
            n,
            n / args.rate if args.scale else args.interval,
            args.seconds,
            args.warmup,
            latency,
            args.concurrency,
            args.out / f"work-{n}-{latency:g}",
            args.workers,
            args.profile,
        )
        if args.scale_out:
            results += run_scale_out(plan)
        elif args.overload:
            results += run_overload(replace(plan, cpus=args.cpus), args.overload)
            print(overload_table(results), flush=True)
        else:
            results += run(plan, setups)
        print(table(results), flush=True)
    (args.out / "results.json").write_text(
        json.dumps(
            [{k: v for k, v in asdict(f).items() if k != "samples_ms"} for f in results], indent=2
        )
    )
    try:
        from .plot import plot
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
    else:
        print(f"plot: {plot(results, args.out, scale=args.scale)}")
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
