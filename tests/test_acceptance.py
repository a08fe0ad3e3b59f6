"""The foundation's promise, end to end on the shipped default model.

BasicMotions test sequences cut to lengths 10, 57 and 100, sent as one ragged
batch to a real server, get the same predictions as each sequence sent alone
and as the torch model they were exported from (≤ 1e-5), in both output modes.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from models.architecture import StackedLSTM
from models.export import torch_reference

ROOT = Path(__file__).resolve().parent.parent
VERSION_DIR = ROOT / "models" / "repository" / "basic_motions" / "1"
LENGTHS = (10, 57, 100)


@pytest.fixture(scope="module")
def sequences() -> list[np.ndarray]:
    with np.load(ROOT / "models" / "data" / "basic_motions.npz") as data:
        x_test = data["X_test"].astype(np.float32)
    return [x_test[i * 7, :n] for i, n in enumerate(LENGTHS)]


def predict(url: str, seqs: list[np.ndarray], return_sequences: bool) -> list:
    body = {"instances": [s.tolist() for s in seqs], "return_sequences": return_sequences}
    response = httpx.post(f"{url}/v1/models/basic_motions:predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def probabilities(prediction: dict | list) -> np.ndarray:
    if isinstance(prediction, dict):
        return np.array(prediction["probabilities"])
    return np.array([step["probabilities"] for step in prediction])


def test_ragged_batch_equals_alone_equals_torch(
    sequences: list[np.ndarray], server_factory
) -> None:
    server = server_factory(VERSION_DIR.parent.parent)
    model = StackedLSTM.load_checkpoint(VERSION_DIR / "checkpoint.pt")
    x = np.zeros((3, max(LENGTHS), 6), np.float32)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = s
    want = torch_reference(model, x, np.array(LENGTHS, dtype=np.int64))
    for return_sequences in (False, True):
        batch = predict(server.url, sequences, return_sequences)
        for i, n in enumerate(LENGTHS):
            alone = predict(server.url, [sequences[i]], return_sequences)[0]
            torch_out = (
                want["sequence_output"][i, :n] if return_sequences else want["final_output"][i]
            )
            np.testing.assert_allclose(probabilities(batch[i]), probabilities(alone), atol=1e-5)
            np.testing.assert_allclose(probabilities(batch[i]), torch_out, atol=1e-5)
            labels = ["badminton", "running", "standing", "walking"]
            if return_sequences:
                assert [s["label"] for s in batch[i]] == [labels[k] for k in torch_out.argmax(-1)]
            else:
                assert batch[i]["label"] == labels[int(torch_out.argmax())]
