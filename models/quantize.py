"""Publish an int8 version of a model with an accuracy certificate: ``lstm-quantize``.

    lstm-quantize basic_motions                 # the newest fp32 version -> next version
    lstm-quantize my_model/3 --data held_back.npz --max-abs-diff 0.02

The int8 graph comes from onnxruntime's dynamic quantization
(``quantize_dynamic``): each ``LSTM`` node becomes ``DynamicQuantizeLSTM`` with
int8 weights (activations are quantized on the fly, per call). The dense head
stays fp32: onnxruntime has int8 kernels for its MatMul (the quantizer rewrites
the final head's Gemm as one), but it is a sliver of the work. The metadata lists
what was quantized and what was not.

Options are measured, not assumed: every combination of ``per_channel`` and
``reduce_range`` (unless fixed on the command line) is quantized, checked on the
held-back data and timed; the fastest within tolerance wins unless another is
within ``SPEED_NOISE`` of its speed and more accurate. The choice and its reason
go into the metadata (``quantization.choice``, ``candidates``).

Before anything is published the certificate is computed (``Certificate`` in
``service/core/contract.py``): on held-back data (the test split ``lstm-train``
kept, rebuilt from the training file, its seed and fractions, which the fp32
version's metadata records; or ``--data FILE.npz``), the task metric of both
versions, the largest and mean |int8 - fp32| of the final and per-timestep
outputs, and the drift of a stream ``DRIFT_FACTOR`` times the data's length run
in chunks with carried states, as the service runs a stateful sequence. Past the
tolerance (``--max-abs-diff``, default ``DEFAULT_MAX_ABS_DIFF``; ``--max-metric-drop``,
default ``DEFAULT_MAX_METRIC_DROP``) nothing is published and the command exits 2
with the figures. It also exits 2 when int8 is not faster than fp32 on this CPU at
32 sequences per call, unless ``--allow-slower``.

This module decides and publishes (and is the command); the held-back data is
found by ``models/heldback.py`` and the measurements are made by
``models/certificate.py``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from models.certificate import _batch, _difference, certify, run, session, speeds, throughput
from models.heldback import HeldBack as HeldBack
from models.heldback import held_back as held_back
from service.core.contract import (
    METADATA_FILENAME,
    MODEL_FILENAME,
    ModelMetadata,
    OnnxInfo,
    file_sha256,
)
from service.core.int8_contract import Quantization, QuantizationCandidate, Tolerance

DEFAULT_MAX_ABS_DIFF = 0.01
"""Largest |int8 - fp32| of any output (relative above magnitude 1), held-back and drift."""
DEFAULT_MAX_METRIC_DROP = 0.01
"""Accuracy points int8 may lose (0.01: none on 40 sequences), or the MSE's relative rise."""
SPEED_NOISE = 0.05
QUANTIZED_OP_TYPES = ("LSTM",)
FP32_OPS = {
    "MatMul": "the dense head (per-timestep and final: the quantizer rewrites Gemm as MatMul); "
    "int8 MatMul kernels exist, but the head is a sliver of the work: kept fp32",
    "Gemm": "the dense head; kept fp32",
}
EXAMPLES_FILENAME = "examples.json"


class Refused(RuntimeError):
    """The int8 version is not published: past the tolerance, or not faster here."""


@dataclass(frozen=True)
class Options:
    per_channel: bool
    reduce_range: bool


# -- quantizing -------------------------------------------------------------------------


