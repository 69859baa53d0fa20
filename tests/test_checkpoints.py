"""A trial's files are shared and may be torn, planted or cut short by a full disk: none of that may run code
or wedge the trial (issue: hardening). Real trials on tiny data; a real size-limited tmpfs for the full disk."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import uuid

import pytest
import torch
from reporters import Interrupt, StopAfter

from trainers.checkpoints import CHECKPOINT_FILE, checkpoint_dirs, read_attempts, record_attempt
from trainers.errors import TrainingError
from trainers.train import run_trial


def _epochs(spec, n):
    return spec.model_copy(
        update={"train": spec.train.model_copy(update={"epochs": n, "keep_checkpoints": 3})}
    )


def _two_epochs_then_stop(spec, out):
    with pytest.raises(Interrupt):
        run_trial(spec, out, reporter=StopAfter(2))
    assert [p.name for p in checkpoint_dirs(out)] == ["epoch-0001", "epoch-0002"]


def test_a_checkpoint_loads_without_unpickling_anything(tmp_path, tiny_trial):
    out = tmp_path / "t"
    run_trial(_epochs(tiny_trial, 1), out)
    state = torch.load(checkpoint_dirs(out)[-1] / CHECKPOINT_FILE, weights_only=True)  # would raise on numpy
    assert state["epoch"] == 1 and isinstance(state["rng"]["numpy"][1], torch.Tensor)


def test_a_truncated_newest_checkpoint_resumes_from_the_one_before(tmp_path, tiny_trial, capsys):
    spec, out = _epochs(tiny_trial, 3), tmp_path / "t"
    _two_epochs_then_stop(spec, out)
    newest = checkpoint_dirs(out)[-1] / CHECKPOINT_FILE
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    assert run_trial(spec, out)["epochs"] == 3
    assert read_attempts(out)[-1]["resumed_after_epoch"] == 1
    assert "epoch-0002" in capsys.readouterr().err  # said so, naming the unreadable checkpoint


def test_a_planted_pickle_is_refused_and_never_run(tmp_path, tiny_trial):
    spec, out = _epochs(tiny_trial, 3), tmp_path / "t"
    _two_epochs_then_stop(spec, out)
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with (checkpoint_dirs(out)[-1] / CHECKPOINT_FILE).open("wb") as fh:
        pickle.dump({"epoch": 2, "model": Payload(), "history": []}, fh)
    assert run_trial(spec, out)["epochs"] == 3
    assert not marker.exists()
    assert read_attempts(out)[-1]["resumed_after_epoch"] == 1


def test_a_half_written_attempt_line_is_ignored(tmp_path):
    record_attempt(tmp_path, 0)
    with (tmp_path / "attempts.jsonl").open("a") as fh:
        fh.write('{"attempt": 2, "sta')
    assert [a["attempt"] for a in read_attempts(tmp_path)] == [1]


@pytest.fixture
def small_disk(tmp_path):
    """A real 160 MiB file system (tmpfs): needs root, as in CI; skipped, saying why, elsewhere."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): the full-disk test needs root"
        )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


class FillDiskAfter:
    """After epoch `epoch` is saved, fill the disk so that the next save cannot fit."""

    def __init__(self, epoch, disk):
        self.epoch, self.disk = epoch, disk

    def report(self, epoch, metrics, checkpoint_dir):
        if epoch == self.epoch:
            free = shutil.disk_usage(self.disk).free
            with (self.disk / "filler").open("wb") as fh:
                fh.write(b"\0" * max(free - 256 * 1024, 0))

    def resume(self, history, checkpoint_dir):
        pass


def test_a_full_disk_during_a_save_leaves_the_trial_resumable(tiny_trial, small_disk):
    spec, out = _epochs(tiny_trial, 2), small_disk / "t"
    with pytest.raises(TrainingError, match="could not save the checkpoint of epoch 2"):
        run_trial(spec, out, reporter=FillDiskAfter(1, small_disk))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001"]  # intact, no .tmp debris
    (small_disk / "filler").unlink()
    assert run_trial(spec, out)["epochs"] == 2
    assert read_attempts(out)[-1]["resumed_after_epoch"] == 1
