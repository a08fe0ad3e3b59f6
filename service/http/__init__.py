"""HTTP translation only: bytes in, calls to ``service.core``, bytes out.

``v1/`` speaks TF-Serving's REST dialect, ``v2/`` the Open Inference Protocol;
what both need (body reading, the error tables, health, metrics, the ASGI
wrappers) sits here. ``v2`` imports nothing from ``v1``.
"""
