import json

import pytest
import torch
from reporters import Interrupt, StopAfter

from service.cli import main
from trainers.checkpoints import CHECKPOINT_FILE, checkpoint_dirs, read_attempts
from trainers.config import load_trial_spec
from trainers.engine import lr_factor
from trainers.errors import FrostError, TrainingError
from trainers.reporting import ReplayingReporter
from trainers.train import run_trial

CONTRACT_KEYS = {
    "AP", "AP50", "AP_r", "AP_c", "AP_f", "trainable_params", "total_params",
    "peak_memory_mb", "images_per_s", "epochs",
}  # fmt: skip


@pytest.fixture
def cli_train(tiny_overrides):
    def run(out, *overrides):
        args = ["train", "--out", str(out)]
        for item in [*tiny_overrides, *overrides]:
            args += ["--set", item]
        return main(args)

    return run


def test_frost_train_prints_final_metrics_as_last_json_line(tmp_path, capsys, cli_train):
    assert cli_train(tmp_path / "t", "train.epochs=1") == 0
    out = capsys.readouterr()
    final = json.loads(out.out.strip().splitlines()[-1])
    assert CONTRACT_KEYS <= final.keys()
    assert final["epochs"] == 1 and 0 <= final["AP"] <= 1
    assert final["trainable_params"] < final["total_params"]  # the default freeze mode is frozen
    assert "epoch 1/1" in out.err  # progress goes to stderr
    trial = tmp_path / "t"
    assert (trial / "trial.yaml").exists() and len(checkpoint_dirs(trial)) == 1
    assert (trial / "eval" / "epoch-0001" / "per_class_ap.csv").exists()
    assert len((trial / "metrics.jsonl").read_text().splitlines()) == 1


def test_finetune_trains_every_parameter(tmp_path, capsys, cli_train):
    assert cli_train(tmp_path / "t", "train.epochs=1", "backbone.freeze=finetune") == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["trainable_params"] == final["total_params"]


def test_interrupted_then_resumed_run_ends_like_an_uninterrupted_one(tmp_path, tiny_trial):
    spec = tiny_trial.model_copy(update={"train": tiny_trial.train.model_copy(update={"epochs": 3})})
    straight = run_trial(spec, tmp_path / "straight")
    with pytest.raises(Interrupt):
        run_trial(spec, tmp_path / "resumed", reporter=StopAfter(2))
    resumed = run_trial(spec, tmp_path / "resumed")
    for key in ("AP", "AP50", "AP_r", "loss", "lr", "epochs"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-4, abs=1e-6), key
    a = torch.load(tmp_path / "straight/checkpoints/epoch-0003" / CHECKPOINT_FILE, weights_only=False)
    b = torch.load(tmp_path / "resumed/checkpoints/epoch-0003" / CHECKPOINT_FILE, weights_only=False)
    for name, tensor in a["model"].items():
        assert torch.allclose(tensor.float(), b["model"][name].float(), atol=1e-5), name
    history = [json.loads(line)["epoch"] for line in (tmp_path / "resumed/metrics.jsonl").open()]
    assert history == [1, 2, 3]  # no epoch counted twice
    attempts = read_attempts(tmp_path / "resumed")
    assert [a["resumed_after_epoch"] for a in attempts] == [0, 2]  # died after checkpointing epoch 2


def test_finished_trial_is_not_trained_again(tmp_path, tiny_trial, capsys):
    first = run_trial(tiny_trial, tmp_path / "t")
    mtime = (checkpoint_dirs(tmp_path / "t")[-1] / CHECKPOINT_FILE).stat().st_mtime
    again = run_trial(tiny_trial, tmp_path / "t")
    assert again["AP"] == first["AP"] and again["epochs"] == 2
    assert (checkpoint_dirs(tmp_path / "t")[-1] / CHECKPOINT_FILE).stat().st_mtime == mtime


def test_a_directory_holding_another_trial_is_refused(tmp_path, tiny_trial, tiny_overrides):
    spec = tiny_trial.model_copy(update={"train": tiny_trial.train.model_copy(update={"epochs": 1})})
    run_trial(spec, tmp_path / "t")
    other = load_trial_spec(None, [*tiny_overrides, "train.epochs=1", "optim.lr=0.5"])
    with pytest.raises(FrostError, match="holds checkpoints of a different trial"):
        run_trial(other, tmp_path / "t")


