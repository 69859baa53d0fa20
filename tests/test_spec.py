"""The sweep spec: catalog files validate, malformed specs are refused with every problem named by its field
path (exit 2, no traceback), overrides re-validate, digests and diffs track what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from sweeps.spec import (
    AshaSpec,
    GridSampler,
    SweepSpec,
    dump_sweep_spec,
    load_sweep_spec,
    spec_diff,
    trial_field_paths,
)
from trainers.errors import FrostError

CATALOG = Path(__file__).resolve().parents[1] / "sweeps" / "catalog"
CATALOG_FILES = sorted(CATALOG.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def validate(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["validate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------------- catalog


def test_catalog_holds_the_three_specs():
    assert {p.name for p in CATALOG_FILES} >= {"smoke.yaml", "frozen_vs_finetune.yaml", "coco.yaml"}


@pytest.mark.parametrize("path", CATALOG_FILES, ids=lambda p: p.name)
def test_catalog_file_validates(capsys, path):
    code, out, err = validate(capsys, path)
    assert code == 0, err
    spec = load_sweep_spec(path)
    assert f"valid sweep '{spec.name}' ({spec.digest()})" in out


@pytest.mark.parametrize("path", CATALOG_FILES, ids=lambda p: p.name)
def test_dumped_spec_reads_back_equal(tmp_path, path):
    spec = load_sweep_spec(path)
    dump_sweep_spec(spec, tmp_path / "resolved.yaml")
    again = load_sweep_spec(tmp_path / "resolved.yaml")
    assert again == spec and again.digest() == spec.digest() and spec_diff(spec, again) == []


def test_smoke_is_a_small_frozen_vs_finetune_capacity_sweep():
    spec = load_sweep_spec(CATALOG / "smoke.yaml")
    assert spec.trial.data.source == "synth"
    assert spec.search["backbone.freeze"].values() == ["frozen", "finetune"]
    assert spec.trial_count() == 4
    assert isinstance(spec.scheduler, AshaSpec) and spec.scheduler.grace_period == 1
    assert spec.scheduler.max_epochs == spec.trial.train.epochs  # defaulted from the trial
    assert spec.max_concurrent_trials == 2 and spec.resources.cpus == 1


def test_coco_spec_describes_a_gpu_cluster():
    spec = load_sweep_spec(CATALOG / "coco.yaml")
    assert spec.trial.data.source == "coco" and spec.trial.data.root == "/data/coco"
    assert spec.trial.backbone.weights == "imagenet" and spec.trial.backbone.name == "resnet50"
    assert spec.trial.input.image_size == 800
    assert spec.resources.gpus == 0.5
    assert spec.storage.startswith("s3://") and spec.tracking.uri.startswith("https://")


def test_frozen_vs_finetune_crosses_three_freeze_modes_with_capacity_and_seeds():
    spec = load_sweep_spec(CATALOG / "frozen_vs_finetune.yaml")
    assert spec.search["backbone.freeze"].values() == ["frozen", "partial:2", "finetune"]
    assert {"neck.fpn_channels", "neck.extra_blocks", "heads.box_convs", "seed"} <= set(spec.search)
    assert spec.trial_count() == 3 * 2 * 2 * 2 * 2


# ------------------------------------------------------------------------------ malformed specs

GOOD = "name: ok\n"
BAD_SPECS = {
    "unknown top-level field": (GOOD + "schedular: {type: fifo}\n", "schedular: unknown field"),
    "unknown trial field": (
        GOOD + "trial: {backbone: {freez: frozen}}\n",
        "trial.backbone.freez: unknown field",
    ),
    "bad trial value": (GOOD + "trial: {backbone: {freeze: banana}}\n", "trial.backbone.freeze: must be"),
    "bad slug": ("name: My Sweep\n", "name: must be a slug"),
    "missing name": ("samples: 2\n", "name: Field required"),
    "bad sampler key": (GOOD + "search: {heads.box_fc: {grdi: [64]}}\n", "search.heads.box_fc: a sampler is"),
    "two sampler keys": (
        GOOD + "search: {heads.box_fc: {grid: [64], choice: [1]}}\n",
        "search.heads.box_fc: a sampler is a mapping with exactly one key",
    ),
    "sampler not a mapping": (
        GOOD + "search: {optim.lr: [0.1, 0.2]}\n",
        "search.optim.lr: expected a sampler",
    ),
    "path does not exist": (
        GOOD + "search: {backbone.freezee: {grid: [frozen]}}\n",
        "search.backbone.freezee: no such field in the trial spec (did you mean backbone.freeze?)",
    ),
    "path below a leaf": (
        GOOD + "search: {seed.x: {grid: [1]}}\n",
        "search.seed.x: no such field in the trial spec (seed is a field, not a section)",
    ),
    "section as path": (
        GOOD + "search: {neck: {grid: [1]}}\n",
        "search.neck: is a section of the trial spec",
    ),
    "invalid choice value": (
        GOOD + "search: {backbone.freeze: {choice: [frozen, banana]}}\n",
        "search.backbone.freeze: choice value 'banana' is invalid: must be 'frozen', 'finetune' or 'partial:K'",
    ),
    "invalid grid value": (
        GOOD + "search: {neck.fpn_channels: {grid: [64, 4]}}\n",
        "search.neck.fpn_channels: grid value 4 is invalid: Input should be greater than or equal to 8",
    ),
    "empty grid": (
        GOOD + "search: {seed: {grid: []}}\n",
        "search.seed.grid: List should have at least 1 item",
    ),
    "duplicate grid value": (
        GOOD + "search: {seed: {grid: [1, 1]}}\n",
        "search.seed.grid: duplicate value 1",
    ),
    "uniform lo >= hi": (
        GOOD + "search: {optim.lr: {uniform: [0.1, 0.1]}}\n",
        "search.optim.lr.uniform: lo must be < hi, got [0.1, 0.1]",
    ),
    "loguniform lo <= 0": (
        GOOD + "search: {optim.lr: {loguniform: [0, 0.1]}}\n",
        "search.optim.lr.loguniform: lo must be > 0",
    ),
    "range endpoint invalid": (
        GOOD + "search: {optim.momentum: {uniform: [0.5, 1.5]}}\n",
        "search.optim.momentum: uniform [0.5, 1.5] draws 1.5, invalid: Input should be less than 1",
    ),
    "float sampler on an int field": (
        GOOD + "search: {heads.box_convs: {uniform: [0, 4]}}\n",
        "search.heads.box_convs: uniform [0.0, 4.0] draws 1.48, invalid: Input should be a valid integer",
    ),
    "randint hi is exclusive": (
        GOOD + "search: {heads.box_convs: {randint: [0, 10]}}\n",
        "search.heads.box_convs: randint [0, 10] draws 9, invalid",
    ),
    "quniform needs q": (
        GOOD + "search: {optim.lr: {quniform: [0.1, 0.2]}}\n",
        "search.optim.lr.quniform: quniform expects [lo, hi, q], got [0.1, 0.2]",
    ),
    "scheduler without type": (GOOD + "scheduler: {grace_period: 1}\n", "scheduler: needs a type: asha"),
    "grace > max_epochs": (
        GOOD + "scheduler: {type: asha, grace_period: 3, max_epochs: 2}\n",
        "scheduler.grace_period: grace_period 3 exceeds max_epochs 2",
    ),
    "grace > defaulted max_epochs": (
        GOOD + "trial: {train: {epochs: 2}}\nscheduler: {type: asha, grace_period: 3}\n",
        "scheduler.grace_period: grace_period 3 exceeds max_epochs 2 (defaulted to trial.train.epochs)",
    ),
    "max_epochs > trial epochs": (
        GOOD + "trial: {train: {epochs: 4}}\nscheduler: {type: asha, max_epochs: 6}\n",
        "scheduler.max_epochs: max_epochs 6 exceeds trial.train.epochs (4)",
    ),
    "max_epochs > a searched epochs value": (
        GOOD + "search: {train.epochs: {grid: [3, 8]}}\nscheduler: {type: asha, max_epochs: 6}\n",
        "scheduler.max_epochs: max_epochs 6 exceeds searched train.epochs (3)",
    ),
    "unknown metric": (
        GOOD + "scheduler: {type: asha, metric: mAP}\n",
        "scheduler.metric: 'mAP' is not a metric",
    ),
    "mode against the metric": (
        GOOD + "scheduler: {type: asha, metric: loss}\n",
        "scheduler.mode: 'max' would favour the worst trials: loss wants mode: min",
    ),
    "unknown fifo metric": (
        GOOD + "scheduler: {type: fifo, metric: acc}\n",
        "scheduler.metric: 'acc' is not",
    ),
    "asha rung on an unevaluated epoch": (
        GOOD + "trial: {eval: {every: 2}}\nscheduler: {type: asha, grace_period: 1}\n",
        "scheduler: ASHA decides at epochs 1, 2, 4, 6 from AP, but with trial.eval.every=2",
    ),
    "too many brackets": (
        GOOD + "scheduler: {type: asha, grace_period: 2, brackets: 3}\n",
        "scheduler.brackets: 3 brackets",
    ),
    "cuda without a gpu": (
        GOOD + "trial: {train: {device: cuda}}\n",
        "resources.gpus: trial.train.device 'cuda' needs gpus > 0",
    ),
    "fractional gpus above one": (
        GOOD + "resources: {gpus: 1.5}\n",
        "resources.gpus: amounts above 1 must be whole",
    ),
    "samples < 1": (GOOD + "samples: 0\n", "samples: Input should be greater than or equal to 1"),
    "storage scheme": (
        GOOD + "storage: http://host/x\n",
        "storage: http:// is not a storage Ray Tune can write to",
    ),
    "search not a mapping": (GOOD + "search: [optim.lr]\n", "search: Input should be a valid dictionary"),
    "workers above the global batch": (
        GOOD + "resources: {workers_per_trial: 4}\ntrial: {train: {batch_size: 2}}\n",
        "resources.workers_per_trial: 4 workers cannot share a global batch of 2",
    ),
    "a GPU fraction per data-parallel worker": (
        GOOD + "resources: {workers_per_trial: 2, gpus: 0.5}\n",
        "resources.gpus: 0.5 per worker cannot be shared by data-parallel workers",
    ),
    "joint key with a range sampler": (
        GOOD + "search: {'neck.fpn_channels,heads.box_convs': {randint: [1, 4]}}\n",
        "search.neck.fpn_channels,heads.box_convs: a joint key takes grid or choice",
    ),
    "joint value of the wrong length": (
        GOOD + "search: {'neck.fpn_channels,heads.box_convs': {grid: [[32, 1], [64]]}}\n",
        "search.neck.fpn_channels,heads.box_convs: grid value [64] is invalid: a joint key takes a list of 2",
    ),
    "joint value invalid for its path": (
        GOOD + "search: {'neck.fpn_channels,heads.box_convs': {grid: [[32, 1], [64, 99]]}}\n",
        "grid value [64, 99] is invalid: heads.box_convs: Input should be less than or equal to 8",
    ),
    "joint key with an unknown path": (
        GOOD + "search: {'neck.fpn_channels,heads.box_conv': {grid: [[32, 1]]}}\n",
        "search.neck.fpn_channels,heads.box_conv: heads.box_conv: no such field in the trial spec",
    ),
    "path searched twice": (
        GOOD
        + "search: {neck.fpn_channels: {grid: [32]}, 'neck.fpn_channels,heads.box_convs': {grid: [[32, 1]]}}\n",
        "neck.fpn_channels is already searched by 'neck.fpn_channels'",
    ),
    "not a mapping": ("- name: ok\n", "expected a mapping at the top level, got list"),
    "yaml syntax error": ("name: [ok\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_malformed_spec_is_refused_naming_the_field(capsys, tmp_path, case):
    text, expected = BAD_SPECS[case]
    path = write(tmp_path, text)
    code, out, err = validate(capsys, path)
    assert code == 2
    assert out == ""
    assert err.startswith(f"frost: {path}")
    assert "Traceback" not in err
    lines = err.splitlines()
    assert any(expected in line for line in lines), err
    if ":" in expected.split(" ")[0]:  # a field problem: it starts its own line
        assert any(line.startswith(expected) for line in lines), err


def test_missing_file_is_refused(capsys, tmp_path):
    code, _, err = validate(capsys, tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml: cannot read" in err and "Traceback" not in err


def test_unreadable_file_is_refused(capsys, tmp_path):
    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    code, _, err = validate(capsys, folder)
    assert code == 2 and "a-folder.yaml: cannot read" in err and "Traceback" not in err


def test_every_problem_is_listed_at_once(capsys, tmp_path):
    path = write(
        tmp_path,
        """
