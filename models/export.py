"""ONNX export with dynamic batch and time, ``sequence_lens`` wiring, and a parity check.

The recipe (each point measured with torch 2.13 and onnxruntime 1.31, and held by
``tests/models/test_export.py``):
- The TorchScript exporter (``dynamo=False``) at opset 17: each ``nn.LSTM``
  becomes one ONNX ``LSTM`` op and the time axis stays dynamic. The dynamo
  exporter freezes T to the example's length, so it is not used.
- The exporter leaves ``sequence_lens`` (input 4 of ``LSTM``) empty. We add a
  ``lengths`` graph input, cast it to int32 and wire it into every LSTM node:
  padded batches then match packed torch exactly, bidirectional layers included,
  and ``Y_h``/``Y_c`` become the states at each sequence's last valid step.
- GRU layers become ONNX ``GRU`` ops (``linear_before_reset=1``, PyTorch's form,
  Keras's ``reset_after=True``), wired the same way. A layer imported with
  ``reset_after=False`` has its node's ``linear_before_reset`` set to 0: its
  ``bias_hh`` is zero, so the node then computes Keras's reset-before GRU, which
  the parity check compares with the eager step-by-step pass. A GRU layer's
  state is one tensor: its node takes ``h0_i`` (``initial_h``) and returns
  ``hn_i`` (``Y_h``, at each sequence's last valid step through ``sequence_lens``
  as for an LSTM), with no ``c0_i``/``cn_i``; an LSTM layer keeps both.
- Parity against the packed torch path is checked at batch sizes and lengths the
  export never saw; the export fails, writing nothing, if the gap exceeds 1e-4.
"""

from __future__ import annotations

import io
import platform
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from models.architecture import StackedLSTM
from models.forecaster import Forecaster, forecast_tensor_names, unwire_decoder
from models.frontend import front_end_metadata
from service.core.contract import (
    METADATA_FILENAME,
    MODEL_FILENAME,
    LayerSpec,
    ModelMetadata,
    Normalization,
    OnnxInfo,
    Parity,
    ParityCase,
    TensorNames,
    TrainingInfo,
    file_sha256,
)
from service.core.state_names import StateNames, state_names

CHECKPOINT_FILENAME = "checkpoint.pt"
OPSET = 17
TOLERANCE = 1e-4
PARITY_SHAPES = ((1, 1), (3, 7), (8, 50), (5, 123))  # (batch, time), none equal to the example


class ParityError(RuntimeError):
    """onnxruntime and torch disagree: the exported graph cannot be trusted."""


def tensor_names(cells: Sequence[str], carries_state: bool = True) -> TensorNames:
    """The graph's tensor names, one layer per cell (``h0_i``/``c0_i`` in, ``hn_i``/``cn_i``
    out, no ``c`` for a GRU layer); no state names for a model that carries no state."""
    kept = list(cells) if carries_state else []
    return TensorNames(
        initial_states=state_names(kept, "h0_", "c0_"),
        final_states=state_names(kept, "hn_", "cn_"),
    )


def names_of(model: StackedLSTM) -> TensorNames:
    """The graph's tensor names for ``model``: a forecaster's (``forecaster.py``) or the stack's."""
    if isinstance(model, Forecaster):
        return forecast_tensor_names()
    return tensor_names(model.cells, model.carries_state)


def _flat(states: list[StateNames]) -> list[str]:
    return [name for state in states for name in state.names]


def output_names(names: TensorNames) -> list[str]:
    """Graph outputs in ``StackedLSTM.forward``'s order (a forecaster has no sequence output)."""
    outputs = [names.sequence_output, names.final_output, *_flat(names.final_states)]
    return [name for name in outputs if name is not None]


# Warnings the TorchScript exporter raises on this model that say nothing about
# it: the legacy-exporter notice (the choice is deliberate, see the module
# docstring), nn.LSTM's shape checks seen by the tracer, and the batch-size
# warning, a false alarm with h0/c0 as graph inputs. The parity check is the
# real guard; any other warning still shows.
_EXPORTER_NOISE = (
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed"),
    # TracerWarning is public API, but torch.jit's stubs do not re-export it.
    (torch.jit.TracerWarning, r"Converting a tensor to a Python boolean"),  # type: ignore[attr-defined]
    (UserWarning, r"Exporting a model to ONNX with a batch_size other than 1"),
)


