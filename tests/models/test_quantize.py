"""lstm-quantize: int8 versions published only with a certificate that holds.

Tiny models (random weights, ``make_tiny_model``; one trained in a second for the
``lstm-train --quantize`` path), held-back data written to a file, the
certificate checked against a computation of its own here (plain onnxruntime
sessions with default options, a chunk loop of its own).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import quantize, train, train_args
from models.presets import DATA
from models.testing import make_tiny_model
from service.core.contract import ModelMetadata
from service.core.model import read_metadata
from service.core.quantization import MetricComparison, Tolerance

FAST: dict[str, Any] = {"speed_seconds": 0.01, "allow_slower": True}


def metadata(folder: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((folder / "metadata.json").read_bytes())


def plain(folder: Path) -> ort.InferenceSession:
    """Default options but one intra-op thread, as the service runs (its default): the
    int8 kernel's results depend on the thread count (measured: up to 0.06 apart in
    basic_motions' per-step probabilities at 2 threads), fp32's do not."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def outputs(
    folder: Path, x: np.ndarray, lengths: np.ndarray, states: list[np.ndarray] | None = None
) -> list[np.ndarray]:
    """[sequence_output, final_output, hn_0, cn_0, ...] by graph names, zero states if None."""
    meta = metadata(folder)
    t = meta.tensors
    feeds: dict[str, np.ndarray] = {t.x: x, t.lengths: lengths}
    names = [n for s in t.initial_states for n in s.names]
    if states is None:
        states = [
            np.zeros(meta.state_shape(i, len(x)), np.float32)
            for i, s in enumerate(t.initial_states)
            for _ in s.names
        ]
    feeds.update(zip(names, states, strict=True))
    wanted = [t.sequence_output, t.final_output, *(n for s in t.final_states for n in s.names)]
    return list(plain(folder).run(wanted, feeds))


def held_back_file(folder: Path, path: Path, n: int = 12, steps: int = 20) -> Path:
    """Ragged sequences at the model's raw scale, labelled by the fp32 model itself."""
    meta = metadata(folder)
    rng = np.random.default_rng(7)
    mean, std = np.array(meta.normalization.mean), np.array(meta.normalization.std)
    x = (rng.normal(size=(n, steps, meta.num_features)) * std + mean).astype(np.float32)
    lengths = rng.integers(3, steps + 1, size=n)
    lengths[0] = steps
    final = outputs(folder, x, lengths)[1]
    y = final.argmax(1) if meta.task == "classification" else final + 0.1
    np.savez(path, X_test=x, y_test=y, lengths_test=lengths)
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny (unidirectional classifier) and tiny_bi (bidirectional regressor), v1 fp32
    and v2 int8, with their held-back files in the repository's parent."""
    root = tmp_path_factory.mktemp("quantize")
    repo = root / "repository"
    make_tiny_model(repo, "tiny", 1, features=3, layers=(16, 8), classes=3, seed=1)
    make_tiny_model(
        repo, "tiny_bi", 1, features=2, layers=(6, 5), bidirectional=True,
        task="regression", output_size=2, seed=3,
    )  # fmt: skip
    for name in ("tiny", "tiny_bi"):
        data = held_back_file(repo / name / "1", root / f"{name}.npz")
        quantize.quantize_version(repo, name, data=data, **FAST)
    return repo


@pytest.mark.parametrize("name", ["tiny", "tiny_bi"])
def test_published_as_the_next_version_with_int8_lstms(repository: Path, name: str) -> None:
    folder = repository / name / "2"
    meta = read_metadata(folder)  # the server's own reader accepts it
    q = meta.quantization
    assert q is not None and meta.dtype == "int8" and meta.version == 2
    assert q.source_version == 1 and q.source_sha256 == metadata(folder.parent / "1").onnx.sha256
    assert q.quantized_ops == {"LSTM": 2}
    ops = [n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node]
    assert ops.count("DynamicQuantizeLSTM") == 2 and "LSTM" not in ops
    assert set(q.fp32_ops) == {"MatMul"} and ops.count("MatMul") == 2  # both heads
    assert len(q.candidates) == 4  # per_channel x reduce_range, each measured
    chosen = [
        c
        for c in q.candidates
        if (c.per_channel, c.reduce_range) == (q.per_channel, q.reduce_range)
    ]
    assert len(chosen) == 1 and q.choice
    assert [s.batch for s in q.speed] == [1, 32]
    assert q.certificate.violations(q.tolerance) == []
    assert q.tolerance == Tolerance(max_abs_diff=0.01, max_metric_drop=0.01)
    assert q.certificate.drift.chunked == (name == "tiny")


