"""TF-Serving-style REST (``/v1``): predict, model status, and the WebSocket stream."""