name: Not A Slug
trial: {optim: {lr: -1}}
search:
  backbone.freezee: {grid: [frozen]}
  optim.momentum: {uniform: [0.9, 0.1]}
  heads.box_fc: {grdi: [64]}
scheduler: {type: asha, metric: mAP, grace_period: 5, max_epochs: 2}
resources: {cpus: 0}
bogus: 1
""",
    )
    code, _, err = validate(capsys, path)
    assert code == 2
    lines = err.splitlines()[1:]
    expected = [
        "name: ",
        "trial.optim.lr: ",
        "search.backbone.freezee: no such field",
        "search.optim.momentum.uniform: lo must be < hi",
        "search.heads.box_fc: a sampler is",
        "scheduler.metric: 'mAP'",
        "scheduler.grace_period: grace_period 5 exceeds max_epochs 2",
        "resources.cpus: ",
        "bogus: unknown field",
    ]
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, err)
    assert len(lines) == len(expected), err


def test_values_are_checked_against_the_trial_alongside_scheduler_problems(capsys, tmp_path):
    path = write(
        tmp_path,
        """
name: ok
search:
  backbone.freeze: {choice: [frozen, banana]}
  neck.fpn_channels: {grid: [4096]}
scheduler: {type: asha, metric: nope}
""",
    )
    code, _, err = validate(capsys, path)
    assert code == 2
    assert "search.backbone.freeze: choice value 'banana' is invalid" in err
    assert (
        "search.neck.fpn_channels: grid value 4096 is invalid: Input should be less than or equal to 1024"
        in err
    )
    assert "scheduler.metric: 'nope'" in err


def test_values_are_checked_against_the_base_trial_not_the_defaults(tmp_path):
    # eval.common_max 5 in the base trial makes a searched eval.rare_max of 8 invalid (cross-field rule).
    path = write(
        tmp_path,
        "name: ok\ntrial: {eval: {common_max: 5, rare_max: 2}}\nsearch: {eval.rare_max: {grid: [2, 8]}}\n",
    )
    with pytest.raises(FrostError) as info:
        load_sweep_spec(path)
    assert (
        "search.eval.rare_max: grid value 8 is invalid: trial.eval: eval.common_max must be >= eval.rare_max"
        in str(info.value)
    )


# ------------------------------------------------------------------------------------- semantics


def test_grid_values_are_normalised_as_the_trial_reads_them(tmp_path):
    path = write(
        tmp_path,
        "name: ok\nsearch:\n  backbone.freeze: {grid: [frozen, {partial: 2}]}\n  optim.lr: {grid: [1, 0.1]}\n",
    )
    spec = load_sweep_spec(path)
    assert spec.search["backbone.freeze"].grid == ["frozen", "partial:2"]
    assert spec.search["optim.lr"].grid == [1.0, 0.1] and isinstance(spec.search["optim.lr"].grid[0], float)


def test_randint_upper_bound_is_exclusive():
    spec = SweepSpec.model_validate({"name": "ok", "search": {"heads.box_convs": {"randint": [0, 9]}}})
    assert spec.search["heads.box_convs"].possible_values() == list(range(9))  # 0..8, all valid


def test_max_epochs_defaults_to_the_smallest_searched_epochs():
    spec = SweepSpec.model_validate(
        {"name": "ok", "search": {"train.epochs": {"grid": [5, 3]}}, "scheduler": {"type": "asha"}}
    )
    assert spec.scheduler.max_epochs == 3


def test_eval_every_may_exceed_one_when_rungs_fall_on_evaluated_epochs():
    spec = SweepSpec.model_validate(
        {
            "name": "ok",
            "trial": {"eval": {"every": 2}, "train": {"epochs": 8}},
            "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
        }
    )
    assert spec.scheduler.rungs() == [2, 4, 8]


def test_train_metrics_are_not_bound_to_the_eval_cadence():
    spec = SweepSpec.model_validate(
        {
            "name": "ok",
            "trial": {"eval": {"every": 3}},
            "scheduler": {"type": "asha", "metric": "loss", "mode": "min"},
        }
    )
    assert spec.scheduler.metric == "loss"


def test_defaults():
    spec = SweepSpec(name="plain")
    assert spec.scheduler.type == "fifo" and spec.samples == 1 and spec.max_failures == 2
    assert spec.resources.cpus == 1 and spec.resources.gpus == 0 and spec.resources.memory_gb is None
    assert spec.storage is None and spec.tracking.uri is None and spec.experiment_name == "plain"
    assert spec.trial_count() == 1 and spec.searched_paths == []
    assert not spec.checkpoint_artifacts


def test_search_paths_cover_the_head_capacity_knobs():
    paths = trial_field_paths()
    for path in (
        "backbone.freeze",
        "neck.fpn_channels",
        "neck.extra_blocks",
        "heads.box_convs",
        "heads.box_fc",
    ):
        assert path in paths
    assert "neck" not in paths and "data.train" not in paths  # sections are not leaves


# ---------------------------------------------------------------------------------- schema, --set


def test_schema_is_json_naming_trial_and_search(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"name", "trial", "search", "scheduler", "resources"} <= set(schema["properties"])
    assert schema["required"] == ["name"]
    samplers = json.dumps(schema["properties"]["search"])
    assert "GridSampler" in samplers and "QUniformSampler" in samplers


def test_set_overrides_apply_and_revalidate(capsys):
    smoke = CATALOG / "smoke.yaml"
    spec = load_sweep_spec(
        smoke,
        [
            "trial.train.epochs=2",
            "search.neck.fpn_channels.grid=[32]",
            "search.heads.box_fc={choice: [64, 256]}",
            "search.backbone.freeze=null",
            "scheduler.stratify_by=null",  # smoke.yaml stratifies by the freeze mode dropped here
            "samples=3",
        ],
    )
    assert spec.trial.train.epochs == 2 and spec.scheduler.max_epochs == 2
    assert spec.search["neck.fpn_channels"] == GridSampler(grid=[32])
    assert spec.search["heads.box_fc"].values() == [64, 256]
    assert "backbone.freeze" not in spec.search
    assert spec.samples == 3 and spec.trial_count() == 3

    code, _, err = validate(
        capsys, smoke, "--set", "scheduler.max_epochs=8", "--set", "search.seed.grid=[-1.5]"
    )
    assert code == 2
    assert "scheduler.max_epochs: max_epochs 8 exceeds trial.train.epochs (4)" in err
    assert "search.seed: grid value -1.5 is invalid" in err

    code, _, err = validate(capsys, smoke, "--set", "no-equals-sign")
    assert code == 2 and "expected dotted.path=value" in err


# ------------------------------------------------------------------------------ digest and diff


def test_digest_is_stable_and_tracks_content(tmp_path):
    smoke = CATALOG / "smoke.yaml"
    a, b = load_sweep_spec(smoke), load_sweep_spec(smoke)
    assert a.digest() == b.digest() and len(a.digest()) == 12
    # Same content written differently (key order, explicit defaults): same digest.
    reordered = write(
        tmp_path,
        """