@pytest.mark.parametrize("name", ["tiny", "tiny_bi"])
def test_certificate_matches_an_independent_computation(repository: Path, name: str) -> None:
    q = metadata(repository / name / "2").quantization
    assert q is not None
    c = q.certificate
    with np.load(repository.parent / f"{name}.npz") as npz:
        x, y, lengths = npz["X_test"], npz["y_test"], npz["lengths_test"]
    seq32, fin32 = outputs(repository / name / "1", x, lengths)[:2]
    seq8, fin8 = outputs(repository / name / "2", x, lengths)[:2]
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    final_gap = np.abs(fin8 - fin32)
    seq_gap = np.abs(seq8 - seq32)[valid]
    assert c.sequences == len(x) and c.time == x.shape[1]
    assert c.final_output.max_abs_diff == pytest.approx(final_gap.max(), rel=1e-5, abs=1e-9)
    assert c.final_output.mean_abs_diff == pytest.approx(final_gap.mean(), rel=1e-5)
    assert c.sequence_output.max_abs_diff == pytest.approx(seq_gap.max(), rel=1e-5, abs=1e-9)
    assert c.sequence_output.mean_abs_diff == pytest.approx(seq_gap.mean(), rel=1e-5)
    assert c.final_output.max_abs_diff > 0  # int8 really is another graph
    if name == "tiny":
        assert c.metric.name == "accuracy" and c.metric.fp32 == 1.0  # labelled by fp32
        assert c.metric.int8 == pytest.approx(float((fin8.argmax(1) == y).mean()))
    else:
        assert c.metric.name == "mse"
        assert c.metric.fp32 == pytest.approx(float(((fin32 - y) ** 2).mean()), rel=1e-5)
        assert c.metric.int8 == pytest.approx(float(((fin8 - y) ** 2).mean()), rel=1e-5)
    # Drift: streams of 10x the data's length, each the real steps laid end to end.
    steps = 10 * x.shape[1]
    pieces = [x[i, : lengths[i]] for i in range(len(x))]
    streams = []
    for s in range(min(8, len(x))):
        stream = np.concatenate([pieces[(s + k) % len(x)] for k in range(steps)])[:steps]
        streams.append(stream)
    long = np.stack(streams).astype(np.float32)
    ends = []
    for version in ("1", "2"):
        folder = repository / name / version
        if name == "tiny_bi":  # cannot carry state: the stream runs whole
            ends.append(outputs(folder, long, np.full(len(long), steps))[1])
            continue
        states = None
        for start in range(0, steps, x.shape[1]):
            part = long[:, start : start + x.shape[1]]
            _, final, *states = outputs(folder, part, np.full(len(long), part.shape[1]), states)
        ends.append(final)
    assert c.drift.steps == steps and c.drift.streams == len(long)
    assert c.drift.chunk == x.shape[1]
    assert c.drift.max_abs_diff_at_end == pytest.approx(
        np.abs(ends[1] - ends[0]).max(), rel=1e-5, abs=1e-9
    )
    assert c.drift.max_abs_diff >= c.drift.max_abs_diff_at_end


