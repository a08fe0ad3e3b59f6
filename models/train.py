"""Train a stacked LSTM and export it into the model repository: ``lstm-train``.

The whole path in one read: load and split the data (``data.py``), fit the
standardisation on the training split, train with Adam and gradient clipping,
stop early on validation loss (restoring the best weights), report on the test
split, export to ONNX with a parity check (``export.py``). The flags and their
per-layer lists are ``train_args.py``'s.

    lstm-train --preset basic_motions          # the shipped default model
    lstm-train --data my.npz --name my_model --layers 64,32 --epochs 100
    lstm-train --data my.npz --name my_gru --cell gru
    lstm-train --data my.npz --name mixed --cells lstm,gru --directions bidirectional,forward
    lstm-train --preset sunspots --name sunspots_5y --horizon 5 --layers 64,64

``--horizon n`` trains an encoder-decoder forecaster (``forecaster.py``): the
last ``--decoder-layers`` of ``--layers`` decode ``n`` future steps from the
encoder's final output, trained with MSE over all of them.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from models import quantize
from models.architecture import StackedLSTM
from models.data import Dataset, Splits, load, standardization, valid_mask
from models.examples import write_examples
from models.export import export_model
from models.forecaster import Forecaster
from models.presets import PRESETS
from models.train_args import parse_args
from service.core.contract import (
    METADATA_FILENAME,
    DataProvenance,
    ModelMetadata,
    TrainingInfo,
    file_sha256,
)


def tensors(data: Dataset) -> tuple[Tensor, Tensor, Tensor]:
    return torch.from_numpy(data.x), torch.from_numpy(data.lengths), torch.from_numpy(data.y)


def loss_of(model: StackedLSTM, splits: Splits, x: Tensor, lengths: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy on final logits, or MSE on standardised targets (masked per step)."""
    seq, final, _ = model.logits(x, lengths)
    if splits.task == "classification":
        return nn.functional.cross_entropy(final, y)
    scaled = (y - model.y_mean) / model.y_std
    if splits.target == "forecast":  # seq is the forecast [B, horizon, K]
        return nn.functional.mse_loss(seq, scaled)
    if splits.target == "final":
        return nn.functional.mse_loss(final, scaled)
    mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
    squared = ((seq - scaled) ** 2) * mask
    return squared.sum() / (mask.sum() * seq.shape[-1])


def evaluate(model: StackedLSTM, splits: Splits, data: Dataset) -> dict[str, float]:
    """Loss for early stopping, plus accuracy where there is one, for the progress bar."""
    model.eval()
    x, lengths, y = tensors(data)
    with torch.no_grad():
        scores = {"loss": float(loss_of(model, splits, x, lengths, y))}
        if splits.task == "classification":
            final = model.logits(x, lengths)[1]
            scores["acc"] = float((final.argmax(dim=1) == y).float().mean())
    return scores


