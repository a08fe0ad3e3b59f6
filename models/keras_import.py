"""Serve a model trained in Keras: ``lstm-import model.keras --name har``.

Reads a Keras 3 ``.keras`` file or a legacy ``.h5`` (Keras 2, ``tf.keras``)
with h5py and the JSON config, rebuilds it as the project's ``StackedLSTM``
with the weights converted exactly (``models/keras/``), and publishes it with
``export_model``, the same exporter as ``lstm-train``: the version folder,
``model.onnx`` and ``metadata.json`` are the ones the server already reads, and
the torch-vs-onnxruntime parity check runs as for any export.

When Keras is installed, the graph is also checked against Keras's own
``model.predict`` (``models/keras/parity.py``) before anything is published,
and the figure is recorded in the metadata's ``training`` block. Without Keras
the import still works and says that parity was checked against its own
PyTorch rebuild only.

    lstm-import har.keras --name har --classes walking,running,standing
    python -m models.keras_import legacy.h5 --name legacy --repository /models
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from models import quantize
from models.export import export_model
from models.keras import parity as keras_parity
from models.keras.bounds import MAX_BYTES, FileRefused, Limits, parse_size, size_text
from models.keras.convert import Converted, convert, keras_summary
from models.keras.files import KerasFile, read
from models.keras.graph import UnsupportedModel
from models.keras.layers import KerasModelSpec
from models.keras.spec import parse
from models.train import next_version
from models.train_args import REPOSITORY
from service.core.contract import (
    METADATA_FILENAME,
    DataProvenance,
    ModelMetadata,
    TrainingInfo,
    file_sha256,
)

NOT_CHECKED = (
    "not checked against Keras (keras is not installed); "
    "checked against its own PyTorch rebuild only"
)


def _training(
    file: KerasFile,
    spec: KerasModelSpec,
    parity: keras_parity.KerasParity | None,
    params: int,
    note: str,
) -> TrainingInfo:
    """Where the model came from and how closely it was checked, in the metadata's
    ``training`` block: the schema has no Keras field, and this block is where a
    reader already looks for a model's provenance."""
    head = spec.head
    hyperparameters: dict[str, float | int | str | bool | list[int] | None] = {
        "imported_from": f"{file.format} file ({file.path.name})",
        "keras_version_saved": file.keras_version,
        "layers": [layer.units for layer in spec.lstms],
        "bidirectional": spec.bidirectional,
        "directions": ",".join(spec.directions),
        "merge_mode": ",".join(s.merge_mode for s in spec.lstms) if spec.bidirectional else None,
        "dense_stack": ",".join(
            f"{s.dense.kind}({s.dense.units})"
            if s.dense
            else s.activation
            if s.kind == "activation"
            else s.kind
            for s in spec.hidden
        )
        or None,
        "stateful": spec.stateful,
        "stateful_batch_size": spec.batch_size if spec.stateful else None,
        "mask_value": spec.mask_value,
        "normalization": spec.normalization is not None,
        "head": f"{head.kind}({head.units}, activation={head.activation})",
        "keras_params": params,
        "keras_parity": (
            note
            if parity is None
            else f"checked against Keras {parity.keras_version} ({parity.backend} backend) "
            f"model.predict: {len(parity.cases)} shapes, {len(parity.chunks)} streamed chunks"
        ),
    }
    if spec.horizon is not None:  # an encoder-decoder forecaster (RepeatVector)
        hyperparameters["horizon"] = spec.horizon
        hyperparameters["encoder_layers"] = spec.encoder_layers
    metrics: dict[str, float | list[list[int]] | list[str]] = {}
    if parity is not None:
        metrics = {
            "keras_parity_max_abs_diff": parity.max_abs_diff,
            "keras_parity_tolerance": parity.tolerance,
        }
    return TrainingInfo(
        hyperparameters=hyperparameters,
        epochs_run=0,
        metrics=metrics,
        data=DataProvenance(
            source=file.path.name,
            sha256=file_sha256(file.path),
            citation="imported from a Keras model file, which does not record its training data",
            n_train=0,
            n_validation=0,
            n_test=0,
        ),
    )


