"""Version descriptors shown by /version, /lmc_version, /commit_id and `lmcache --version`."""

from __future__ import annotations

import importlib
import os
from importlib import metadata

DISTRIBUTION = "lmcache-server"
COMMIT_ENV_VAR = "LMCACHE_COMMIT_ID"


def package_version() -> str:
    """The installed distribution's version; "" when there is no metadata (a bare source tree)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return ""


def commit_id() -> str:
    """The build's commit id: $LMCACHE_COMMIT_ID, else a baked `lmcache_frontends._build_info`
    module's COMMIT_ID, else ""."""
    from_env = os.environ.get(COMMIT_ENV_VAR, "").strip()
    if from_env:
        return from_env
    try:
        build_info = importlib.import_module("lmcache_frontends._build_info")
    except ImportError:
        return ""
    return str(getattr(build_info, "COMMIT_ID", "") or "")


def combined_version() -> str:
    """`<version>-<commit_id>`, each missing part replaced by "NA" (the reference's format)."""
    return f"{package_version() or 'NA'}-{commit_id() or 'NA'}"
