"""torch vs onnxruntime on shapes the export never saw: ragged, bidirectional, chunked."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import export
from models.architecture import StackedLSTM
from models.export import ParityError, export_model, torch_reference
from service.core.contract import ModelMetadata

CONFIGS = {
    "single": dict(layers=[5], bidirectional=False),
    "uni": dict(layers=[7, 5, 3], bidirectional=False),
    "bi": dict(layers=[6, 4], bidirectional=True),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[StackedLSTM, Path]]:
    root = tmp_path_factory.mktemp("repo")
    out = {}
    for name, config in CONFIGS.items():
        torch.manual_seed(len(name))
        model = StackedLSTM(4, config["layers"], 3, bidirectional=config["bidirectional"])
        model.set_normalization(torch.randn(4), torch.rand(4) + 0.5)
        out[name] = (model.eval(), export_model(model, root, name, 1, classes=["a", "b", "c"]))
    return out


@functools.cache
def _session(path: Path) -> tuple[ort.InferenceSession, list[str]]:
    """One session per exported model: hypothesis calls run_onnx hundreds of times."""
    meta = ModelMetadata.model_validate_json((path / "metadata.json").read_bytes())
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    return session, [n for s in meta.tensors.initial_states for n in s.names]


def run_onnx(
    path: Path, x: np.ndarray, lengths: np.ndarray, states: list[np.ndarray]
) -> dict[str, np.ndarray]:
    session, names = _session(path)
    feeds = {"x": x, "lengths": lengths, **dict(zip(names, states, strict=True))}
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, session.run(outputs, feeds), strict=True))


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(sorted(CONFIGS)),
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=9),
    seed=st.integers(0, 2**16),
)
def test_onnxruntime_matches_torch_on_ragged_batches(
    exported: dict[str, tuple[StackedLSTM, Path]], kind: str, lengths: list[int], seed: int
) -> None:
    model, path = exported[kind]
    rng = np.random.default_rng(seed)
    steps = max(lengths)
    x = rng.normal(size=(len(lengths), steps, 4)).astype(np.float32)
    lens = np.array(lengths, dtype=np.int64)
    states = [
        rng.normal(scale=0.2, size=s.shape).astype(np.float32)
        for s in model.zero_states(len(lengths))
    ]
    want = torch_reference(model, x, lens, states)
    got = run_onnx(path, x, lens, states)
    for name in want:
        if name == "sequence_output":
            for i, n in enumerate(lengths):
                np.testing.assert_allclose(got[name][i, :n], want[name][i, :n], atol=1e-5)
        else:
            np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)


@settings(max_examples=15, deadline=None)
@given(length=st.integers(2, 60), cut=st.floats(0.05, 0.95), seed=st.integers(0, 999))
def test_two_chunks_with_carried_state_equal_the_whole(
    exported: dict[str, tuple[StackedLSTM, Path]], length: int, cut: float, seed: int
) -> None:
    model, path = exported["uni"]
    x = np.random.default_rng(seed).normal(size=(1, length, 4)).astype(np.float32)
    split = min(length - 1, max(1, round(length * cut)))
    zeros = [s.numpy() for s in model.zero_states(1)]
    whole = run_onnx(path, x, np.array([length]), zeros)
    first = run_onnx(path, x[:, :split], np.array([split]), zeros)
    carried = [first[f"{k}n_{i}"] for i in range(3) for k in ("h", "c")]
    second = run_onnx(path, x[:, split:], np.array([length - split]), carried)
    chunked = np.concatenate([first["sequence_output"], second["sequence_output"]], axis=1)
    np.testing.assert_allclose(chunked, whole["sequence_output"], atol=1e-6)
    np.testing.assert_allclose(second["final_output"], whole["final_output"], atol=1e-6)


def test_graph_has_dynamic_axes_and_wired_lengths(
    exported: dict[str, tuple[StackedLSTM, Path]],
) -> None:
    graph = onnx.load(str(exported["bi"][1] / "model.onnx")).graph
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in graph.input
    }
    assert dims["x"] == ["batch", "time", 4]
    assert dims["lengths"] == ["batch"]
    lstms = [n for n in graph.node if n.op_type == "LSTM"]
    assert len(lstms) == 2 and all(n.input[4] == "lengths_int32" for n in lstms)


def _ancestors(graph: onnx.GraphProto, name: str) -> set[str]:
    """Every tensor ``name`` is computed from, itself included."""
    producers = {out: node for node in graph.node for out in node.output}
    seen, todo = set(), [name]
    while todo:
        tensor = todo.pop()
        if tensor and tensor not in seen:
            seen.add(tensor)
            todo += list(producers[tensor].input) if tensor in producers else []
    return seen


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_final_outputs_come_from_the_length_aware_lstm_states(
    exported: dict[str, tuple[StackedLSTM, Path]], kind: str
) -> None:
    """hn/cn are the LSTM ops' Y_h/Y_c, and final_output reads Y_h, never Y at T-1."""
    graph = onnx.load(str(exported[kind][1] / "model.onnx")).graph
    lstms = [n for n in graph.node if n.op_type == "LSTM"]
    for i, node in enumerate(lstms):
        assert list(node.output[1:]) == [f"hn_{i}", f"cn_{i}"]
    final = _ancestors(graph, "final_output")
    assert f"hn_{len(lstms) - 1}" in final and lstms[-1].output[0] not in final


