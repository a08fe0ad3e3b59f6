"""The Open Inference Protocol (KServe V2) as Triton speaks it, with its extensions."""