def _to_onnx(model: StackedLSTM, names: TensorNames) -> onnx.ModelProto:
    # Parity is checked at other shapes, so nothing froze to these.
    batch, steps = 2, _min_steps(model, 5)
    example = (
        torch.zeros(batch, steps, model.num_features),
        torch.full((batch,), steps, dtype=torch.int64),
        *model.zero_states(batch),
    )
    state_in, state_out = _flat(names.initial_states), _flat(names.final_states)
    dynamic = {names.x: {0: "batch", 1: "time"}, names.final_output: {0: "batch"}}
    if names.sequence_output is not None:
        # A Conv1D/pooling front end changes the time axis: the outputs have their own.
        out_time = "time" if model.front_end is None else "front_end_time"
        dynamic[names.sequence_output] = {0: "batch", 1: out_time}
    if model.reads_backwards:  # go_backwards layers gather by lengths: the graph keeps it
        dynamic[names.lengths] = {0: "batch"}
    dynamic.update({n: {1: "batch"} for n in state_in + state_out})
    buffer = io.BytesIO()  # torch.onnx.export writes to file-likes; its stubs say paths only
    with warnings.catch_warnings():
        for category, message in _EXPORTER_NOISE:
            warnings.filterwarnings("ignore", message, category)
        torch.onnx.export(
            model,
            example,
            buffer,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=OPSET,
            # ``lengths`` is unused while tracing, so the exporter drops it;
            # wire_sequence_lens puts it back.
            input_names=[names.x, names.lengths, *state_in],
            output_names=output_names(names),
            dynamic_axes=dynamic,
        )
    return onnx.load_from_string(buffer.getvalue())


def _min_steps(model: StackedLSTM, steps: int) -> int:
    """``steps``, or more where a front end needs more to hand the recurrent layers one step."""
    return steps if model.front_end is None else max(steps, model.front_end.min_steps)


def keep_lengths_input(graph_model: onnx.ModelProto, lengths_name: str) -> None:
    """Put the int64 ``lengths`` [batch] input back where the exporter dropped it (unused
    while tracing): every served graph takes it, whether it reads it or not."""
    graph = graph_model.graph
    if lengths_name not in {i.name for i in graph.input}:
        lengths = helper.make_tensor_value_info(lengths_name, TensorProto.INT64, ["batch"])
        graph.input.insert(1, lengths)


def wire_sequence_lens(graph_model: onnx.ModelProto, lengths_name: str) -> int:
    """Feed the int64 ``lengths`` [batch] input, as int32, to every LSTM's and GRU's
    sequence_lens (input 4 of both ops).

    Returns how many recurrent nodes were wired, so the caller can insist on one per layer.
    """
    graph = graph_model.graph
    keep_lengths_input(graph_model, lengths_name)
    cast_out = f"{lengths_name}_int32"
    cast = helper.make_node("Cast", [lengths_name], [cast_out], to=TensorProto.INT32)
    wired = 0
    for node in graph.node:
        if node.op_type in ("LSTM", "GRU"):
            inputs = list(node.input) + [""] * max(0, 5 - len(node.input))
            inputs[4] = cast_out
            del node.input[:]
            node.input.extend(inputs)
            wired += 1
    graph.node.insert(0, cast)
    return wired


def set_reset_before(graph_model: onnx.ModelProto, reset_after: list[bool]) -> None:
    """Give the GRU nodes of ``reset_after=False`` layers ``linear_before_reset=0``.

    ``reset_after`` lists the GRU layers' settings in layer order, which is the
    order of their nodes in the graph.
    """
    nodes = [node for node in graph_model.graph.node if node.op_type == "GRU"]
    if len(nodes) != len(reset_after):
        raise RuntimeError("the exported graph does not hold one GRU op per GRU layer")
    for node, after in zip(nodes, reset_after, strict=True):
        if after:
            continue
        for attribute in node.attribute:
            if attribute.name == "linear_before_reset":
                attribute.i = 0
                break
        else:
            node.attribute.append(helper.make_attribute("linear_before_reset", 0))


