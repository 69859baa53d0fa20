"""MLflow tracking of sweeps: one parent run per sweep, exactly one child run per trial, across restarts.

- uris.py      where the runs live (the embedded SQLite default, the `mlflow ui` command)
- ops.py       the operations (typed), the MLflow key limits, and the one set of rules that folds an
               operation into a sweep's ledger (what the driver asked for, and what MLflow has applied)
- outbox.py    the durable outbox: operations fsynced before they are queued, replayed after a crash
- writer.py    applies one operation to MLflow, idempotently (a replay after a crash repeats nothing)
- tracker.py   SweepTracker: the driver-side API, one background thread draining the outbox into MLflow
- callback.py  the Ray Tune callback that drives the tracker from trial events

Nothing is imported here, so `frost status` reading `uris` pulls in neither Ray nor MLflow.
Why it is built this way (Ray's stock callback duplicates runs after a restart; SQLite and concurrent
writers; MLflow's client blocking in retries while a server is down): docs/stack.md, "MLflow".
"""
