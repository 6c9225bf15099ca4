"""``python -m benchmarks [--quick] [--only NAME]… [--system NAME]… [--out PATH]``.

Prints one JSON object per line (see ``benchmarks._report``) and saves them to
``benchmarks/results/latest.jsonl``. Progress goes to stderr. Exit status: 0
when every measurement ran (budgets are reported, not enforced, unless
``--strict``), 1 when one failed or with ``--strict`` a budget was missed, 130
when interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from benchmarks._report import Reporter
from benchmarks._runner import BENCHES, FULL, QUICK, SYSTEMS, Runner
from benchmarks._servers import EtcdServer, ServerError

# Benchmarks of one component in this process, beside the registry runner:
# a module with `run(quick: bool) -> list[dict]`, each dict one result line.
STANDALONE = {
    "balancer": "benchmarks.bench_balancer",
    "bus": "benchmarks.bench_bus",
    "envoy": "benchmarks.bench_envoy",
    "gateway": "benchmarks.bench_gateway",
    "ha": "benchmarks.bench_ha",
    "health": "benchmarks.bench_health",
    "proxy": "benchmarks.bench_proxy",
    "proxyless": "benchmarks.bench_proxyless",
    "security": "benchmarks.bench_security",
    "sidecar": "benchmarks.bench_sidecar",
    "sync": "benchmarks.bench_sync",
    "xds": "benchmarks.bench_xds",
}

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.jsonl"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Control plane vs etcd: registrations/s, watch latency to 1,000 "
        "watchers, 10k-instance snapshot, RSS. One JSON object per line.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run of under a minute"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHES + tuple(STANDALONE),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHES + tuple(STANDALONE))}",
    )
    parser.add_argument(
        "--system",
        action="append",
        choices=SYSTEMS,
        help="measure only this system (repeatable; default: both)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where to save the result lines (default: {DEFAULT_OUT})",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a budget is missed")
    return parser.parse_args(argv)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every cleanup, like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    benches = tuple(b for b in BENCHES if not args.only or b in args.only)
    standalone = [
        name
        for name, module in STANDALONE.items()
        if (not args.only or name in args.only) and importlib.util.find_spec(module) is not None
    ]
    systems = tuple(s for s in SYSTEMS if not args.system or s in args.system)
    reporter = Reporter(args.out)
    started = time.monotonic()
    try:
        etcd_version = ""
        if "etcd" in systems:
            try:
                etcd_version = EtcdServer.version_of_binary()
            except ServerError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        reporter.emit(
            {
                "bench": "run",
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "quick": args.quick,
                "benches": list(benches),
                "systems": list(systems),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "etcd_version": etcd_version,
            }
        )
        with tempfile.TemporaryDirectory(prefix="eco-bench-") as workdir:
            runner = Runner(
                QUICK if args.quick else FULL,
                reporter,
                Path(workdir),
                benches=benches,
                systems=systems,
            )
            if benches:
                runner.run()
        for name in standalone:
            print(f"[bench] {name}", file=sys.stderr)
            for row in importlib.import_module(STANDALONE[name]).run(args.quick):
                reporter.emit(row)
    except KeyboardInterrupt:
        print("[bench] interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        reporter.close()
    print(
        f"[bench] done in {time.monotonic() - started:.0f}s; results in {args.out}",
        file=sys.stderr,
    )
    if reporter.failures:
        return 1
    if args.strict and reporter.missed:
        print(f"[bench] budgets missed: {', '.join(reporter.missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