def torch_reference(
    model: StackedLSTM, x: np.ndarray, lengths: np.ndarray, states: list[np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """What the exported graph must compute: eager ``forward``, packed by ``lengths``.

    ``states`` are h0_0, c0_0, h0_1, ... as ``model.zero_states`` orders them (no c for a
    GRU layer; zeros when omitted). Keys are the
    graph's output names.
    """
    if not (lengths.min() >= 1 and lengths.max() <= x.shape[1]):
        raise ValueError(f"lengths must lie in 1..{x.shape[1]}, got {lengths.tolist()}")
    state_tensors = (
        [torch.from_numpy(s) for s in states] if states is not None else model.zero_states(len(x))
    )
    with torch.no_grad():
        outputs = model.eval()(torch.from_numpy(x), torch.from_numpy(lengths), *state_tensors)
    names = output_names(names_of(model))
    return {name: out.numpy() for name, out in zip(names, outputs, strict=True)}


def scaled_gap(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want|, relative to the output's magnitude where that exceeds 1.

    Probabilities and hidden states live in [-1, 1], so this is their absolute
    error; cell states are unbounded (tens on long sequences), and float32
    rounding there grows with them.
    """
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def check_parity(model: StackedLSTM, onnx_path: Path, names: TensorNames, seed: int = 0) -> Parity:
    """Compare every output at unseen shapes and ragged lengths; padding is ignored."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    cases: list[ParityCase] = []
    for batch, shape_steps in PARITY_SHAPES:
        steps = _min_steps(model, shape_steps)
        x = rng.normal(size=(batch, steps, model.num_features)).astype(np.float32)
        x = x * model.x_std.numpy() + model.x_mean.numpy()  # realistic raw scale
        lengths = rng.integers(1, steps + 1, size=batch).astype(np.int64)
        lengths[0] = steps
        if model.front_end is not None:  # it reads whole, equal-length sequences
            lengths[:] = steps
        states = [
            rng.normal(scale=0.1, size=s.shape).astype(np.float32) for s in model.zero_states(batch)
        ]
        want = torch_reference(model, x, lengths, states)
        feeds = {names.x: x, names.lengths: lengths}
        feeds.update(dict(zip(_flat(names.initial_states), states, strict=True)))
        got = dict(zip(want, session.run(list(want), feeds), strict=True))
        out_steps = want["sequence_output"].shape[1] if "sequence_output" in want else steps
        valid = np.arange(out_steps)[None, :] < np.minimum(lengths, out_steps)[:, None]
        gap = max(
            scaled_gap(
                got[k][valid] if k == "sequence_output" else got[k],
                want[k][valid] if k == "sequence_output" else want[k],
            )
            for k in want
        )
        cases.append(
            ParityCase(batch=batch, time=steps, lengths=lengths.tolist(), max_abs_diff=gap)
        )
    worst = max(c.max_abs_diff for c in cases)
    if not worst <= TOLERANCE:
        raise ParityError(
            f"onnxruntime differs from torch by {worst:.3g} (tolerance {TOLERANCE}): "
            f"{[(c.batch, c.time, c.max_abs_diff) for c in cases]}"
        )
    return Parity(tolerance=TOLERANCE, max_abs_diff=worst, cases=cases)


def _library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


def export_model(
    model: StackedLSTM,
    repository: Path,
    name: str,
    version: int,
    *,
    classes: list[str] | None = None,
    feature_names: list[str] | None = None,
    target: str = "final",
    dropout: float = 0.0,
    training: TrainingInfo | None = None,
    default_return_sequences: bool = False,
) -> Path:
    """Export, check parity, and publish ``<repository>/<name>/<version>/`` atomically.

    Everything is written to a temporary folder first and renamed into place,
    so a server scanning the repository never sees half a model.
    """
    model = model.eval()
    names = names_of(model)
    graph = _to_onnx(model, names)
    if model.front_end is not None:  # reads every step the front end hands on: no lengths
        keep_lengths_input(graph, names.lengths)
    elif wire_sequence_lens(graph, names.lengths) != len(model.lstms):
        raise RuntimeError("the exported graph does not hold one LSTM or GRU op per layer")
    if isinstance(model, Forecaster):  # the decoder runs every horizon step
        unwire_decoder(graph, model.encoder_layers)
    set_reset_before(
        graph, [r for c, r in zip(model.cells, model.reset_after, strict=True) if c == "gru"]
    )
    onnx.checker.check_model(graph)
    target_dir = repository / name / str(version)
    if target_dir.exists():
        raise FileExistsError(f"{target_dir} exists; versions are immutable, pick a new one")
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repository, prefix=f".{name}-{version}-") as tmp:
        staging = Path(tmp)
        onnx_path = staging / MODEL_FILENAME
        onnx.save(graph, str(onnx_path))
        parity = check_parity(model, onnx_path, names)
        metadata = ModelMetadata(
            name=name,
            version=version,
            task=model.task,  # type: ignore[arg-type]  # validated by pydantic
            target="forecast" if isinstance(model, Forecaster) else target,  # type: ignore[arg-type]
            num_features=model.num_features,
            feature_names=feature_names,
            classes=classes,
            output_size=model.output_size,
            layers=[
                LayerSpec(
                    units=u,
                    bidirectional=direction == "bidirectional",
                    go_backwards=direction == "backward",
                    cell=cell,  # type: ignore[arg-type]  # validated by pydantic
                    reset_after=after,
                )
                for u, direction, cell, after in zip(
                    model.layer_sizes,
                    model.layer_directions,
                    model.cells,
                    model.reset_after,
                    strict=True,
                )
            ],
            default_return_sequences=default_return_sequences,
            front_end=front_end_metadata(model.front_end),
            dropout=dropout,
            normalization=Normalization(
                mean=model.x_mean.tolist(), std=model.x_std.tolist(), in_graph=True
            ),
            tensors=names,
            onnx=OnnxInfo(opset=OPSET, sha256=file_sha256(onnx_path)),
            parity=parity,
            training=training,
            forecast=model.contract() if isinstance(model, Forecaster) else None,
            created_at=datetime.now(UTC),
            library_versions=_library_versions(),
        )
        # The torch weights travel with the version for fine-tuning and parity
        # checks; the server never reads them (nor imports torch).
        model.save_checkpoint(staging / CHECKPOINT_FILENAME)
        (staging / METADATA_FILENAME).write_text(metadata.model_dump_json(indent=2) + "\n")
        target_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target_dir))
        staging.mkdir()  # TemporaryDirectory cleans up a folder that must still exist
    target_dir.chmod(0o755)
    return target_dir