def test_reference_refuses_lengths_outside_the_sequence(
    exported: dict[str, tuple[StackedLSTM, Path]],
) -> None:
    model = exported["uni"][0]
    x = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"lengths must lie in 1\.\.4, got \[0, 4\]"):
        torch_reference(model, x, np.array([0, 4]))


def test_metadata_records_parity_and_checksum(
    exported: dict[str, tuple[StackedLSTM, Path]],
) -> None:
    path = exported["bi"][1]
    meta = ModelMetadata.model_validate_json((path / "metadata.json").read_bytes())
    assert meta.parity.max_abs_diff <= 1e-5
    assert {(c.batch, c.time) for c in meta.parity.cases} == set(export.PARITY_SHAPES)
    import hashlib

    assert meta.onnx.sha256 == hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest()
    assert meta.normalization.in_graph and meta.bidirectional
    assert [layer.units for layer in meta.layers] == [6, 4]


def test_export_fails_and_writes_nothing_when_parity_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = StackedLSTM(2, [3], 2)
    original = export.torch_reference

    def skewed(*args: object, **kwargs: object) -> dict[str, np.ndarray]:
        out = original(*args, **kwargs)  # type: ignore[arg-type]
        out["final_output"] = out["final_output"] + 1e-3
        return out

    monkeypatch.setattr(export, "torch_reference", skewed)
    with pytest.raises(ParityError, match=r"onnxruntime differs from torch by 0.001"):
        export_model(model, tmp_path, "broken", 1, classes=["a", "b"])
    assert not (tmp_path / "broken" / "1").exists()


def test_export_fails_when_lengths_are_not_wired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph the exporter writes by itself is wrong on ragged batches: parity says so."""

    def unwired(graph_model: onnx.ModelProto, lengths_name: str) -> int:
        graph_model.graph.input.append(
            onnx.helper.make_tensor_value_info(lengths_name, onnx.TensorProto.INT64, ["batch"])
        )
        return sum(node.op_type == "LSTM" for node in graph_model.graph.node)

    monkeypatch.setattr(export, "wire_sequence_lens", unwired)
    torch.manual_seed(0)
    model = StackedLSTM(2, [4], 2, bidirectional=True)
    with pytest.raises(ParityError, match=r"^onnxruntime differs from torch by 0\.\d+ "):
        export_model(model, tmp_path, "unwired", 1, classes=["a", "b"])
    assert list(tmp_path.iterdir()) == []  # not even the staging folder is left


def test_versions_are_immutable(tmp_path: Path) -> None:
    model = StackedLSTM(2, [3], 2)
    export_model(model, tmp_path, "m", 1, classes=["a", "b"])
    with pytest.raises(FileExistsError, match="versions are immutable"):
        export_model(model, tmp_path, "m", 1, classes=["a", "b"])
