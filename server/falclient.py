"""Point an installed, unmodified fal-client (Python) at a vace server, over http or https, in one line::

    from server.falclient import use_server
    use_server("http://127.0.0.1:8000")          # then fal_client.subscribe(...), upload_file(...) as usual

fal-client has no setting for its upload hosts (``rest.fal.ai``, ``v3.fal.media``) and always uses https for the
run and queue hosts it reads from ``FAL_RUN_HOST``/``FAL_QUEUE_RUN_HOST``. It reads all of them from module-level
names of ``fal_client.client`` each time it builds a URL, so setting those names redirects every call: sync runs,
the queue, both upload flows and realtime (which this server does not serve, so it fails here instead of reaching
fal). Call it before the first upload: fal-client caches its upload token URL on first use. Tested with
fal-client 1.0.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

_NAMES = ("RUN_URL_FORMAT", "QUEUE_URL_FORMAT", "REST_URL", "CDN_URL", "REALTIME_URL_FORMAT")


def use_server(url: str, *, key: str | None = None, ca_file: str | os.PathLike[str] | None = None) -> None:
    """Send every fal-client call to the server at ``url`` (``http(s)://host:port``, optionally with a path).

    ``key`` sets ``FAL_KEY`` (else it defaults to "local", accepted when the server has auth off); ``ca_file``
    trusts the server's certificate (``vace serve --tls`` prints its path) by setting ``SSL_CERT_FILE``.
    """
    import fal_client
    import fal_client.client as client

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s)://host:port URL, got {url!r}")
    missing = [name for name in _NAMES if not hasattr(client, name)]
    if missing:
        raise RuntimeError(f"this fal-client version ({fal_client.__version__}) lacks {missing}; use fal-client 1.0")
    base = url.rstrip("/")
    client.RUN_URL_FORMAT = f"{base}/"
    client.QUEUE_URL_FORMAT = f"{base}/queue/"
    client.REST_URL = base
    client.CDN_URL = base
    client.REALTIME_URL_FORMAT = (
        f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}{parts.path.rstrip('/')}/"
    )
    if key is not None:
        os.environ["FAL_KEY"] = key
    else:
        os.environ.setdefault("FAL_KEY", "local")
    if ca_file is not None:
        os.environ["SSL_CERT_FILE"] = os.fspath(ca_file)
    for shared in (fal_client.sync_client, fal_client.async_client):
        shared.__dict__.pop("_token_manager", None)  # a token manager made earlier holds the old upload URL
