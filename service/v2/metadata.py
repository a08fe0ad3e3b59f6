"""What V2 clients and Triton's tools read before they send load.

- Server metadata (``GET /v2``): name, version, and only the extensions that
  really answer here.
- Model metadata (``GET /v2/models/{m}``): inputs and outputs, batch-first,
  -1 for the dimensions a request fixes.
- Model configuration (``GET /v2/models/{m}/config``): Triton's ``config.pbtxt``
  as JSON. ``max_batch_size`` is the request limit ``max_instances`` (> 0), so by
  Triton's convention every ``dims`` here is the metadata shape without its
  leading batch dimension, and perf_analyzer's ``-b`` sets the batch. That is the
  only convention under which a ``dynamic_batching`` block means anything.
  A per-item scalar (``lengths``, one number per sequence) is ``dims: [1]`` with
  ``reshape: {shape: []}``, Triton's convention for a batched model's scalar
  input, and the model metadata shows it as ``[-1, 1]`` as Triton does: with
  ``dims: []`` perf_analyzer cannot set a shape for it at all. The service
  accepts such an input shaped ``[B]`` or ``[B, 1]`` (``tensors.py``).
  There is no ``sequence_batching`` block although the sequence extension
  works: in Triton that block makes a sequence id mandatory on every request
  (and switches perf_analyzer to sequence mode), while here it is optional.
- The weights' type (``float32`` or ``int8``) and an int8 version's quantization
  record (its source version and accuracy certificate): ``parameters`` of the
  model metadata (an object), and of the configuration as Triton writes model
  parameters, ``{key: {"string_value": ...}}`` (the record as JSON).
"""

from __future__ import annotations

import json
from typing import Any

from service.core.model import ServedModel
from service.core.runtime import CUDA
from service.settings import Settings
from service.v2.schema import TensorSpec, input_specs, output_specs
from service.version_policy import VersionPolicy

SERVER_NAME = "lstm-serving"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

EXTENSIONS = (
    "binary_tensor_data",  # tensors.py
    "model_configuration",  # GET /v2/models/{m}/config
    "model_repository",  # repository.py
    "sequence",  # parameters.sequence_id/start/end, core/state.py
)

_TYPES = {"FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "INT64": "TYPE_INT64"}


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def _dims(spec: TensorSpec) -> list[int]:
    """Triton's ``dims``: the shape without the batch dimension (``max_batch_size``'s),
    ``[1]`` for a per-item scalar (which the config then reshapes to ``[]``)."""
    return list(spec.shape[1:]) or [1]


def _described(spec: TensorSpec) -> dict[str, Any]:
    """``$metadata_tensor`` as Triton shows it: the batch dimension, then ``dims``."""
    return {"name": spec.name, "datatype": spec.datatype, "shape": [-1, *_dims(spec)]}


def model_metadata(model: ServedModel, versions: list[int]) -> dict[str, Any]:
    """``$metadata_model_response``; ``versions`` are those loaded, as strings."""
    meta = model.metadata
    return {
        "name": meta.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [_described(spec) for spec in input_specs(meta)],
        "outputs": [_described(spec.tensor) for spec in output_specs(meta)],
        "parameters": _parameters(model),
    }


def _parameters(model: ServedModel) -> dict[str, Any]:
    meta = model.metadata
    out: dict[str, Any] = {"dtype": meta.dtype}
    if meta.front_end is not None:  # equal lengths per request, each at least min_length
        out["min_length"] = meta.front_end.min_length
        out["front_end"] = meta.front_end.model_dump(mode="json")
    if meta.quantization is not None:
        out["quantization"] = meta.quantization.model_dump(mode="json")
    return out


def _config_tensor(spec: TensorSpec, is_input: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": spec.name, "data_type": _TYPES[spec.datatype]}
    entry["dims"] = _dims(spec)
    if len(spec.shape) == 1:
        entry["reshape"] = {"shape": []}
    if is_input:
        entry["optional"] = spec.optional
    return entry


def _version_policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.kind == "latest":
        return {"latest": {"num_versions": policy.count}}
    if policy.kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"all": {}}


def model_config(model: ServedModel, settings: Settings, policy: VersionPolicy) -> dict[str, Any]:
    """Triton's model configuration for one served version."""
    meta = model.metadata
    gpu = CUDA in model.runtime.providers
    config: dict[str, Any] = {
        "name": meta.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": _version_policy(policy),
        "max_batch_size": settings.max_instances,
        "input": [_config_tensor(spec, True) for spec in input_specs(meta)],
        "output": [_config_tensor(spec.tensor, False) for spec in output_specs(meta)],
        "instance_group": [
            {"count": settings.inference_threads, "kind": "KIND_GPU" if gpu else "KIND_CPU"}
        ],
        "default_model_filename": meta.onnx.file,
        "parameters": {
            key: {"string_value": value if isinstance(value, str) else json.dumps(value)}
            for key, value in _parameters(model).items()
        },
    }
    options = model.batcher.options
    if options.dynamic:
        # Triton's block for what core/batching.py does; no preferred sizes: batches
        # form from whatever is queued when an inference thread is free.
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(options.max_queue_delay_s * 1e6),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(settings.request_timeout_s * 1e6),
                "max_queue_size": options.max_queue_size,
            },
        }
    return config