def quantize_graph(source: Path, target: Path, options: Options) -> dict[str, int]:
    """Write the int8 graph; returns the op types quantized and how many nodes each."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quant_logger = logging.getLogger()  # the quantizer logs its pre-processing advice here
    level = quant_logger.level
    quant_logger.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            weight_type=QuantType.QInt8,
        )
    finally:
        quant_logger.setLevel(level)
    before = [n.op_type for n in onnx.load(str(source)).graph.node]
    after = [n.op_type for n in onnx.load(str(target)).graph.node]
    done = {op: before.count(op) for op in QUANTIZED_OP_TYPES if op in before}
    if after.count("DynamicQuantizeLSTM") != done.get("LSTM", 0) or "LSTM" in after:
        raise RuntimeError("onnxruntime did not rewrite every LSTM node as DynamicQuantizeLSTM")
    return done


def cpu_has_vnni() -> bool:
    """Whether this CPU multiplies u8 by s8 without saturating (AVX-VNNI / AVX512-VNNI);
    without it onnxruntime advises ``reduce_range`` (7-bit weights)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _choose(
    tried: list[tuple[Options, QuantizationCandidate]], tolerance: Tolerance, scale: float
) -> tuple[Options, str]:
    within = [t for t in tried if t[1].max_abs_diff / scale <= tolerance.max_abs_diff] or tried
    timed = [t for t in within if t[1].int8_seq_per_s is not None]
    vnni = "VNNI" if cpu_has_vnni() else "no VNNI"
    if not timed:
        best = min(within, key=lambda t: t[1].max_abs_diff)
        return best[0], f"the most accurate of {len(tried)} tried (speed not measured; {vnni})"
    fastest = max(t[1].int8_seq_per_s or 0.0 for t in timed)
    close = [t for t in timed if (t[1].int8_seq_per_s or 0.0) >= fastest * (1 - SPEED_NOISE)]
    best = min(close, key=lambda t: t[1].max_abs_diff)
    return best[0], (
        f"the most accurate of the {len(close)} within {SPEED_NOISE:.0%} of the fastest at "
        f"batch 32 ({fastest:.0f} seq/s), of {len(tried)} tried; this CPU has {vnni}"
    )


def next_version(repository: Path, name: str) -> int:
    folder = repository / name
    found = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(found, default=0) + 1


