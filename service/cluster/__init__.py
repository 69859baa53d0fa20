"""Where a sweep runs: the Ray runtime frost starts or attaches to, and Ray Jobs on a remote cluster.

- runtime.py   start the embedded runtime (token auth on, loopback) or attach to a cluster; SIGTERM ->
               graceful stop; where Ray's and the libraries' log lines go; does a trial fit the cluster
- reach.py     fail fast: is a GCS or Jobs address listening, and does it take the token (no redirects)
- loopback.py  keep every Ray socket on 127.0.0.1 for a local cluster (set before Ray is imported)
- jobs.py      Ray Jobs: submit a sweep (spec and packages shipped), its state, logs and stop

Nothing is imported here: `frost status` reaches jobs.py without starting Ray (docs/ray-auth.md).
"""