samples: 1
search:
  neck.fpn_channels: {grid: [64, 128]}
  backbone.freeze: {grid: [frozen, finetune]}
resources: {gpus: 0, cpus: 1}
scheduler: {type: asha, grace_period: 1, max_epochs: 4, stratify_by: backbone.freeze}
max_concurrent_trials: 2
max_failures: 1
name: smoke
trial:
  train: {device: cpu, epochs: 4}
  data: {limit_val: 64, limit_train: 160}
""",
    )
    assert load_sweep_spec(reordered).digest() == a.digest()
    assert load_sweep_spec(smoke, ["description=another story"]).digest() == a.digest()
    assert load_sweep_spec(smoke, ["trial.train.epochs=3"]).digest() != a.digest()
    assert load_sweep_spec(smoke, ["search.neck.fpn_channels.grid=[128, 64]"]).digest() != a.digest()


def test_spec_diff_lists_changed_paths():
    smoke = CATALOG / "smoke.yaml"
    a = load_sweep_spec(smoke)
    b = load_sweep_spec(smoke, ["trial.train.epochs=6", "search.heads.box_fc.grid=[64]", "max_failures=3"])
    diff = spec_diff(a, b)
    assert "trial.train.epochs: 4 -> 6" in diff
    assert "scheduler.max_epochs: 4 -> 6" in diff
    assert "max_failures: 1 -> 3" in diff
    assert "search.heads.box_fc.grid: (unset) -> [64]" in diff
    assert len(diff) == 4, diff
    assert spec_diff(a, a) == []
    assert spec_diff(b, a)[0].endswith("6 -> 4")


def test_scheduler_is_not_judged_against_a_searched_epochs_entry_that_failed(capsys, tmp_path):
    # train.epochs: {grid: [6, 8.5]} is invalid, so the base trial's 4 epochs must not be used to call
    # max_epochs 6 too large - only the real problem is reported.
    path = write(
        tmp_path,
        "name: ok\ntrial: {train: {epochs: 4}}\nsearch: {train.epochs: {grid: [6, 8.5]}}\n"
        "scheduler: {type: asha, max_epochs: 6}\n",
    )
    code, _, err = validate(capsys, path)
    assert code == 2
    assert "search.train.epochs: grid value 8.5 is invalid" in err
    assert not any(line.startswith("scheduler") for line in err.splitlines()), err


# ----------------------------------------------------------------------------------------- --force
def test_a_changed_spec_is_refused_unless_forced_and_forcing_keeps_the_old_sweep(tmp_path):
    from service.project import check_same_spec, list_sweeps
    from service.sweep_folder import SPEC_FILE

    old = load_sweep_spec(CATALOG / "smoke.yaml")
    new = load_sweep_spec(CATALOG / "smoke.yaml", ["trial.seed=7"])
    directory = tmp_path / "sweeps" / old.name
    directory.mkdir(parents=True)
    check_same_spec(old, directory)  # first run: the spec is saved beside the sweep
    (directory / "trials").mkdir()
    (directory / "trials" / "result.json").write_text("{}")
    check_same_spec(old, directory)  # the same spec again: nothing happens

    with pytest.raises(FrostError, match=r"(?s)different spec.*trial.seed: 0 -> 7.*--force"):
        check_same_spec(new, directory)
    assert load_sweep_spec(directory / SPEC_FILE).digest() == old.digest()  # refused: nothing touched

    check_same_spec(new, directory, force=True)
    assert load_sweep_spec(directory / SPEC_FILE).digest() == new.digest()
    assert not (directory / "trials").exists()  # starts afresh
    (kept,) = (tmp_path / "sweeps" / ".replaced").iterdir()
    assert kept.name.startswith(f"{old.name}-{old.digest()}-")
    assert (kept / "trials" / "result.json").exists() and load_sweep_spec(kept / SPEC_FILE) == old
    assert list_sweeps(tmp_path) == [old.name]  # the kept one is not a sweep under the name


def test_force_refuses_to_move_remote_state(tmp_path):
    from service.project import check_same_spec

    old = load_sweep_spec(CATALOG / "smoke.yaml", ["storage=s3://bucket/frost"])
    directory = tmp_path / "sweeps" / old.name
    directory.mkdir(parents=True)
    check_same_spec(old, directory)
    with pytest.raises(FrostError, match="remote storage \\(s3://bucket/frost\\)"):
        check_same_spec(load_sweep_spec(CATALOG / "smoke.yaml", ["trial.seed=7"]), directory, force=True)
