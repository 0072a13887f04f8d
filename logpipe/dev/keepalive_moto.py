"""moto's AWS endpoint served over HTTP/1.1 with keep-alive, for `logpipe bench`.

moto's own server (werkzeug's) answers every request with `Connection: close`, so each
call opens a new TCP connection and the roles spend CPU on connecting that they do not
spend against AWS, whose endpoints keep connections alive. uvicorn serves the same WSGI
application with persistent connections:

    python -m uvicorn logpipe.dev.keepalive_moto:app --port 5000
"""

from __future__ import annotations

import warnings

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from uvicorn.middleware.wsgi import WSGIMiddleware  # type: ignore[attr-defined]

# Threads for calls in flight at once: long polls hold one each for up to 20 s.
WORKERS = 128

with warnings.catch_warnings():
    # uvicorn's WSGI bridge is deprecated in favour of a2wsgi; it serves a bench well enough.
    warnings.simplefilter("ignore", DeprecationWarning)
    app = WSGIMiddleware(DomainDispatcherApplication(create_backend_app), workers=WORKERS)
