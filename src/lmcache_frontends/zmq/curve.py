"""ZeroMQ CURVE for the data path: the server's key pair and the engines allowed to connect."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from lmcache_core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveConfig:
    """The server's CURVE key pair (Z85) and the directory of authorized client public keys."""

    public_key: bytes
    secret_key: bytes = field(repr=False)
    authorized_keys_dir: str | None = None


def load_curve_config(config: Any) -> CurveConfig | None:
    """The CURVE settings of `config` (None when --zmq-curve-secret-key-file is unset);
    ConfigError naming the flag for an unreadable or key-less file or directory."""
    path = getattr(config, "zmq_curve_secret_key_file", None)
    authorized = getattr(config, "zmq_curve_authorized_keys", None)
    if path is None:
        if authorized is not None:
            raise ConfigError("--zmq-curve-authorized-keys needs --zmq-curve-secret-key-file (the server's key pair)")
        return None
    if not zmq.has("curve"):
        raise ConfigError("--zmq-curve-secret-key-file: this libzmq has no CURVE support")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--zmq-curve-secret-key-file cannot load {path!r}: {exc}") from None
    if not secret:
        raise ConfigError(
            f"--zmq-curve-secret-key-file {path!r} holds no secret key (give the .key_secret file, not the public .key)"
        )
    if authorized is not None:
        if not os.path.isdir(authorized):
            raise ConfigError(f"--zmq-curve-authorized-keys {authorized!r} is not a directory")
        try:
            clients = zmq.auth.load_certificates(authorized)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--zmq-curve-authorized-keys cannot load {authorized!r}: {exc}") from None
        if not clients:
            raise ConfigError(f"--zmq-curve-authorized-keys {authorized!r} holds no *.key public-key certificates")
    return CurveConfig(public, secret, authorized)


def apply_server_curve(sock: zmq.Socket[Any], curve: CurveConfig | None) -> None:
    """Make `sock` a CURVE server (before bind); a no-op without CURVE."""
    if curve is None:
        return
    sock.curve_secretkey = curve.secret_key
    sock.curve_publickey = curve.public_key
    sock.curve_server = True


def start_authenticator(ctx: zmq.Context[Any], curve: CurveConfig | None) -> ThreadAuthenticator | None:
    """A ZAP handler on `ctx` admitting only the authorized client keys (None when CURVE is
    off or no directory is given: then any client that knows the server key may connect)."""
    if curve is None or curve.authorized_keys_dir is None:
        return None
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("lmcache.zmq.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=curve.authorized_keys_dir)
    return auth
