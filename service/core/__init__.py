"""Serving without HTTP: model versions, onnxruntime, scheduling and server-held state.

Nothing here imports FastAPI, Starlette, uvicorn or ``service.http``
(``tests/test_architecture.py`` checks it): the HTTP layer translates bytes into
the types of ``request.py`` and the errors of ``errors.py``, and back.
"""
