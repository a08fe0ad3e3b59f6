"""The page for people at ``/ui/``: try a model in a browser, no client to write first.

Everything the page needs ships in ``static/`` (no CDN, no build step); the
server side (``routes.py``) only serves those files and each model version's
optional ``examples.json``. The page itself talks to the public API (``/v1``
predict, the WebSocket stream) exactly as any client would.
"""
