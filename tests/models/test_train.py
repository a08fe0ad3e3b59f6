"""lstm-train end to end on tiny data: it learns, reports, and exports a servable model."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models import train
from models.data import load
from service.core.contract import ModelMetadata


def synthetic_classes(path: Path, n: int = 48, steps: int = 12) -> Path:
    """Two classes told apart by the sign of feature 0; right-padded, ragged."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    x = rng.normal(scale=0.3, size=(n, steps, 2)).astype(np.float32)
    x[:, :, 0] += np.where(y == 1, 1.0, -1.0)[:, None]
    lengths = rng.integers(4, steps + 1, n)
    for i, length in enumerate(lengths):
        x[i, length:] = 0.0
    np.savez(path, X=x, y=y, lengths=lengths, classes=np.array(["down", "up"]))
    return path


def read_metadata(version_dir: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())


def test_cli_trains_and_exports_a_classifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = synthetic_classes(tmp_path / "toy.npz")
    args = [
        "--data",
        str(data),
        "--name",
        "toy",
        "--layers",
        "8,4",
        "--epochs",
        "15",
        "--batch-size",
        "8",
        "--repository",
        str(tmp_path / "repo"),
        "--quiet",
    ]
    path = train.run(args)
    assert path == tmp_path / "repo" / "toy" / "1"
    out = capsys.readouterr().out
    assert "Total params: " in out and "confusion matrix (rows: true, columns: predicted)" in out
    meta = read_metadata(path)
    assert meta.classes == ["down", "up"] and meta.task == "classification"
    assert meta.training is not None
    assert meta.training.metrics["test_accuracy"] >= 0.9
    assert meta.training.data.sha256 and meta.training.data.source == "toy.npz"
    assert (path / "checkpoint.pt").is_file()
    # a second run becomes version 2
    assert train.run(args) == tmp_path / "repo" / "toy" / "2"


def test_bidirectional_per_timestep_regression_from_csv(tmp_path: Path) -> None:
    """CSV long format; the target is the running mean of feature a, per timestep."""
    rows = []
    rng = np.random.default_rng(1)
    for seq in range(30):
        values = rng.normal(size=int(rng.integers(3, 9)))
        for t, value in enumerate(values):
            rows.append([f"s{seq}", t, value, 1.0, values[: t + 1].mean()])
    path = tmp_path / "toy.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sequence_id", "timestep", "a", "b", "target"])
        writer.writerows(rows)
    version_dir = train.run(
        [
            "--data",
            str(path),
            "--name",
            "mean",
            "--layers",
            "6",
            "--bidirectional",
            "--epochs",
            "3",
            "--repository",
            str(tmp_path / "repo"),
            "--quiet",
        ]
    )
    meta = read_metadata(version_dir)
    assert (meta.task, meta.target, meta.num_features) == ("regression", "sequence", 2)
    assert meta.feature_names == ["a", "b"] and meta.bidirectional
    assert meta.training is not None and "test_last_step_mse" in meta.training.metrics
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[0].name == "x"


def test_csv_loading_keeps_lengths_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        "sequence_id,timestep,f1,label\n"
        "a,0,1.0,walk\na,1,2.0,walk\nb,1,4.0,run\nb,0,3.0,run\nb,2,5.0,run\n"
    )
    splits = load(path, validation_split=0.0, test_split=0.0)
    everything = [splits.train, splits.validation, splits.test]
    xs = {int(d.lengths[i]): d.x[i, :, 0].tolist() for d in everything for i in range(len(d))}
    assert xs == {2: [1.0, 2.0, 0.0], 3: [3.0, 4.0, 5.0]}  # b sorted by timestep
    assert splits.classes == ["run", "walk"]


def test_csv_without_targets_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("sequence_id,timestep,f1\na,0,1.0\n")
    with pytest.raises(ValueError, match="needs either a label column or target columns"):
        load(path)


def test_cli_needs_data_or_preset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.main(["--name", "x"])
    assert "give --preset, or --data and --name" in capsys.readouterr().err


def per_step_running_mean(path: Path, n: int = 20, steps: int = 6) -> Path:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, steps, 1)).astype(np.float32)
    y = np.cumsum(x, axis=1) / np.arange(1, steps + 1)[None, :, None]
    lengths = rng.integers(2, steps + 1, n)
    np.savez(path, X=x, y=y.astype(np.float32), lengths=lengths)
    return path


def test_target_final_trains_on_the_last_real_step(tmp_path: Path) -> None:
    data = per_step_running_mean(tmp_path / "mean.npz")
    splits = load(data, validation_split=0.0, test_split=0.0, target="final")
    assert (splits.task, splits.target, splits.output_size) == ("regression", "final", 1)
    with np.load(data) as raw:
        last = raw["y"][np.arange(20), raw["lengths"] - 1]
        want = {raw["X"][i].tobytes(): last[i] for i in range(20)}
    assert len(splits.train) == 20
    for x, y in zip(splits.train.x, splits.train.y, strict=True):
        np.testing.assert_array_equal(y, want[x.tobytes()])
    repository = str(tmp_path / "repo")
    path = train.run(
        [
            *("--data", str(data), "--name", "last", "--layers", "4", "--epochs", "2"),
            *("--target", "final", "--repository", repository, "--quiet"),
        ]
    )
    meta = read_metadata(path)
    assert meta.target == "final" and meta.training is not None
    assert meta.training.hyperparameters["target"] == "final"
    assert set(meta.training.metrics) == {"test_mse", "test_mae"}


