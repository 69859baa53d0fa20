"""The `frost` commands, one module per command group, each with its parsers beside its handlers.

- flags.py   the parser class and the flags several commands share (--root, --set, --address, ...)
- trial.py   frost data synth | import | stats, frost pretrain, frost train
- sweep.py   frost validate, schema, run, resume, status, ls
- report.py  frost report
- jobs.py    frost submit, logs, stop (Ray Jobs)
- cache.py   frost cache ls | du | clear

service/cli.py only wires them and turns errors into exit codes. Handlers import what they need inside the
function: `frost --help` and `frost status` must not pay for torch, Ray or MLflow (benchmarks/cli_startup.py).
"""
