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
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from models.data import Dataset, _dataset, _final_step, _task_of, load
from models.presets import DATA, PRESETS
from service.core.contract import (
    METADATA_FILENAME,
    MODEL_FILENAME,
    Certificate,
    Drift,
    MetricComparison,
    ModelMetadata,
    OnnxInfo,
    OutputDifference,
    Quantization,
    QuantizationCandidate,
    Speed,
    Tolerance,
    file_sha256,
)

DEFAULT_MAX_ABS_DIFF = 0.01
"""Largest |int8 - fp32| of any output (relative above magnitude 1), held-back and drift."""
DEFAULT_MAX_METRIC_DROP = 0.01
"""Accuracy points int8 may lose (0.01: none on 40 sequences), or the MSE's relative rise."""
DRIFT_FACTOR = 10
DRIFT_STREAMS = 8
SPEED_NOISE = 0.05
SPEED_BATCHES = (1, 32)
QUANTIZED_OP_TYPES = ("LSTM",)
FP32_OPS = {
    "MatMul": "the dense head (per-timestep and final: the quantizer rewrites Gemm as MatMul); "
    "int8 MatMul kernels exist, but the head is a sliver of the work: kept fp32",
    "Gemm": "the dense head; kept fp32",
}
EXAMPLES_FILENAME = "examples.json"


class Refused(RuntimeError):
    """The int8 version is not published: past the tolerance, or not faster here."""


class NeedsData(ValueError):
    """No held-back data is known for this model: the user must pass a file."""


@dataclass(frozen=True)
class HeldBack:
    data: Dataset
    source: str
    sha256: str | None = None


@dataclass(frozen=True)
class Options:
    per_channel: bool
    reduce_range: bool


# -- held-back data ---------------------------------------------------------------------


def _from_arrays(arrays: dict[str, np.ndarray], meta: ModelMetadata) -> Dataset:
    """A held-back file: ``X_test, y_test[, lengths_test]`` or ``X, y[, lengths]``."""
    suffix = "_test" if "X_test" in arrays else ""
    if f"X{suffix}" not in arrays or f"y{suffix}" not in arrays:
        raise ValueError("a held-back .npz needs X_test and y_test (or X and y)")
    x = arrays[f"X{suffix}"]
    task, _, y = _task_of(arrays[f"y{suffix}"], x.shape[1], meta.target)
    if task != meta.task:
        raise ValueError(f"the held-back labels are for {task}, the model does {meta.task}")
    data = _dataset(x, y, arrays.get(f"lengths{suffix}"))
    data = _final_step(data) if meta.target == "final" else data
    if x.shape[2] != meta.num_features:
        raise ValueError(f"held-back X has {x.shape[2]} features, the model {meta.num_features}")
    if task == "classification" and not 0 <= data.y.min() <= data.y.max() < meta.output_size:
        raise ValueError(f"held-back labels must lie in 0..{meta.output_size - 1}")
    return data


def _training_split(meta: ModelMetadata, path: Path) -> Dataset:
    """Rebuild the test split ``lstm-train`` kept: same file, preset, seed and fractions."""
    assert meta.training is not None
    hp = meta.training.hyperparameters
    with tempfile.TemporaryDirectory() as tmp:
        preset = next((p for p in PRESETS.values() if p.data.name == path.name), None)
        data = preset.prepare(path, Path(tmp)) if preset and preset.prepare else path
        given = False
        if data.suffix == ".npz":
            with np.load(data, allow_pickle=False) as npz:
                given = "X_test" in npz.files
        seed = hp.get("split_seed")
        if seed is None and (given or hp.get("restarts", 1) == 1):
            seed = hp.get("seed", 0)  # a given test split ignores it; one restart used it
        if not isinstance(seed, int):
            raise NeedsData(
                f"{meta.name}/{meta.version} was trained with restarts on a random split "
                "whose seed its metadata does not record: pass --data FILE.npz"
            )
        splits = load(
            data,
            float(hp.get("validation_split") or 0.0),  # type: ignore[arg-type]
            float(hp.get("test_split") or 0.0),  # type: ignore[arg-type]
            seed,
            str(hp.get("target", meta.target)),
        )
    if len(splits.test) != meta.training.data.n_test:
        raise NeedsData(
            f"rebuilding the test split of {meta.name}/{meta.version} gave {len(splits.test)} "
            f"sequences, its metadata records {meta.training.data.n_test}: pass --data FILE.npz"
        )
    return splits.test