def test_target_sequence_needs_per_step_targets(tmp_path: Path) -> None:
    data = synthetic_classes(tmp_path / "toy.npz")
    with pytest.raises(ValueError, match=r"^target 'sequence' needs per-timestep targets"):
        load(data, target="sequence")


def test_console_script_exits_zero_on_success(tmp_path: Path) -> None:
    """The installed ``lstm-train`` wrapper is ``sys.exit(main())``."""
    data = synthetic_classes(tmp_path / "toy.npz", n=12, steps=4)
    repository = str(tmp_path / "repo")
    argv = ["--data", str(data), "--name", "t", "--layers", "2", "--epochs", "1", "--quiet"]
    with pytest.raises(SystemExit) as exited:
        sys.exit(train.main([*argv, "--repository", repository]))
    assert exited.value.code is None
    assert (tmp_path / "repo" / "t" / "1" / "model.onnx").is_file()


def tiny_run(tmp_path: Path, name: str, *flags: str, epochs: str = "2") -> Path:
    data = synthetic_classes(tmp_path / "toy.npz", n=24, steps=6)
    return train.run(
        [
            *("--data", str(data), "--name", name, "--epochs", epochs, "--quiet"),
            *("--repository", str(tmp_path / "repo"), *flags),
        ]
    )


def test_cell_gru_trains_exports_with_parity_and_keras_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tiny_run(tmp_path, "gru", "--cell", "gru", "--layers", "8,4")
    out = capsys.readouterr().out
    meta = read_metadata(path)
    assert [(layer.cell, layer.units) for layer in meta.layers] == [("gru", 8), ("gru", 4)]
    assert meta.parity.max_abs_diff <= meta.parity.tolerance and meta.parity.cases
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    # A GRU layer's state is h alone: h0_i in, hn_i out, no c0_i/cn_i.
    assert [i.name for i in session.get_inputs()] == ["x", "lengths", "h0_0", "h0_1"]
    assert [o.name for o in session.get_outputs()][2:] == ["hn_0", "hn_1"]
    assert meta.carries_state
    assert meta.training is not None and meta.training.hyperparameters["cells"] == "gru,gru"
    keras = {}
    for line in out.splitlines():
        if line.startswith("gru_"):
            keras[line.split()[0]] = int(line.split()[-1].replace(",", ""))
    for name, i, u in (("gru_0", 2, 8), ("gru_1", 8, 4)):  # 2 features in, then 8 units
        assert keras[name] == 3 * (i * u + u * u + 2 * u)


def test_mixed_cells_and_directions_export_and_serve(tmp_path: Path) -> None:
    from tests.conftest import make_client, reference

    flags = ("--cells", "lstm,gru", "--directions", "bidirectional,forward", "--layers", "6,4")
    path = tiny_run(tmp_path, "mixed", *flags, epochs="1")
    meta = read_metadata(path)
    assert [(layer.cell, layer.bidirectional) for layer in meta.layers] == [
        ("lstm", True),
        ("gru", False),
    ]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 2)).astype(np.float32)
    with make_client(tmp_path / "repo") as client:
        answer = client.post("/v1/models/mixed:predict", json={"instances": x.tolist()})
    assert answer.status_code == 200, answer.text
    # Zero states fed: the bidirectional LSTM's h0_0, c0_0 and the GRU's h0_1 (h alone).
    want = reference(path, x, np.array([5, 5], dtype=np.int64))["final_output"]
    got = np.array([p["probabilities"] for p in answer.json()["predictions"]])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "flags",
    [
        ("--layers", "8,4", "--cells", "lstm,gru,gru"),
        ("--layers", "8,4", "--directions", "forward,backward,forward"),
        ("--layers", "8", "--directions", "sideways"),
        ("--layers", "8", "--bidirectional", "--directions", "forward"),
    ],
)
def test_bad_per_layer_lists_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exited:
        train.main(["--data", str(tmp_path / "x.npz"), "--name", "x", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lstm-train: ")


def test_bidirectional_flag_still_means_every_layer(tmp_path: Path) -> None:
    meta = read_metadata(tiny_run(tmp_path, "bi", "--layers", "4,3", "--bidirectional"))
    assert [layer.bidirectional for layer in meta.layers] == [True, True]


def test_backward_direction_is_go_backwards(tmp_path: Path) -> None:
    path = tiny_run(tmp_path, "back", "--layers", "4,3", "--directions", "backward,forward")
    meta = read_metadata(path)
    assert [layer.go_backwards for layer in meta.layers] == [True, False]
    assert meta.parity.max_abs_diff <= meta.parity.tolerance