def import_keras(
    path: Path,
    repository: Path,
    name: str,
    version: int | None = None,
    *,
    classes: list[str] | None = None,
    check_keras: bool = True,
    limits: Limits | None = None,
) -> tuple[Path, keras_parity.KerasParity | None, str]:
    """Convert, export, check against Keras, publish: (version folder, Keras parity, note).

    The note says what the Keras check found when there is no parity figure.

    The version is exported into a hidden staging folder of the repository (the
    server skips names starting with a dot), checked there, its metadata
    completed, and only then renamed into place: a refused model leaves nothing.
    The file is read within ``limits`` (``models/keras/bounds.py``) and refused,
    before anything is written, unless every array matches the architecture.
    """
    file = read(path, limits)
    spec = parse(file.config)
    converted: Converted = convert(spec, file, classes)
    summary = keras_summary(spec, file)
    print(summary)
    version = version or next_version(repository, name)
    target = repository / name / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists; versions are immutable, pick a new one")
    repository.mkdir(parents=True, exist_ok=True)
    keras = keras_parity.load_keras() if check_keras else None
    with tempfile.TemporaryDirectory(dir=repository, prefix=f".{name}-{version}-import-") as tmp:
        staged = export_model(
            converted.model,
            Path(tmp),
            name,
            version,
            classes=converted.classes,
            target=converted.target,
            dropout=spec.dropout,
            # Keras's own output is per timestep: /v1 answers so unless asked otherwise
            default_return_sequences=converted.target == "sequence",
        )
        result, note = None, NOT_CHECKED
        if keras is not None:
            try:
                result = keras_parity.check(keras, path, staged, spec, converted)
            except keras_parity.KerasLoadError as error:
                note = f"not checked against Keras ({error}); {NOT_CHECKED.split('; ')[1]}"
                print(f"lstm-import: warning: {note}", file=sys.stderr)
        params = int(summary.rsplit("Total params: ", 1)[1].replace(",", ""))
        meta_path = staged / METADATA_FILENAME
        meta = ModelMetadata.model_validate_json(meta_path.read_bytes())
        meta = ModelMetadata.model_validate(
            {
                **meta.model_dump(),
                "training": _training(file, spec, result, params, note).model_dump(),
            }
        )
        meta_path.write_text(meta.model_dump_json(indent=2) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(target))
    return target, result, note


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lstm-import", description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="a .keras file or a legacy .h5 file")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--classes", help="class names in output order, e.g. walking,running")
    p.add_argument("--repository", type=Path, default=REPOSITORY)
    p.add_argument("--version", type=int, help="default: the next free integer")
    p.add_argument(
        "--max-size",
        type=_size,
        default=MAX_BYTES,
        metavar="BYTES",
        help=f"largest input file, and largest model (its weights at 4 bytes each), read; "
        f"e.g. 512MiB (default {size_text(MAX_BYTES)})",
    )
    p.add_argument(
        "--no-keras-check",
        action="store_true",
        help="skip the comparison with Keras even when it is installed",
    )
    p.add_argument(
        "--quantize",
        action="store_true",
        help="also publish an int8 version, certified on --data (lstm-quantize)",
    )
    quantize.add_arguments(p)
    args = p.parse_args(argv)
    if args.quantize and args.data is None:
        # Said before anything is imported: a Keras file keeps no held-back data.
        print(
            "lstm-import: --quantize needs held-back data: pass --data FILE.npz "
            "(X_test, y_test[, lengths_test]); a Keras file keeps none",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return args


def main(argv: list[str] | None = None) -> None:
    """Console entry point; a refused model exits 2 with the reason on stderr."""
    args = parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        path, result, note = import_keras(
            args.path,
            args.repository,
            args.name,
            args.version,
            classes=classes,
            check_keras=not args.no_keras_check,
            limits=Limits(max_bytes=args.max_size),
        )
    except (FileRefused, UnsupportedModel, ValueError, FileExistsError, OSError) as error:
        print(f"lstm-import: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    except keras_parity.KerasParityError as error:
        print(f"lstm-import: {error}", file=sys.stderr)
        raise SystemExit(1) from error
    meta = ModelMetadata.model_validate_json((path / METADATA_FILENAME).read_bytes())
    print(
        f"exported {path}: onnxruntime matches torch within {meta.parity.max_abs_diff:.2g} "
        f"(tolerance {meta.parity.tolerance:g})"
    )
    if result is None:
        print(f"parity {note}")
    else:
        print(
            f"onnxruntime matches Keras {result.keras_version} model.predict within "
            f"{result.max_abs_diff:.2g} (tolerance {result.tolerance:g}) over "
            f"{len(result.cases)} shapes"
            + (f" and {len(result.chunks)} streamed chunks" if result.chunks else "")
        )
    if args.quantize:
        try:
            int8 = quantize.quantize_version(
                args.repository,
                args.name,
                meta.version,
                data=args.data,
                tolerance=quantize.tolerance_of(args),
                per_channel=args.per_channel,
                reduce_range=args.reduce_range,
                allow_slower=args.allow_slower,
                speed_seconds=args.speed_seconds,
            )
        except (quantize.Refused, ValueError, OSError) as error:
            print(f"lstm-import: {error}", file=sys.stderr)
            raise SystemExit(2) from error
        print(quantize.describe(int8))


if __name__ == "__main__":
    main()
