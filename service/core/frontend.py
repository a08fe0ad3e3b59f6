"""What a model with a Conv1D/pooling front end accepts, checked once per request.

A front end (``ModelMetadata.front_end``, from ``models/frontend.py``) reads each
request's whole padded time axis, and the graph takes no lengths past it: the
recurrent layers run over every step the front end hands on. So, decided for
exactness rather than guessed at:

- **Equal lengths per request.** Padding a shorter sequence would feed the padding
  through the convolution into the recurrent layers; transforming lengths through
  the chain is exact only for some paddings (not ``same``, not after in-graph
  normalisation moves the zeros), so a ragged request is refused, and
  ``DynamicBatcher`` merges such a model's requests only with others of exactly
  the same length (``bucket_key``).
- **A minimum length**: the shortest input that yields one step for the recurrent
  layers (the receptive field of ``valid`` layers, 1 when every layer pads).
- **Per-timestep outputs** only when the front end keeps the time axis (stride 1,
  causal or same padding): otherwise its steps are not the input's.
- **No state across requests**: the model has no state tensors (``carries_state``).

The batcher calls ``check_front_end`` for every request of every protocol (/v1, V2
REST and gRPC) before it is queued; refusals are ``InvalidInput`` (422 on /v1, 400
on V2, INVALID_ARGUMENT on gRPC) and say what would be accepted.
"""

from __future__ import annotations

from service.core.contract import FrontEnd, ModelMetadata
from service.core.errors import InvalidInput
from service.core.types import InferenceRequest


def describe(front: FrontEnd) -> str:
    """The front end's layers as refusals name them: ``Conv1D 'conv', MaxPooling1D 'pool'``."""
    return ", ".join(f"{layer.kind} {layer.name!r}" for layer in front.layers)


def runs_whole_reason(meta: ModelMetadata) -> str:
    """Why such a model runs each sequence in one call, in ``runs_whole``'s words."""
    assert meta.front_end is not None
    return f"has a Conv1D/pooling front end ({describe(meta.front_end)}) that reads it whole"


def no_steps(meta: ModelMetadata) -> str:
    """Why the model has no per-timestep outputs ("" when it has them): its front end
    shortens the time axis, so the recurrent layers' steps are not the input's."""
    front = meta.front_end
    if front is None or not front.reshapes_time:
        return ""
    return (
        f"model {meta.name!r} has no per-timestep outputs: its front end shortens the time "
        f"axis ({front.reshapes_time}), so its steps are not the input's; ask for the final "
        "output (/v1: return_sequences false; V2: final_output)"
    )


def check_front_end(meta: ModelMetadata, request: InferenceRequest) -> None:
    """Refuse a request the front end cannot answer exactly (nothing for other models)."""
    front = meta.front_end
    if front is None:
        return
    lengths, steps = request.lengths, int(request.x.shape[1])
    shortest, longest = int(lengths.min()), int(lengths.max())
    if shortest < front.min_length:
        raise InvalidInput(
            f"model {meta.name!r} needs sequences of at least {front.min_length} timesteps "
            f"(its front end, {describe(front)}, reads {front.min_length} steps before its "
            f"first output); a sequence has {shortest}: send {front.min_length} or more"
        )
    if shortest != longest or longest != steps:
        raise InvalidInput(
            f"model {meta.name!r} has a Conv1D/pooling front end ({describe(front)}) that "
            "reads the whole time axis: sequences in one request must have equal lengths "
            f"(here {shortest} to {max(longest, steps)} steps), with no padding; send "
            "sequences of other lengths in separate requests"
        )
    if request.outputs.sequence and no_steps(meta):
        raise InvalidInput(no_steps(meta))
    if request.states is not None:
        raise InvalidInput(
            f"model {meta.name!r} has a Conv1D/pooling front end ({describe(front)}): it "
            "carries no state; send each sequence whole, without initial states"
        )


def bucket_key(meta: ModelMetadata, steps: int) -> int | None:
    """The batcher's queue for a request of ``steps`` padded steps: with a front end,
    one per exact length (negative, apart from the length buckets), so that merged
    requests are never padded; None: the usual length bucket."""
    return None if meta.front_end is None else -steps