def fit(
    model: StackedLSTM, splits: Splits, args: argparse.Namespace, seed: int
) -> tuple[int, float]:
    """Train; keep the weights of the best validation epoch. Returns (epochs run, its loss)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, lengths, y = tensors(splits.train)
    generator = torch.Generator().manual_seed(seed)
    best, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    monitored = splits.validation if len(splits.validation) else splits.train
    bar = tqdm(range(1, args.epochs + 1), disable=args.quiet, unit="epoch", file=sys.stderr)
    epochs_run = 0
    for epoch in bar:
        epochs_run = epoch
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), args.batch_size):
            idx = order[start : start + args.batch_size]
            optimizer.zero_grad()
            loss = loss_of(model, splits, x[idx], lengths[idx], y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            total += loss.item() * len(idx)
        scores = evaluate(model, splits, monitored)
        val = scores["loss"]
        bar.set_postfix(
            train=f"{total / len(x):.4f}", **{f"val_{k}": f"{v:.4f}" for k, v in scores.items()}
        )
        if val < best:
            best, best_state, stale = val, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= args.patience:
                break
    model.load_state_dict(best_state)
    return epochs_run, best


def report(model: StackedLSTM, splits: Splits) -> dict[str, Any]:
    """Test-set metrics in the units a user reads: accuracy, or MSE/MAE of the targets."""
    test = splits.test
    if not len(test):
        return {}
    if isinstance(model, Forecaster):
        return forecast_report(model, test)
    with torch.no_grad():
        seq, final, *_ = model.eval()(*tensors(test)[:2])
        seq_out, final_out = seq.numpy(), final.numpy()
    if splits.task == "classification":
        predicted = final_out.argmax(axis=1)
        k = splits.output_size
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (test.y, predicted), 1)
        return {
            "test_accuracy": float((predicted == test.y).mean()),
            "confusion_matrix": confusion.tolist(),
            "confusion_labels": list(splits.classes or []),
        }
    if splits.target == "final":
        err = final_out - test.y
        return {"test_mse": float((err**2).mean()), "test_mae": float(np.abs(err).mean())}
    mask = valid_mask(test)
    err = (seq_out - test.y)[mask]
    last = test.lengths - 1
    last_err = seq_out[np.arange(len(test)), last] - test.y[np.arange(len(test)), last]
    return {
        "test_mse": float((err**2).mean()),
        "test_mae": float(np.abs(err).mean()),
        "test_last_step_mse": float((last_err**2).mean()),
        "test_last_step_mae": float(np.abs(last_err).mean()),
    }


def forecast_report(model: Forecaster, test: Dataset) -> dict[str, Any]:
    """A forecaster's test MSE/MAE over every future step, and at the first and the last."""
    with torch.no_grad():
        forecast = model.eval()(*tensors(test)[:2])[0].numpy()
    err = forecast - test.y
    return {
        "test_mse": float((err**2).mean()),
        "test_mae": float(np.abs(err).mean()),
        "test_first_step_mse": float((err[:, 0] ** 2).mean()),
        "test_last_step_mse": float((err[:, -1] ** 2).mean()),
    }


def print_report(metrics: dict[str, Any]) -> None:
    for key, value in metrics.items():
        if key == "confusion_matrix":
            labels = metrics["confusion_labels"]
            print("confusion matrix (rows: true, columns: predicted)")
            print(" " * 12 + "".join(f"{c[:10]:>11}" for c in labels))
            for label, row in zip(labels, value, strict=True):
                print(f"{label[:11]:<12}" + "".join(f"{n:>11}" for n in row))
        elif key != "confusion_labels":
            print(f"{key}: {value:.4f}")


def build(splits: Splits, layers: list[int], args: argparse.Namespace) -> StackedLSTM:
    """A fresh model (a ``Forecaster`` with ``--horizon``) with the training split's
    standardisation baked in."""
    options: dict[str, Any] = {
        "task": splits.task,
        "dropout": args.dropout,
        "cells": args.cells,
        "directions": args.directions,
        "merge_modes": args.merge_modes,
    }
    if splits.target == "forecast":
        model: StackedLSTM = Forecaster(
            splits.num_features,
            layers,
            splits.output_size,
            horizon=args.horizon,
            encoder_layers=len(layers) - args.decoder_layers,
            **options,
        )
    else:
        model = StackedLSTM(splits.num_features, layers, splits.output_size, **options)
    train_mask = valid_mask(splits.train)
    x_mean, x_std = standardization(splits.train.x, train_mask)
    y_stats = None
    if splits.task == "regression":
        y = splits.train.y if splits.train.y.ndim == 3 else splits.train.y[:, None]
        y_mask = train_mask if splits.target == "sequence" else np.ones(y.shape[:2], bool)
        y_stats = [torch.from_numpy(a) for a in standardization(y, y_mask)]
    model.set_normalization(torch.from_numpy(x_mean), torch.from_numpy(x_std), *(y_stats or []))
    return model


def forecast_settings(args: argparse.Namespace, splits: Splits) -> dict[str, int]:
    """A forecaster's own hyperparameters (none for any other model); ``lookback`` is the
    input steps of its training windows (padded length for sequences of their own)."""
    if args.horizon is None:
        return {}
    return {
        "horizon": args.horizon,
        "lookback": int(splits.train.x.shape[1]),
        "decoder_layers": args.decoder_layers,
    }


