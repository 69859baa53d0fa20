"""`ray start` pinned to 127.0.0.1: deploy/local-cluster.sh starts every node of its cluster through this.

    python deploy/loopback_ray.py start --head --node-ip-address 127.0.0.1 ...   (the same flags as `ray start`)

Why: Ray 2.60's CLI rewrites `--node-ip-address 127.0.0.1`, and a `127.0.0.1:PORT` address, to the host's
routable address (`ray._private.services.resolve_ip_for_localhost`), and the GCS and raylets then listen on
every interface. Ray keeps loopback as loopback only where it believes multi-node clusters are unsupported
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`), and there its CLI refuses to add worker nodes. Here the node's own
address resolution answers 127.0.0.1 and the worker-node refusal is lifted for this process only, so every
server of the node binds 127.0.0.1. The caller exports RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so the processes
Ray spawns (job drivers, the client server) and the clients that connect resolve 127.0.0.1 the same way.
"""

from __future__ import annotations

import sys

LOOPBACK = "127.0.0.1"


def loopback_address(address: str | None = None) -> str:
    return LOOPBACK


def pin_to_loopback() -> None:
    import ray._private.ray_constants as ray_constants
    import ray._private.services as services

    services.get_node_ip_address = loopback_address
    ray_constants.ENABLE_RAY_CLUSTER = True  # lets `ray start --address` add worker nodes in this process


def main() -> int:
    pin_to_loopback()
    from ray.scripts.scripts import main as ray_cli

    sys.argv[0] = "ray"
    return ray_cli()


if __name__ == "__main__":
    sys.exit(main())
