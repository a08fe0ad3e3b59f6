"""``lstm-bench run`` and ``lstm-bench sweep``: the command line over ``run_load``.

    lstm-bench run --protocol v2-binary --concurrency 16 --duration 10
    lstm-bench run --rate 2000 --max-in-flight 256 --json result.json
    lstm-bench sweep --concurrency 1,4,16,64 --json sweep.json --plot sweep.png
    lstm-bench sweep --rates 500,1000,2000 --plot open.png

Traffic goes to loopback only unless ``--allow-remote`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from service.loadtest.runner import run_load, run_sweep
from service.loadtest.spec import DEFAULT_URL, PROTOCOLS, LoadSpec, SpecError
from service.loadtest.stats import LoadResult, format_result, format_sweep

T = TypeVar("T", int, float)


def _list_of(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    def parse(text: str) -> list[T]:
        try:
            values = [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return values

    return parse


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add = p.add_argument
    add("--url", default=DEFAULT_URL, help="server base URL (default %(default)s)")
    add("--allow-remote", action="store_true", help="permit a non-loopback host")
    add(
        "--api-key",
        default=os.environ.get("LSTM_BENCH_API_KEY"),
        help="bearer token for a server with keys on (default: $LSTM_BENCH_API_KEY, so that "
        "the key stays out of the process list)",
    )
    add("--model", default="basic_motions")
    add("--protocol", choices=PROTOCOLS, default="v1")
    add("--batch", type=int, default=1, help="sequences per request")
    add("--timesteps", type=int, default=50)
    add("--features", type=int, help="default: read from GET /v2/models/{model}")
    add("--return-sequences", action="store_true", help="per-timestep outputs")
    add("--max-in-flight", type=int, default=256, help="open loop: beyond it, drop")
    add("--duration", type=float, default=10.0, help="measured seconds (per point)")
    add("--requests", type=int, help="stop after this many measured requests")
    add("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    add("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    add("--payloads", type=int, default=8, help="distinct random bodies")
    add("--seed", type=int, default=0)
    add("--json", type=Path, help="write the full result(s) here")
    add("--quiet", action="store_true", help="no progress bar")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[_common()], help="one load run")
    run.add_argument("--concurrency", type=int, default=16, help="closed loop connections")
    run.add_argument("--rate", type=float, help="open loop: requests/s on a fixed schedule")
    sweep = commands.add_parser("sweep", parents=[_common()], help="several runs, one plot")
    points = sweep.add_mutually_exclusive_group(required=True)
    points.add_argument("--concurrency", type=_list_of(int), help="closed loop points: 1,4,16")
    points.add_argument("--rates", type=_list_of(float), help="open loop points: 500,1000")
    sweep.add_argument("--plot", type=Path, help="write a PNG of latency against throughput")
    sweep.add_argument(
        "--x-axis", choices=("requests", "sequences"), default="requests", help="plot's x unit"
    )
    return parser


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    """The ``LoadSpec`` the options describe (a sweep's points replace loop settings)."""
    single = args.command == "run"
    return LoadSpec(
        url=args.url,
        model=args.model,
        protocol=args.protocol,
        batch=args.batch,
        timesteps=args.timesteps,
        features=args.features,
        return_sequences=args.return_sequences,
        concurrency=args.concurrency if single else 16,
        rate=args.rate if single else None,
        max_in_flight=args.max_in_flight,
        duration_s=args.duration,
        max_requests=args.requests,
        warmup_s=args.warmup,
        timeout_s=args.timeout,
        seed=args.seed,
        payloads=args.payloads,
        allow_remote=args.allow_remote,
        api_key=args.api_key,
    )


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _run(args: argparse.Namespace, spec: LoadSpec) -> None:
    result = run_load(spec, progress=not args.quiet)
    print(format_result(result))
    if args.json:
        _write_json(args.json, result.to_dict())


def _sweep(args: argparse.Namespace, spec: LoadSpec) -> None:
    def show(result: LoadResult) -> None:
        if not args.quiet:
            print(format_result(result), end="\n\n", flush=True)

    results = run_sweep(
        spec,
        concurrencies=args.concurrency or (),
        rates=args.rates or (),
        progress=not args.quiet,
        on_result=show,
    )
    print(format_sweep(results))
    if args.json:
        _write_json(args.json, {"points": [r.to_dict() for r in results]})
    if args.plot:
        from service.loadtest.plot import plot_sweep

        plot_sweep(results, args.plot, args.x_axis)
        print(f"plot written to {args.plot}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lstm-bench`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args)
        if args.command == "run":
            _run(args, spec)
        else:
            _sweep(args, spec)
    except SpecError as exc:
        print(f"lstm-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
