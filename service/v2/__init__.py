"""The Open Inference Protocol's data model, shared by its REST and gRPC bindings: tensor
specs and the envelope (``schema.py``), tensor decode/encode (``tensors.py``), server and
model metadata and Triton's config (``metadata.py``), the repository extension's rules
(``control.py``). Nothing here knows HTTP or gRPC."""
