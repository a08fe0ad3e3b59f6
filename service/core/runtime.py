"""One onnxruntime session for one model version, and nothing about HTTP.

``ModelRuntime.run`` is the single place where the service calls
``session.run``. It is synchronous and thread-safe (onnxruntime sessions accept
concurrent ``run`` calls and release the GIL), so callers run it in worker
threads, never on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core import cpu_budget
from service.core.contract import ModelMetadata
from service.core.metrics import VersionMetrics
from service.core.types import FINAL, SEQUENCE, Outputs, RunResult, State

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def choose_providers(device: str, available: Sequence[str] | None = None) -> list[str]:
    """Providers to ask onnxruntime for, best first.

    onnxruntime only warns when asked for a provider it lacks and silently runs on
    CPU, so the choice is made here against what the installed wheel offers, and
    the session's real providers are logged after it is built.
    """
    offered = list(ort.get_available_providers() if available is None else available)
    if device == "cpu":
        return [CPU]
    if CUDA in offered:
        return [CUDA, CPU]
    if device == "cuda":
        log.warning(
            "CUDA was asked for but this onnxruntime offers only %s; running on CPU "
            "(install onnxruntime-gpu instead of onnxruntime for CUDA)",
            offered,
        )
    return [CPU]


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "auto"
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    memory_arena: str = "off"
    """onnxruntime's CPU arena: off, shrink (after every call) or on (keeps its peak)."""


class ModelRuntime:
    """An onnxruntime session bound to the metadata that describes it."""

    def __init__(self, model_path: Path, metadata: ModelMetadata, options: RuntimeOptions) -> None:
        self.metadata = metadata
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # With the arena on, onnxruntime keeps the largest call's buffers for good
        # (measured: 150 MiB held after one 65k-cell call); off frees them as the call
        # ends at no measured cost, shrink returns them after each call.
        so.enable_cpu_mem_arena = options.memory_arena != "off"
        self._shrink = options.memory_arena == "shrink"
        self.session = ort.InferenceSession(
            str(model_path), sess_options=so, providers=choose_providers(options.device)
        )
        self.providers: list[str] = list(self.session.get_providers())
        self._check_graph()
        names = metadata.tensors
        # Per layer, (h, c) or a GRU's (h,): fed and read as the states' tuples are.
        self._state_inputs = [s.names for s in names.initial_states]
        self._state_outputs = [name for s in names.final_states for name in s.names]
        layers = metadata.layers
        self._state_shapes = [
            (layers[i].directions, layers[i].units, len(s.names))
            for i, s in enumerate(names.initial_states)
        ]
        # Every state input with its shape, flat: a stateless request's zeros, one loop.
        self._zero_feeds = [
            (name, layers[i].directions, layers[i].units)
            for i, s in enumerate(names.initial_states)
            for name in s.names
        ]
        norm = metadata.normalization
        self._mean = np.asarray(norm.mean, dtype=np.float32)
        self._std = np.asarray(norm.std, dtype=np.float32)
        self._normalize = not norm.in_graph
        self.metrics = VersionMetrics.of(metadata.name, metadata.version)
        self.padding_output = self._padding_output()
        log.info(
            "loaded %s version %d on %s", metadata.name, metadata.version, ",".join(self.providers)
        )

    def _check_graph(self) -> None:
        """Refuse a graph whose tensors do not match its metadata, at load, not per request."""
        t = self.metadata.tensors
        want_in = {t.x, t.lengths} | {n for s in t.initial_states for n in s.names}
        want_out = {n for n in (t.sequence_output, t.final_output) if n is not None} | {
            n for s in t.final_states for n in s.names
        }
        have_in = {i.name for i in self.session.get_inputs()}
        have_out = {o.name for o in self.session.get_outputs()}
        if want_in != have_in or not want_out <= have_out:
            raise ValueError(
                f"model.onnx does not match metadata.json: graph inputs {sorted(have_in)}, "
                f"outputs {sorted(have_out)}; metadata names inputs {sorted(want_in)}, "
                f"outputs {sorted(want_out)}"
            )

    def _padding_output(self) -> np.ndarray:
        """``sequence_output`` at a padded step, float32 [K]: the head applied to the LSTM's
        zero output there. Work split into several calls (``core/cost.py``) writes it at
        the padded steps it did not run, so a client sees what one whole call returns.
        A forecaster has no per-timestep output: zeros, never written."""
        if self.metadata.tensors.sequence_output is None:
            return np.zeros(self.metadata.output_size, np.float32)
        front = self.metadata.front_end
        if front is not None:  # equal lengths only (core/frontend.py): no step is padded
            x = np.zeros((1, front.min_length, self.metadata.num_features), np.float32)
            out = self.run(x, np.array([front.min_length], np.int64), None, FINAL).final_output
            assert out is not None
            return np.zeros(out.shape[-1], np.float32)
        x = np.zeros((2, 2, self.metadata.num_features), np.float32)
        out = self.run(x, np.array([2, 1], np.int64), None, SEQUENCE).sequence_output
        assert out is not None
        return np.array(out[1, 1], dtype=np.float32)

    def zero_states(self, batch: int) -> list[State]:
        """Every layer's zero state, (h, c) or a GRU's (h,); none for a graph without
        state tensors (a front end, or GRU layers exported before their state was carried)."""
        return [
            tuple(np.zeros((directions, batch, units), np.float32) for _ in range(count))
            for directions, units, count in self._state_shapes
        ]

    def run(
        self,
        x: np.ndarray,
        lengths: np.ndarray,
        states: list[State] | None,
        outputs: Outputs,
        run_options: ort.RunOptions | None = None,
    ) -> RunResult:
        """Run a right-padded batch: x float32 [B, T, F], lengths int64 [B] in 1..T.

        Asks onnxruntime only for the ``outputs`` wanted; the graph still computes
        the LSTM states, but the head over every timestep is skipped when unused.
        ``run_options`` lets the caller stop the call (``terminate``) once nobody
        waits for it; see ``core/cost.py``.
        """
        t = self.metadata.tensors
        if self._normalize:
            x = (x - self._mean) / self._std
        feeds: dict[str, np.ndarray] = {t.x: x, t.lengths: lengths}
        if not states:  # the hot path (stateless): zeros straight into the feeds
            batch = x.shape[0]
            for name, directions, units in self._zero_feeds:
                feeds[name] = np.zeros((directions, batch, units), np.float32)
        else:
            for layer_names, layer in zip(self._state_inputs, states, strict=True):
                feeds.update(zip(layer_names, layer, strict=True))
        names: list[str] = []
        if outputs.sequence and t.sequence_output is not None:  # a forecaster has none
            names.append(t.sequence_output)
        if outputs.final:
            names.append(t.final_output)
        if outputs.states:
            names.extend(self._state_outputs)
        if self._shrink:
            run_options = run_options or ort.RunOptions()
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        cpu_budget.step("session.run")
        ran = self.session.run(names, feeds, run_options)
        cpu_budget.step("feeds, outputs (around session.run)")
        values = dict(zip(names, ran, strict=True))
        result = RunResult(
            sequence_output=values.get(t.sequence_output or ""),
            final_output=values.get(t.final_output),
        )
        if outputs.states:
            result.final_states = [tuple(values[n] for n in s.names) for s in t.final_states]
        return result