@pytest.mark.parametrize("name", ["tiny", "tiny_bi"])
def test_ragged_batches_are_within_the_certificate(repository: Path, name: str) -> None:
    q = metadata(repository / name / "2").quantization
    assert q is not None
    meta = metadata(repository / name / "1")
    rng = np.random.default_rng(11)
    x = rng.normal(size=(5, 30, meta.num_features)).astype(np.float32)
    x = x * np.array(meta.normalization.std, np.float32) + np.array(meta.normalization.mean)
    x = x.astype(np.float32)
    lengths = np.array([30, 1, 17, 9, 24])
    seq32, fin32 = outputs(repository / name / "1", x, lengths)[:2]
    seq8, fin8 = outputs(repository / name / "2", x, lengths)[:2]
    valid = np.arange(30)[None, :] < lengths[:, None]
    bound = q.tolerance.max_abs_diff * q.certificate.scale
    assert np.abs(fin8 - fin32).max() <= bound
    assert np.abs(seq8 - seq32)[valid].max() <= bound
    # Each ragged row answers as it would alone, within the same bound (the int8
    # kernel quantizes activations per call, so batchmates may move it slightly).
    for i, n in enumerate(lengths):
        alone = outputs(repository / name / "2", x[i : i + 1, :n], np.array([n]))[1]
        assert np.abs(alone[0] - fin8[i]).max() <= bound


def test_stateful_chunks_of_the_int8_model_match_its_whole_run(repository: Path) -> None:
    """Chunks with carried states against one whole run, int8 against itself. Not
    bit-equal as in fp32: DynamicQuantizeLSTM quantizes each call's input with one
    scale over all its steps and rows, so a chunk sees another scale than the whole;
    the gap stays within the certificate's bound."""
    folder = repository / "tiny" / "2"
    q = metadata(folder).quantization
    assert q is not None
    bound = q.tolerance.max_abs_diff * q.certificate.scale
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(3, 40, 3)) * 2).astype(np.float32)
    whole = outputs(folder, x, np.full(3, 40))
    states: list[np.ndarray] | None = None
    seqs = []
    for start, stop in ((0, 7), (7, 25), (25, 40)):
        part = np.ascontiguousarray(x[:, start:stop])
        seq, final, *states = outputs(folder, part, np.full(3, stop - start), states)
        seqs.append(seq)
    assert np.abs(np.concatenate(seqs, axis=1) - whole[0]).max() <= bound
    assert np.abs(final - whole[1]).max() <= bound
    hidden = states[0::2] if states else []
    for got, want in zip(hidden, whole[2::2], strict=True):
        assert np.abs(got - want).max() <= bound  # hidden states live in [-1, 1]
    # The same chunks twice give the same answer: deterministic, one thread.
    again = outputs(folder, np.ascontiguousarray(x[:, :7]), np.full(3, 7))
    np.testing.assert_array_equal(again[0], seqs[0])