def source_version(repository: Path, name: str, version: int | None) -> Path:
    """``name/version``, or the newest fp32 version of ``name``."""
    folder = repository / name
    if version is not None:
        path = folder / str(version)
        if not (path / METADATA_FILENAME).is_file():
            raise ValueError(f"{name}/{version} is not in {repository}")
        return path
    found = sorted(
        (int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    )
    for v in reversed(found):
        meta = ModelMetadata.model_validate_json((folder / str(v) / METADATA_FILENAME).read_bytes())
        if meta.quantization is None:
            return folder / str(v)
    raise ValueError(f"{name} has no fp32 version in {repository}")


def quantize_version(
    repository: Path,
    name: str,
    version: int | None = None,
    *,
    data: Path | None = None,
    held: HeldBack | None = None,
    tolerance: Tolerance | None = None,
    per_channel: bool | None = None,
    reduce_range: bool | None = None,
    speed_seconds: float = 0.25,
    allow_slower: bool = False,
    target_version: int | None = None,
) -> Path:
    """Quantize ``name/version`` (newest fp32 when None), certify, publish the next version.

    ``held`` gives the held-back data directly (``lstm-train --quantize``);
    otherwise ``held_back`` finds it. ``speed_seconds`` 0 skips timing (and the
    speed check). Raises ``Refused`` past the tolerance, ``NeedsData`` without data.
    """
    tolerance = tolerance or Tolerance(
        max_abs_diff=DEFAULT_MAX_ABS_DIFF, max_metric_drop=DEFAULT_MAX_METRIC_DROP
    )
    src = source_version(repository, name, version)
    meta = ModelMetadata.model_validate_json((src / METADATA_FILENAME).read_bytes())
    if meta.quantization is not None:
        raise ValueError(f"{name}/{meta.version} is already int8; quantize its fp32 source")
    if meta.forecast is not None:  # the certificate compares per-step and streamed outputs
        raise ValueError(
            f"{name}/{meta.version} is a forecaster (horizon {meta.forecast.horizon}): int8 "
            "versions of forecasters are not supported yet; serve the fp32 version"
        )
    held = held or held_back(meta, data)
    src_model = src / meta.onnx.file
    if file_sha256(src_model) != meta.onnx.sha256:
        raise ValueError(f"{name}/{meta.version}/{meta.onnx.file} does not match its sha256")
    new_version = target_version or next_version(repository, name)
    target = repository / name / str(new_version)
    if target.exists():
        raise FileExistsError(f"{target} exists; versions are immutable, pick a new one")
    fp32 = session(src_model)
    grid = [
        Options(pc, rr)
        for pc in ([per_channel] if per_channel is not None else [False, True])
        for rr in ([reduce_range] if reduce_range is not None else [False, True])
    ]
    with tempfile.TemporaryDirectory(dir=repository, prefix=f".{name}-{new_version}-int8-") as tmp:
        staging = Path(tmp) / "version"
        staging.mkdir()
        tried: list[tuple[Options, QuantizationCandidate]] = []
        x32 = _batch(held.data, 32)
        seq32, fin32, _ = run(fp32, meta, held.data.x, held.data.lengths)
        valid = np.arange(held.data.x.shape[1])[None, :] < held.data.lengths[:, None]
        scale = max(1.0, float(np.abs(fin32).max()), float(np.abs(seq32[valid]).max()))
        for i, options in enumerate(grid):
            path = Path(tmp) / f"candidate-{i}.onnx"
            quantize_graph(src_model, path, options)
            sess = session(path)
            seq8, fin8, _ = run(sess, meta, held.data.x, held.data.lengths)
            gap = max(
                _difference(fin8, fin32).max_abs_diff,
                _difference(seq8[valid], seq32[valid]).max_abs_diff,
            )
            rate = throughput(sess, meta, x32, speed_seconds) if speed_seconds > 0 else None
            candidate = QuantizationCandidate(
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                max_abs_diff=gap,
                int8_seq_per_s=rate,
            )
            tried.append((options, candidate))
        chosen, why = _choose(tried, tolerance, scale)
        onnx_path = staging / MODEL_FILENAME
        done = quantize_graph(src_model, onnx_path, chosen)
        int8 = session(onnx_path)
        certificate = certify(meta, fp32, int8, held)
        found = certificate.violations(tolerance)
        if found:
            raise Refused(f"{name}/{meta.version} in int8 is not published: " + "; ".join(found))
        timed = speeds(meta, fp32, int8, held.data, speed_seconds) if speed_seconds > 0 else []
        at32 = next((s for s in timed if s.batch == 32), None)
        if at32 is not None and at32.ratio <= 1.0 and not allow_slower:
            raise Refused(
                f"{name}/{meta.version} in int8 is not faster on this CPU: "
                f"{at32.int8_seq_per_s:.0f} against {at32.fp32_seq_per_s:.0f} fp32 seq/s at "
                f"batch 32 (x{at32.ratio:.2f}); not published (--allow-slower publishes anyway)"
            )
        present = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
        quantization = Quantization(
            source_version=meta.version,
            source_sha256=meta.onnx.sha256,
            per_channel=chosen.per_channel,
            reduce_range=chosen.reduce_range,
            choice=why,
            quantized_ops=done,
            fp32_ops={op: why for op, why in FP32_OPS.items() if op in present},
            candidates=[c for _, c in tried],
            speed=timed,
            certificate=certificate,
            tolerance=tolerance,
        )
        new_meta = ModelMetadata.model_validate(
            {
                **meta.model_dump(),
                "version": new_version,
                "onnx": OnnxInfo(
                    opset=meta.onnx.opset,
                    sha256=file_sha256(onnx_path),
                    exporter=f"{meta.onnx.exporter}; int8 by onnxruntime quantize_dynamic",
                ).model_dump(),
                "quantization": quantization.model_dump(),
                "created_at": datetime.now(UTC),
                "library_versions": {**meta.library_versions, "onnxruntime": ort.__version__},
            }
        )
        (staging / METADATA_FILENAME).write_text(new_meta.model_dump_json(indent=2) + "\n")
        if (src / EXAMPLES_FILENAME).is_file():
            shutil.copyfile(src / EXAMPLES_FILENAME, staging / EXAMPLES_FILENAME)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.chmod(0o755)
        shutil.move(str(staging), str(target))
    return target


def describe(path: Path) -> str:
    """The published version's certificate in a few lines, for the console."""
    meta = ModelMetadata.model_validate_json((path / METADATA_FILENAME).read_bytes())
    q = meta.quantization
    assert q is not None
    c = q.certificate
    lines = [
        f"published {path}: int8 of version {q.source_version} "
        f"(per_channel={q.per_channel}, reduce_range={q.reduce_range}: {q.choice})",
        f"certificate on {c.data}, {c.sequences} sequences of {c.time} steps: "
        f"{c.metric.name} {c.metric.fp32:.6g} fp32, {c.metric.int8:.6g} int8",
        f"  final output |int8-fp32| max {c.final_output.max_abs_diff:.3g} "
        f"mean {c.final_output.mean_abs_diff:.3g}; per-timestep max "
        f"{c.sequence_output.max_abs_diff:.3g} mean {c.sequence_output.mean_abs_diff:.3g}",
        f"  drift over {c.drift.streams} streams of {c.drift.steps} steps "
        f"({'chunks of ' + str(c.drift.chunk) if c.drift.chunked else 'whole'}): "
        f"{c.drift.max_abs_diff_at_end:.3g} at the end, {c.drift.max_abs_diff:.3g} at worst",
        f"  tolerance: max abs diff {q.tolerance.max_abs_diff:g} (scale {c.scale:.3g}), "
        f"metric drop {q.tolerance.max_metric_drop:g}",
    ]
    for s in q.speed:
        lines.append(
            f"  batch {s.batch}, T={s.time}, 1 thread: {s.fp32_seq_per_s:.0f} fp32, "
            f"{s.int8_seq_per_s:.0f} int8 seq/s (x{s.ratio:.2f})"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    """The options ``lstm-quantize`` shares with ``lstm-train`` / ``lstm-import --quantize``."""
    if data:
        p.add_argument(
            "--data",
            type=Path,
            help="held-back data (.npz: X_test, y_test[, lengths_test], or X, y), or the "
            "training file itself (its test split is rebuilt)",
        )
    p.add_argument(
        "--max-abs-diff",
        type=float,
        default=DEFAULT_MAX_ABS_DIFF,
        help="largest |int8 - fp32| of any output, held-back and after the long stream "
        "(relative above magnitude 1) (default %(default)s)",
    )
    p.add_argument(
        "--max-metric-drop",
        type=float,
        default=DEFAULT_MAX_METRIC_DROP,
        help="accuracy int8 may lose, or MSE's relative rise (default %(default)s)",
    )
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--allow-slower", action="store_true", help="publish even if int8 is not faster here"
    )
    p.add_argument(
        "--speed-seconds",
        type=float,
        default=0.25,
        help="timing per version, batch size and round; 0 skips timing and the speed check "
        "(default %(default)s)",
    )


def tolerance_of(args: argparse.Namespace) -> Tolerance:
    return Tolerance(max_abs_diff=args.max_abs_diff, max_metric_drop=args.max_metric_drop)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from models.train_args import REPOSITORY

    p = argparse.ArgumentParser(prog="lstm-quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="NAME or NAME/VERSION (default: the newest fp32 version)")
    p.add_argument("--repository", type=Path, default=REPOSITORY)
    add_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: refused or impossible exits 2 with one line on stderr."""
    args = parse_args(argv)
    name, _, version = args.model.partition("/")
    try:
        path = quantize_version(
            args.repository,
            name,
            int(version) if version else None,
            data=args.data,
            tolerance=tolerance_of(args),
            per_channel=args.per_channel,
            reduce_range=args.reduce_range,
            allow_slower=args.allow_slower,
            speed_seconds=args.speed_seconds,
        )
    except (Refused, ValueError, FileExistsError, OSError) as error:
        print(f"lstm-quantize: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    print(describe(path))


if __name__ == "__main__":
    main()