def test_non_finite_loss_names_epoch_and_step(tmp_path, capsys, cli_train, tiny_overrides):
    overrides = ["optim.lr=1e30", "optim.grad_clip=null", "optim.warmup_steps=0", "train.epochs=1"]
    spec = load_trial_spec(None, [*tiny_overrides, *overrides])
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 1 step \d+/3"):
        run_trial(spec, tmp_path / "t")
    # Deterministic: starting it again (a sweep's retry) fails at once with the recorded reason, training nothing.
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 1 .*recorded in .*failed.json"):
        run_trial(spec, tmp_path / "t")
    assert len(read_attempts(tmp_path / "t")) == 1
    assert cli_train(tmp_path / "cli", *overrides) == 1
    assert "training failed: non-finite loss at epoch 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.source=coco", "data.root=/nonexistent/frost"],
            "data.root: /nonexistent/frost is not a directory",
        ),
        (["backbone.freeze=banana"], "backbone.freeze: must be"),
        (["train.nope=1"], "train.nope: unknown field"),
        (["backbone.weights=/nonexistent/ckpt.pt"], "/nonexistent/ckpt.pt"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path, capsys, cli_train, overrides, message):
    assert cli_train(tmp_path / "t", *overrides) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--bogus"])
    assert info.value.code == 2


def test_lr_schedule_warms_up_then_decays(tiny_trial):
    spec = load_trial_spec(None, ["optim.warmup_steps=10", "optim.schedule=cosine"])
    factors = [lr_factor(spec, step, 100) for step in range(100)]
    assert factors[0] < 0.01 and factors[10] == pytest.approx(1.0)
    assert factors[99] < 0.01 and all(a >= b for a, b in zip(factors[10:], factors[11:]))
    step = load_trial_spec(None, ["optim.warmup_steps=0", "optim.schedule=step", "optim.milestones=[0.5]"])
    assert lr_factor(step, 49, 100) == 1.0 and lr_factor(step, 50, 100) == pytest.approx(0.1)


class Recorder(ReplayingReporter):
    def __init__(self, reported_up_to):
        super().__init__(reported_up_to)
        self.calls = []

    def report(self, epoch, metrics, checkpoint_dir):
        self.calls.append((epoch, metrics["epoch"], checkpoint_dir is not None))


def test_resume_reports_again_the_epochs_the_listener_never_received(tmp_path, tiny_trial):
    spec = tiny_trial.model_copy(update={"train": tiny_trial.train.model_copy(update={"epochs": 3})})
    with pytest.raises(Interrupt):  # epoch 2 is checkpointed, but its report never arrives
        run_trial(spec, tmp_path / "t", reporter=StopAfter(2))
    recorder = Recorder(reported_up_to=1)
    run_trial(spec, tmp_path / "t", reporter=recorder)
    assert recorder.calls == [(2, 2, True), (3, 3, True)]
    recorder = Recorder(reported_up_to=0)
    run_trial(spec, tmp_path / "t", reporter=recorder)  # finished: replays, trains nothing
    assert recorder.calls == [(1, 1, False), (2, 2, False), (3, 3, True)]


def test_a_save_cut_off_midway_is_not_a_checkpoint(tmp_path, tiny_trial):
    spec = tiny_trial.model_copy(update={"train": tiny_trial.train.model_copy(update={"epochs": 3})})
    with pytest.raises(Interrupt):
        run_trial(spec, tmp_path / "t", reporter=StopAfter(2))
    # The process died while saving epoch 3: its staging folder holds state.pt and nothing else.
    staged = tmp_path / "t" / "checkpoints" / "epoch-0003.tmp"
    staged.mkdir()
    (staged / CHECKPOINT_FILE).write_bytes(
        (checkpoint_dirs(tmp_path / "t")[-1] / CHECKPOINT_FILE).read_bytes()
    )
    assert [p.name for p in checkpoint_dirs(tmp_path / "t")] == ["epoch-0001", "epoch-0002"]
    assert run_trial(spec, tmp_path / "t")["epochs"] == 3  # resumed from epoch 2, not from the torn save
    assert read_attempts(tmp_path / "t")[-1]["resumed_after_epoch"] == 2
    assert not staged.exists()