def test_past_the_tolerance_nothing_is_published(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository / "tiny" / "1", repo / "tiny" / "1")
    data = str(repository.parent / "tiny.npz")
    with pytest.raises(SystemExit) as exit_:
        quantize.main(["tiny", "--repository", str(repo), "--data", data, "--max-abs-diff", "1e-9"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lstm-quantize: tiny/1 in int8 is not published")
    assert "past the tolerance 1e-09" in err and "final" in err and "stream" in err
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1"]
    assert [p.name for p in repo.iterdir()] == ["tiny"]  # no staging folder left
    q = metadata(repository / "tiny" / "2").quantization
    assert q is not None
    worse = q.certificate.model_copy(
        update={"metric": MetricComparison(name="accuracy", fp32=1.0, int8=0.9)}
    )
    assert worse.violations(q.tolerance) == [
        "accuracy 1 in fp32, 0.9 in int8: a drop of 0.1, past the tolerance 0.01"
    ]


def test_without_held_back_data_the_command_says_so(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository / "tiny" / "1", repo / "tiny" / "1")
    with pytest.raises(SystemExit) as exit_:
        quantize.main(["tiny/1", "--repository", str(repo)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pass --data FILE.npz" in err


def test_an_int8_version_whose_figures_exceed_its_tolerance_is_refused_at_load(
    repository: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "tiny" / "2"
    shutil.copytree(repository / "tiny" / "2", folder)
    raw = json.loads((folder / "metadata.json").read_text())
    raw["quantization"]["tolerance"]["max_abs_diff"] = 1e-12
    (folder / "metadata.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="the int8 certificate exceeds its tolerance"):
        read_metadata(folder)


def test_lstm_train_quantize_certifies_on_its_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12, 2)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1) > 0).astype(np.int64)
    np.savez(tmp_path / "toy.npz", X=x, y=y)
    repo = tmp_path / "repo"
    args = ["--data", str(tmp_path / "toy.npz"), "--name", "toy", "--repository", str(repo)]
    args += ["--layers", "8", "--epochs", "2", "--quiet", "--quantize", "--allow-slower"]
    args += ["--speed-seconds", "0.01"]
    args += ["--restarts", "2", "--seed", "4"]
    train.run(args)
    q = metadata(repo / "toy" / "2").quantization
    assert q is not None and q.source_version == 1
    assert q.certificate.sequences == 8  # the 20% test split of 40
    assert metadata(repo / "toy" / "1").training.hyperparameters["split_seed"] == 4  # type: ignore[union-attr]
    # lstm-quantize rebuilds the same split from the training file itself.
    again = quantize.quantize_version(repo, "toy", 1, data=tmp_path / "toy.npz", **FAST)
    rebuilt = metadata(again).quantization
    assert rebuilt is not None and again.name == "3"
    assert rebuilt.certificate.data == "toy.npz (test split)"
    assert rebuilt.certificate.metric == q.certificate.metric
    assert rebuilt.certificate.final_output.max_abs_diff == pytest.approx(
        q.certificate.final_output.max_abs_diff, rel=1e-3
    ) or (rebuilt.per_channel, rebuilt.reduce_range) != (q.per_channel, q.reduce_range)


def test_lstm_import_quantize_needs_a_file_and_says_so_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models import keras_import

    with pytest.raises(SystemExit) as exit_:
        keras_import.main(["m.keras", "--name", "m", "--repository", str(tmp_path), "--quantize"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--quantize needs held-back data: pass --data" in err
    assert list(tmp_path.iterdir()) == []


def test_lstm_import_quantize_certifies_on_the_given_file(tmp_path: Path) -> None:
    from models import keras_import
    from tests.models import keras_models

    path = tmp_path / "m.keras"
    keras_models.randomize(keras_models.bidirectional(), 0).save(path)
    repo = tmp_path / "repo"
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 15, 3)).astype(np.float32)
    np.savez(tmp_path / "held.npz", X_test=x, y_test=rng.integers(0, 3, size=6))
    args = [str(path), "--name", "m", "--repository", str(repo), "--no-keras-check"]
    args += ["--quantize", "--data", str(tmp_path / "held.npz"), "--allow-slower"]
    keras_import.main([*args, "--speed-seconds", "0.01"])
    q = metadata(repo / "m" / "2").quantization
    assert q is not None and q.source_version == 1
    assert q.certificate.data == "held.npz" and q.certificate.sequences == 6
    assert q.certificate.drift.chunked is False  # bidirectional: the stream runs whole


@pytest.mark.parametrize(("name", "n_test"), [("basic_motions", 40), ("sunspots", 67)])
def test_the_shipped_models_test_splits_are_rebuilt_from_their_metadata(
    name: str, n_test: int
) -> None:
    """No split is stored: the training file (found in models/data/ by its sha256), the
    preset's preparation, the seed and the fractions recorded rebuild it."""
    meta = metadata(Path(train_args.REPOSITORY) / name / "1")
    held = quantize.held_back(meta)
    assert len(held.data) == n_test and held.source.endswith("(test split)")
    if name == "basic_motions":
        with np.load(DATA / "basic_motions.npz") as npz:
            np.testing.assert_array_equal(held.data.x, npz["X_test"])
            np.testing.assert_array_equal(held.data.y, npz["y_test"])