def held_back(meta: ModelMetadata, data: Path | None = None) -> HeldBack:
    """The data the certificate is computed on.

    ``data`` is the training file itself (its sha256 matches the metadata's: its
    test split is rebuilt), or a file of held-back sequences used whole. Without
    it, the training file is looked for in ``models/data/``.
    """
    training = meta.training
    trained = training is not None and training.data.n_test > 0
    if data is not None:
        digest = file_sha256(data)
        if trained and training is not None and digest == training.data.sha256:
            return HeldBack(_training_split(meta, data), f"{data.name} (test split)", digest)
        with np.load(data, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return HeldBack(_from_arrays(arrays, meta), data.name, digest)
    if training is None or not trained:
        imported = training is not None and "imported_from" in training.hyperparameters
        why = "was imported from a Keras file, which keeps" if imported else "records"
        raise NeedsData(
            f"{meta.name}/{meta.version} {why} no held-back data: pass --data FILE.npz "
            "(X_test, y_test[, lengths_test])"
        )
    path = DATA / training.data.source
    if not path.is_file() or file_sha256(path) != training.data.sha256:
        raise NeedsData(
            f"the training file of {meta.name}/{meta.version} ({training.data.source}, sha256 "
            f"{training.data.sha256[:12]}...) is not in {DATA}: pass it, or held-back "
            "data, with --data FILE.npz"
        )
    return HeldBack(_training_split(meta, path), f"{path.name} (test split)", training.data.sha256)


# -- running and comparing --------------------------------------------------------------


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A session set up as the service sets up its own (``service/core/runtime.py``)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run(
    sess: ort.InferenceSession,
    meta: ModelMetadata,
    x: np.ndarray,
    lengths: np.ndarray,
    states: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(sequence_output, final_output, final states h0, c0, h1, ...); zero states if None."""
    t = meta.tensors
    feeds = {t.x: x.astype(np.float32), t.lengths: lengths.astype(np.int64)}
    names_in = [n for s in t.initial_states for n in (s.h, s.c)]
    if states is None:
        states = []
        for i in range(len(meta.layers)):
            zero = np.zeros(meta.state_shape(i, len(x)), np.float32)
            states += [zero, zero]
    feeds.update(dict(zip(names_in, states, strict=True)))
    names_out = [n for s in t.final_states for n in (s.h, s.c)]
    seq, final, *out = sess.run([t.sequence_output, t.final_output, *names_out], feeds)
    return seq, final, out


def _metric(meta: ModelMetadata, data: Dataset, seq: np.ndarray, final: np.ndarray) -> float:
    if meta.task == "classification":
        return float((final.argmax(axis=1) == data.y).mean())
    if meta.target == "final":
        return float(((final - data.y) ** 2).mean())
    valid = np.arange(data.x.shape[1])[None, :] < data.lengths[:, None]
    return float(((seq - data.y)[valid] ** 2).mean())


def _difference(a: np.ndarray, b: np.ndarray) -> OutputDifference:
    gap = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return OutputDifference(max_abs_diff=float(gap.max()), mean_abs_diff=float(gap.mean()))


def drift_stream(data: Dataset, factor: int = DRIFT_FACTOR) -> np.ndarray:
    """Up to ``DRIFT_STREAMS`` streams of ``factor`` times the data's length, each the
    held-back sequences' real steps laid end to end (a different starting one each)."""
    steps = factor * data.x.shape[1]
    streams = min(DRIFT_STREAMS, len(data))
    pieces = [data.x[i, : data.lengths[i]] for i in range(len(data))]
    out = np.zeros((streams, steps, data.x.shape[2]), np.float32)
    for s in range(streams):
        filled, i = 0, s
        while filled < steps:
            piece = pieces[i % len(pieces)][: steps - filled]
            out[s, filled : filled + len(piece)] = piece
            filled, i = filled + len(piece), i + 1
    return out


def streamed(
    sess: ort.InferenceSession, meta: ModelMetadata, x: np.ndarray, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """(per-step outputs, final output) of ``x`` fed in chunks with carried states."""
    if not meta.carries_state:
        seq, final, _ = run(sess, meta, x, np.full(len(x), x.shape[1]))
        return seq, final
    states, outputs = None, []
    final = np.zeros(0, np.float32)
    for start in range(0, x.shape[1], chunk):
        part = x[:, start : start + chunk]
        seq, final, states = run(sess, meta, part, np.full(len(x), part.shape[1]), states)
        outputs.append(seq)
    return np.concatenate(outputs, axis=1), final


def certify(
    meta: ModelMetadata, fp32: ort.InferenceSession, int8: ort.InferenceSession, data: HeldBack
) -> Certificate:
    """The certificate's figures (see ``Certificate``)."""
    d = data.data
    seq32, fin32, _ = run(fp32, meta, d.x, d.lengths)
    seq8, fin8, _ = run(int8, meta, d.x, d.lengths)
    valid = np.arange(d.x.shape[1])[None, :] < d.lengths[:, None]
    stream = drift_stream(d)
    chunk = d.x.shape[1]
    long32, end32 = streamed(fp32, meta, stream, chunk)
    long8, end8 = streamed(int8, meta, stream, chunk)
    scale = max(1.0, float(np.abs(fin32).max()), float(np.abs(seq32[valid]).max()))
    scale = max(scale, float(np.abs(long32).max()))
    return Certificate(
        data=data.source,
        data_sha256=data.sha256,
        sequences=len(d),
        time=d.x.shape[1],
        metric=MetricComparison(
            name="accuracy" if meta.task == "classification" else "mse",
            fp32=_metric(meta, d, seq32, fin32),
            int8=_metric(meta, d, seq8, fin8),
        ),
        final_output=_difference(fin8, fin32),
        sequence_output=_difference(seq8[valid], seq32[valid]),
        drift=Drift(
            factor=DRIFT_FACTOR,
            steps=stream.shape[1],
            chunk=chunk,
            streams=len(stream),
            chunked=meta.carries_state,
            max_abs_diff_at_end=_difference(end8, end32).max_abs_diff,
            max_abs_diff=_difference(long8, long32).max_abs_diff,
        ),
        scale=scale,
    )


def throughput(
    sess: ort.InferenceSession, meta: ModelMetadata, x: np.ndarray, seconds: float
) -> float:
    """Sequences per second of repeated calls on ``x`` (one warm-up call first)."""
    lengths = np.full(len(x), x.shape[1])
    run(sess, meta, x, lengths)
    calls, start = 0, time.perf_counter()
    while True:
        run(sess, meta, x, lengths)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * len(x) / elapsed


def _batch(data: Dataset, batch: int) -> np.ndarray:
    index = np.arange(batch) % len(data)
    return np.ascontiguousarray(data.x[index])


def speeds(
    meta: ModelMetadata,
    fp32: ort.InferenceSession,
    int8: ort.InferenceSession,
    data: Dataset,
    seconds: float,
    rounds: int = 3,
) -> list[Speed]:
    """Both versions at batch 1 and 32, interleaved, best of ``rounds`` (a shared CPU
    only ever slows a round down)."""
    out = []
    for batch in SPEED_BATCHES:
        x = _batch(data, batch)
        best32 = best8 = 0.0
        for _ in range(rounds):
            best32 = max(best32, throughput(fp32, meta, x, seconds))
            best8 = max(best8, throughput(int8, meta, x, seconds))
        out.append(Speed(batch=batch, time=x.shape[1], fp32_seq_per_s=best32, int8_seq_per_s=best8))
    return out


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
    from models.train import REPOSITORY

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
