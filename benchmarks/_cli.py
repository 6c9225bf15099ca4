"""The command line of a benchmark module run on its own
(``python -m benchmarks.bench_NAME [--quick]``): one JSON object per line
as each measurement ends, SIGTERM handled as Ctrl-C (everything started is
stopped), exit 0, 1 when a server would not start, 130 when interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from benchmarks._report import Reporter
from benchmarks._servers import ServerError

__all__ = ["streaming_main"]

#: ``run(quick, emit=...)``: a benchmark's run, emitting each row as it comes.
Run = Callable[..., Any]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def streaming_main(
    argv: list[str] | None,
    *,
    name: str,
    description: str,
    quick_help: str,
    run: Run,
) -> int:
    """Parses ``--quick``, runs ``run`` with a reporter's ``emit``; the exit status."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.bench_{name}", description=description
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    reporter = Reporter(None)
    try:
        run(args.quick, emit=reporter.emit)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"[{name}] interrupted; everything started was stopped", file=sys.stderr, flush=True)
        return 130
    return 0
