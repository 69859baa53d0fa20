"""Keep a Ray runtime this process starts (or a loopback cluster it joins) on 127.0.0.1 only.

Measured on Ray 2.60 (tests/integration/test_loopback.py): `ray.init(address="local",
_node_ip_address="127.0.0.1")` still starts a GCS, raylet and agents listening on every interface, the
host's routable address included. Ray keeps loopback as loopback only where it takes multi-node clusters to
be unsupported (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`); Ray reads that once, when it is imported, and the
processes it spawns inherit it. A driver of a remote cluster must not set it: its own node address would
become 127.0.0.1, which the cluster's nodes cannot reach.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(address: str | None) -> bool:
    """No address (the embedded default) or one on this machine's loopback."""
    if not address:
        return True
    if address == "auto":
        return False
    host = urlsplit(address if "://" in address else f"ray://{address}").hostname
    return host in LOOPBACK_HOSTS


def keep_ray_on_loopback(address: str | None) -> bool:
    """Before Ray is imported: pin the runtime to 127.0.0.1 when the address is local. True when pinned."""
    if not is_loopback(address) or os.environ.get(ENV) == "1":
        return False
    if "ray" in sys.modules and os.environ.get(ENV) != "0":
        return False  # too late for this process: Ray read the setting on import
    os.environ[ENV] = "0"
    return True
