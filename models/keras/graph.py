"""Walking a Keras model config's layer graph: the layers, in order, of one chain.

Sequential configs list their layers; a Functional config (``Model``) names each
layer's inbound layers, and is accepted only when it is one chain from input to
output. Keras 3 also writes the mask computation of ``Masking`` into Functional
graphs as op layers (``MASK_OPS``), which are read past.
"""

from __future__ import annotations

from typing import Any

MASK_OPS = frozenset({"NotEqual", "Any"})


class UnsupportedModel(ValueError):
    """The Keras model uses something the exported graph cannot compute exactly."""


def input_shape(cfg: dict[str, Any]) -> list[int | None] | None:
    for key in ("batch_shape", "batch_input_shape"):
        if cfg.get(key) is not None:
            return list(cfg[key])
    return None


def layer_list(model_config: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The model's layers in order: a Sequential's list, or a Functional chain."""
    kind = model_config.get("class_name")
    cfg = model_config.get("config", {})
    if kind == "Sequential":
        layers = cfg if isinstance(cfg, list) else cfg.get("layers", [])
        return (cfg.get("name", "sequential") if isinstance(cfg, dict) else "sequential"), layers
    if kind in ("Functional", "Model"):
        return cfg.get("name", "model"), chain(cfg)
    raise UnsupportedModel(
        f"a {kind} model is not supported; save a Sequential or Functional model"
    )


def inbound(layer: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(layers feeding the layer's data inputs, layers feeding only its ``mask``)."""
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise UnsupportedModel(f"layer {layer.get('name')!r} is called more than once (shared)")
    if not nodes:
        return [], []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3
        data = histories(node.get("args", []))
        kwargs = node.get("kwargs", {})
        mask = histories(kwargs.get("mask"))
        others = histories({k: v for k, v in kwargs.items() if k != "mask"})
        return data + others, mask
    # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
    return [entry[0] for entry in node], []


def histories(value: Any) -> list[str]:
    """Names of the layers whose tensors appear anywhere in a Keras 3 node's args."""
    if isinstance(value, dict):
        if "keras_history" in value:
            return [str(value["keras_history"][0])]
        return [n for v in value.values() for n in histories(v)]
    if isinstance(value, list):
        return [n for v in value for n in histories(v)]
    return []


def chain(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Walk a Functional graph from its output back to its input; refuse anything else."""
    by_name = {layer["name"]: layer for layer in cfg["layers"]}
    inputs, outputs = cfg.get("input_layers", []), cfg.get("output_layers", [])
    if inputs and not isinstance(inputs[0], list):
        inputs = [inputs]
    if outputs and not isinstance(outputs[0], list):
        outputs = [outputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedModel(
            f"the model has {len(inputs)} inputs and {len(outputs)} outputs; one of each is served"
        )
    chain, name, mask_sources = [], outputs[0][0], set()
    while True:
        layer = by_name[name]
        chain.append(layer)
        data, mask = inbound(layer)
        mask_sources.update(mask)
        if not data:
            break
        if len(data) > 1:
            raise UnsupportedModel(
                f"layer {name!r} ({layer['class_name']}) takes {len(data)} inputs; "
                "only a chain of layers is supported"
            )
        name = data[0]
    on_chain = {layer["name"] for layer in chain}
    for layer in cfg["layers"]:
        if layer["name"] not in on_chain and layer["class_name"] not in MASK_OPS:
            raise UnsupportedModel(
                f"layer {layer['name']!r} ({layer['class_name']}) is not on the single path "
                "from input to output; only a chain of layers is supported"
            )
    return list(reversed(chain))