def next_version(repository: Path, name: str) -> int:
    folder = repository / name
    versions = (
        [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    )
    return max(versions, default=0) + 1


def run(argv: list[str] | None = None) -> Path:
    """The whole of ``lstm-train``; returns the exported version's folder."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS.get(args.preset) if args.preset else None
    with tempfile.TemporaryDirectory() as tmp:
        # A forecaster windows the raw series itself (--lookback), not the preset's windows.
        prepare = preset.prepare if preset and not args.horizon else None
        data = prepare(args.data, Path(tmp)) if prepare else args.data
        splits = load(
            data,
            args.validation_split,
            args.test_split,
            args.seed,
            args.target,
            horizon=args.horizon,
            lookback=args.lookback,
        )
    layers = args.layers
    best: tuple[float, int, int, StackedLSTM] | None = None
    for seed in range(args.seed, args.seed + args.restarts):
        torch.manual_seed(seed)
        model = build(splits, layers, args)
        if best is None:
            print(model.summary())
        epochs_run, val_loss = fit(model, splits, args, seed)
        print(f"seed {seed}: {epochs_run} epochs, best validation loss {val_loss:.4f}")
        if best is None or val_loss < best[0]:
            best = (val_loss, seed, epochs_run, model)
    assert best is not None
    _, seed, epochs_run, model = best
    metrics = report(model, splits)
    print(
        f"trained {epochs_run} epochs on {len(splits.train)} sequences "
        f"({len(splits.validation)} validation, {len(splits.test)} test)"
    )
    print_report(metrics)
    training = TrainingInfo(
        hyperparameters={
            "layers": layers,
            "bidirectional": model.bidirectional,
            "cells": ",".join(args.cells),
            "directions": ",".join(args.directions),
            "merge_modes": ",".join(args.merge_modes),
            "dropout": args.dropout,
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "clip": args.clip,
            "patience": args.patience,
            "seed": seed,
            # the seed that drew the validation and test splits (lstm-quantize rebuilds
            # the test split from it); ``seed`` is the restart kept, which may differ
            "split_seed": args.seed,
            "restarts": args.restarts,
            "target": splits.target,
            "validation_split": args.validation_split,
            "test_split": args.test_split,
            **forecast_settings(args, splits),
        },
        epochs_run=epochs_run,
        metrics=metrics,
        data=DataProvenance(
            source=args.data.name,
            # the file the user named, not a preset's derived windows of it
            sha256=file_sha256(args.data),
            citation=preset.citation if preset else None,
            n_train=len(splits.train),
            n_validation=len(splits.validation),
            n_test=len(splits.test),
        ),
    )
    version = args.version or next_version(args.repository, args.name)
    path = export_model(
        model,
        args.repository,
        args.name,
        version,
        classes=splits.classes,
        feature_names=splits.feature_names,
        target=splits.target,
        dropout=args.dropout,
        training=training,
    )
    # A few test sequences for people trying the model (the service's page at /ui/).
    write_examples(path, splits.test, splits.classes)
    parity = ModelMetadata.model_validate_json((path / METADATA_FILENAME).read_bytes()).parity
    print(
        f"exported {path}: onnxruntime matches torch within {parity.max_abs_diff:.2g} "
        f"(tolerance {parity.tolerance:g}) over {len(parity.cases)} unseen shapes"
    )
    if args.quantize:
        quantize_after(path, splits.test, args)
    return path


def quantize_after(path: Path, test: Dataset, args: argparse.Namespace) -> Path | None:
    """``--quantize``: the int8 version of the version just exported, certified on ``test``.

    A refusal is reported (exit 2) after the fp32 version is already published.
    """
    if not len(test):
        print("lstm-train: --quantize needs a test split (--test-split > 0)", file=sys.stderr)
        raise SystemExit(2)
    held = quantize.HeldBack(test, "the test split (lstm-train)")
    try:
        int8 = quantize.quantize_version(
            path.parent.parent,
            path.parent.name,
            int(path.name),
            held=held,
            tolerance=quantize.tolerance_of(args),
            per_channel=args.per_channel,
            reduce_range=args.reduce_range,
            allow_slower=args.allow_slower,
            speed_seconds=args.speed_seconds,
        )
    except (quantize.Refused, ValueError) as error:
        print(f"lstm-train: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    print(quantize.describe(int8))
    return int8


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Returns None: the script wrapper passes any return
    value to ``sys.exit``, and a path there would mean exit status 1."""
    run(argv)


if __name__ == "__main__":
    main()
