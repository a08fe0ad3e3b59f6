"""docs/settings.md is what ``service/settings_doc.py`` writes from ``Settings`` today."""

from __future__ import annotations

from service.settings import ENV_PREFIX, Settings
from service.settings_doc import DOCUMENT, main, render


def test_the_committed_reference_is_current() -> None:
    assert DOCUMENT.read_text() == render(), (
        "docs/settings.md differs from Settings: run python -m service.settings_doc"
    )
    assert main(["--check"]) == 0


def test_every_setting_is_described_and_listed() -> None:
    text = render()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description"
        assert f"| `{ENV_PREFIX}{name.upper()}` |" in text


def test_defaults_are_written_as_one_would_set_them() -> None:
    text = render()
    assert "| `LSTM_SERVE_WORKERS` | `1` |" in text
    assert "| `LSTM_SERVE_DYNAMIC_BATCHING` | `true` |" in text
    assert "| `LSTM_SERVE_STATE_URL` | unset |" in text
    assert "| `LSTM_SERVE_API_KEYS` | `[]` |" in text
    assert "| `LSTM_SERVE_MODEL_REPOSITORY` | `models/repository` of this checkout |" in text
