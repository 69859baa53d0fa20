"""Reporters tests plug into the training loop (trainers/reporting.py's seam)."""

from __future__ import annotations


class Interrupt(Exception):
    pass


class StopAfter:
    """A reporter that dies right after epoch `epoch` was checkpointed: a killed trial."""

    def __init__(self, epoch):
        self.epoch = epoch

    def report(self, epoch, metrics, checkpoint_dir):
        if epoch == self.epoch:
            raise Interrupt

    def resume(self, history, checkpoint_dir):
        pass
