"""What runs off the driver: the code inside Ray's worker processes and `frost train --workers`.

- trainable.py      one trial inside a Ray Tune actor (trainers/ trains it; Tune gets each epoch)
- data_parallel.py  a trial as N data-parallel workers: Ray Train's TorchTrainer started from the Tune actor
- train_workers.py  `frost train --workers N` on one machine without Ray (torchrun runs the same worker)
- trial_log.py      a trial's stderr, also appended to its `trial.log`

The driver imports only `trainable.frost_trainable` (by reference, for Tune); docs/distributed.md.
"""
