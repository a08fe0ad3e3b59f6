"""``lstm-train``'s command line: its flags, presets, and per-layer lists.

Split from ``train.py``, which trains and publishes: this module turns argv
into the ``argparse.Namespace`` that ``train.run`` reads — a preset's settings
under the explicit flags, and ``--layers``/``--cells``/``--directions``/
``--merge-modes`` checked and expanded into one entry per layer, with a
one-line exit-2 error for a bad list instead of argparse's usage block.
``--horizon`` (with ``--lookback`` and ``--decoder-layers``) makes the stack an
encoder-decoder forecaster (``models/forecaster.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models import quantize
from models.architecture import CELLS, DIRECTIONS, MERGE_MODES
from models.presets import PRESETS, Preset

# train.py's docstring opens with the same line: the --help description.
_DESCRIPTION = "Train a stacked LSTM and export it into the model repository: ``lstm-train``."
REPOSITORY = Path(__file__).resolve().parent / "repository"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lstm-train", description=_DESCRIPTION)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a shipped dataset and its settings")
    p.add_argument("--data", type=Path, help=".npz or .csv (see models/data.py for the layout)")
    p.add_argument("--name", help="model name in the repository")
    p.add_argument("--layers", default="64,32", help="units per recurrent layer, e.g. 64,32")
    cells = p.add_mutually_exclusive_group()
    cells.add_argument("--cell", choices=CELLS, help="the cell of every layer (default: lstm)")
    cells.add_argument("--cells", help="one cell per layer, e.g. lstm,gru")
    p.add_argument(
        "--bidirectional", action="store_true", help="every layer bidirectional (--directions)"
    )
    p.add_argument(
        "--directions",
        help="one direction per layer (forward, bidirectional, backward), or one for all; "
        "backward is Keras's go_backwards",
    )
    p.add_argument(
        "--merge-modes",
        help="how bidirectional layers join their halves (concat, sum, ave, mul): "
        "one per layer or one for all (default: concat)",
    )
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--patience", type=int, default=30, help="epochs without improvement")
    p.add_argument(
        "--target",
        choices=["final", "sequence"],
        help="train on the final output or every timestep (default: what y's shape implies)",
    )
    p.add_argument(
        "--horizon",
        type=int,
        help="train an encoder-decoder forecaster of this many future steps (Keras's "
        "RepeatVector): on a series (value), or on sequences whose y holds those steps",
    )
    p.add_argument(
        "--lookback",
        type=int,
        help="with --horizon on a series: input steps per window (default: 4 x horizon)",
    )
    p.add_argument(
        "--decoder-layers",
        type=int,
        default=1,
        help="with --horizon: how many of the last --layers are the decoder (default 1)",
    )
    p.add_argument(
        "--validation-split",
        type=float,
        default=0.2,
        help="held out for early stopping; 0 stops on the training loss instead",
    )
    p.add_argument("--test-split", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--restarts",
        type=int,
        default=1,
        help="train this many seeds (seed, seed+1, ...) and keep the best on validation loss",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")
    p.add_argument("--repository", type=Path, default=REPOSITORY)
    p.add_argument("--version", type=int, help="default: the next free integer")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--quantize",
        action="store_true",
        help="also publish an int8 version, certified on the test split (lstm-quantize)",
    )
    quantize.add_arguments(p, data=False)
    args = p.parse_args(argv)
    if args.preset:
        preset: Preset = PRESETS[args.preset]
        name = preset.name
        forecast: dict[str, object] = {}
        if args.horizon is not None:  # a forecaster of the preset's series, not its model
            name = f"{preset.name}_forecast_{args.horizon}"
            forecast = {"lookback": preset.lookback} if preset.lookback else {}
        p.set_defaults(data=preset.data, name=name, **preset.hyperparameters, **forecast)
        args = p.parse_args(argv)  # explicit flags still win over the preset
    if args.data is None or args.name is None:
        p.error("give --preset, or --data and --name")
    try:
        args.layers, args.cells, args.directions, args.merge_modes = stack_of(args)
        check_forecaster(args)
    except ValueError as error:  # one line, not argparse's usage block
        print(f"lstm-train: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return args


def check_forecaster(args: argparse.Namespace) -> None:
    """``--horizon`` and its companions make sense together, or ValueError saying why not."""
    if args.horizon is None:
        if args.lookback is not None:
            raise ValueError("--lookback needs --horizon (it sizes a forecaster's windows)")
        return
    if args.horizon < 1:
        raise ValueError(f"--horizon {args.horizon}: a forecaster needs at least 1 future step")
    if args.target is not None:
        raise ValueError(
            f"--target {args.target} and --horizon: a forecaster's target is its horizon; "
            "give one of them"
        )
    if not 1 <= args.decoder_layers < len(args.layers):
        raise ValueError(
            f"--decoder-layers {args.decoder_layers} of {len(args.layers)} layers (--layers): "
            "a forecaster needs at least one encoder and one decoder layer, e.g. --layers 64,64"
        )


def _per_layer(
    flag: str, value: str | None, count: int, known: tuple[str, ...], default: str
) -> list[str]:
    """A comma list with one entry per layer; one entry stands for every layer."""
    if value is None:
        return [default] * count
    items = [item.strip() for item in str(value).split(",")]
    unknown = [item for item in items if item not in known]
    if unknown:
        raise ValueError(f"{flag}: {unknown[0]!r} is not one of {', '.join(known)}")
    if len(items) == 1:
        return items * count
    if len(items) != count:
        raise ValueError(
            f"{flag} gives {len(items)} entries for {count} layers (--layers): "
            "give one per layer, or one for all"
        )
    return items


def stack_of(args: argparse.Namespace) -> tuple[list[int], list[str], list[str], list[str]]:
    """(units, cells, directions, merge modes) per layer from the flags; ValueError if not."""
    try:
        layers = [int(u) for u in str(args.layers).split(",")]
    except ValueError:
        raise ValueError(f"--layers: {args.layers!r} is not a comma list of units") from None
    if not layers or min(layers) < 1:
        raise ValueError(f"--layers: {args.layers!r} needs positive units")
    n = len(layers)
    if args.bidirectional and args.directions is not None:
        raise ValueError("give --bidirectional or --directions, not both")
    direction = "bidirectional" if args.bidirectional else "forward"
    cells = _per_layer("--cells", args.cells or args.cell, n, CELLS, "lstm")
    directions = _per_layer("--directions", args.directions, n, DIRECTIONS, direction)
    merges = _per_layer("--merge-modes", args.merge_modes, n, MERGE_MODES, "concat")
    return layers, cells, directions, merges
