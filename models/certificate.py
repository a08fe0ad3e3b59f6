"""The int8 certificate's measurements: fp32 and int8 run side by side, compared and timed.

Split out of ``models/quantize.py``, which decides and publishes; this module only
measures. Sessions are set up as the service sets up its own, and on held-back data
(``models/heldback.py``) it computes what ``Certificate`` in
``service/core/contract.py`` records: the task metric of both versions, the largest
and mean |int8 - fp32| of the final and per-timestep outputs, and the drift of a
stream ``DRIFT_FACTOR`` times the data's length run in chunks with carried states,
as the service runs a stateful sequence. ``speeds`` times both versions at
``SPEED_BATCHES`` sequences per call.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.data import Dataset
from models.heldback import HeldBack
from service.core.contract import ModelMetadata
from service.core.quantization import (
    Certificate,
    Drift,
    MetricComparison,
    OutputDifference,
    Speed,
)

DRIFT_FACTOR = 10
DRIFT_STREAMS = 8
SPEED_BATCHES = (1, 32)


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
    """(sequence_output, final_output, final states hn_0, cn_0, hn_1, ... as the graph names
    them: no c for a GRU layer); zero states if None."""
    t = meta.tensors
    feeds = {t.x: x.astype(np.float32), t.lengths: lengths.astype(np.int64)}
    names_in = [n for s in t.initial_states for n in s.names]
    if states is None:
        states = [
            np.zeros(meta.state_shape(i, len(x)), np.float32)
            for i, s in enumerate(t.initial_states)
            for _ in s.names
        ]
    feeds.update(dict(zip(names_in, states, strict=True)))
    names_out = [n for s in t.final_states for n in s.names]
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
