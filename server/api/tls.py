"""``vace serve --tls``: a self-signed certificate made on first start, and the environment lines for fal-client.

fal-client always speaks https and reads its hosts from the environment once, at import; pointing it at us takes
``FAL_RUN_HOST``, ``FAL_QUEUE_RUN_HOST`` (``host:port/queue``: the queue routes live under ``/queue`` on our one port)
and ``SSL_CERT_FILE`` naming our certificate. The certificate is made with the ``openssl`` tool (present wherever
Python's ssl module is) and remade when the names it must cover change.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
from pathlib import Path


def _san(name: str) -> str:
    try:
        return f"IP:{ipaddress.ip_address(name)}"
    except ValueError:
        return f"DNS:{name}"


def certificate_names(host: str, public_host: str | None = None) -> list[str]:
    """Names the certificate covers: loopback, this machine's name, the bound address and the public host."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    for extra in (host, public_host):
        if extra and extra not in ("0.0.0.0", "::") and extra not in names:
            names.append(extra)
    return names


def ensure_certificate(tls_dir: Path, names: list[str]) -> tuple[Path, Path]:
    """(cert, key) paths, made if missing or made for other names. The key is readable by the owner only."""
    cert, key, made_for = tls_dir / "cert.pem", tls_dir / "key.pem", tls_dir / "names.txt"
    wanted = "\n".join(names)
    if cert.is_file() and key.is_file() and made_for.is_file() and made_for.read_text() == wanted:
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("--tls needs the `openssl` command to make a self-signed certificate; install openssl")
    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=vace-server",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-addext",
            "subjectAltName=" + ",".join(_san(n) for n in names),
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    made_for.write_text(wanted)
    return cert, key


def client_hostport(host: str, port: int) -> str:
    """``host:port`` as a client on this machine reaches a server bound to ``host``."""
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"[{reachable}]:{port}" if ":" in reachable else f"{reachable}:{port}"


def fal_client_env(hostport: str, cert: Path, keys_configured: bool) -> list[str]:
    """The lines a user exports so an unmodified fal-client talks to this https server."""
    return [
        f"FAL_RUN_HOST={hostport}",
        f"FAL_QUEUE_RUN_HOST={hostport}/queue",
        f"SSL_CERT_FILE={cert}",
        "FAL_KEY=<one of your API keys>" if keys_configured else "FAL_KEY=local  # any value: auth is off",
    ]
