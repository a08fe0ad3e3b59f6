"""A version's V2 output specs are built once and reused, per metadata object, within a
bounded cache (``service/v2/schema.py``)."""

from __future__ import annotations

from pathlib import Path

from service.core.contract import ModelMetadata
from service.v2 import schema


def _metadata(repository: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json(
        (repository / "tiny" / "1" / "metadata.json").read_bytes()
    )


def test_specs_are_reused_for_one_version_and_rebuilt_for_another(tiny_repository: Path) -> None:
    meta = _metadata(tiny_repository)
    first = schema.output_specs(meta)
    assert schema.output_specs(meta) is first  # built once
    assert [s.tensor.name for s in first][:2] == [
        meta.tensors.sequence_output,
        meta.tensors.final_output,
    ]
    again = _metadata(tiny_repository)  # an equal metadata, another object (a reload)
    assert schema.output_specs(again) is not first
    assert schema.output_specs(again) == first


def test_the_cache_stays_bounded(tiny_repository: Path) -> None:
    kept = [_metadata(tiny_repository) for _ in range(schema._SPECS_KEPT * 2)]
    for meta in kept:
        schema.output_specs(meta)
    assert len(schema._SPECS) <= schema._SPECS_KEPT
