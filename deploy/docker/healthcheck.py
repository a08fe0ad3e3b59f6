"""The image's HEALTHCHECK: exit 0 when ``GET /v2/health/ready`` answers 200.

Slim images carry no curl, so the check is Python's standard library, reading the
same ``LSTM_SERVE_HOST``/``LSTM_SERVE_PORT`` the server binds. A wildcard bind
address is checked on loopback. With TLS on (``LSTM_SERVE_SSL_CERTFILE``) it speaks
HTTPS to itself without verifying the certificate: it checks that this server is
ready, not who it is.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def ready_url(environ: dict[str, str]) -> str:
    host = environ.get("LSTM_SERVE_HOST", "127.0.0.1")
    host = "127.0.0.1" if host in WILDCARDS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if environ.get("LSTM_SERVE_SSL_CERTFILE") else "http"
    return f"{scheme}://{host}:{environ.get('LSTM_SERVE_PORT', '8000')}/v2/health/ready"


def main() -> int:
    url = ready_url(dict(os.environ))
    try:
        context = ssl._create_unverified_context() if url.startswith("https") else None
        with urllib.request.urlopen(url, timeout=2.0, context=context) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"not ready: {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
