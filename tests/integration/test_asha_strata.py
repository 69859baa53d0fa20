"""Fair early stopping on a real Ray runtime with scripted trials (scripted_asha.py): plain ASHA stops the late
bloomer, stratified ASHA keeps each freeze mode's best; the recorded stops carry the scheduler's own cutoffs and
are the same after a driver SIGKILL at a rung boundary and Tuner.restore."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import sigkill, wait_until

from sweeps.asha_state import read_decisions

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("scripted_asha.py")
MAX_EPOCHS = 4
REPLICATES = ("--stratify", "--seeds", "2")  # each arm's seeds 0 and 1 are replicates of it


def start(action: str, storage: Path, name: str, *flags: str) -> subprocess.Popen:
    """The script as a driver of its own (own session: SIGKILL to its group takes its Ray runtime down too)."""
    log = (storage.parent / f"{name}-{action}.log").open("w")
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), action, str(storage), name, *flags],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )


def finish(driver: subprocess.Popen) -> dict:
    out, _ = driver.communicate(timeout=900)
    assert driver.returncode == 0, f"exit {driver.returncode}; see the .log beside the storage"
    return json.loads(out.strip().splitlines()[-1])


def by_arm(outcome: dict) -> dict[tuple, dict]:
    """(freeze, capacity[, seed]) → epochs run and the recorded stop (None if it was not stopped)."""
    arms = {}
    for trial_id, trial in outcome["trials"].items():
        decision = outcome["decisions"].get(trial_id)
        stop = None if decision is None else {k: decision[k] for k in ("stratum", "rung", "value", "cutoff")}
        key = (trial["freeze"], trial["capacity"], *([trial["seed"]] if "seed" in trial else []))
        arms[key] = {"epochs": trial["epochs"], "stop": stop}
    return arms


def stop(stratum: str, value: float, cutoff: float) -> dict:
    return {"stratum": stratum, "rung": 1, "value": pytest.approx(value), "cutoff": pytest.approx(cutoff)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """The scripted grid under plain and under stratified ASHA, each run once without interruption."""
    base = tmp_path_factory.mktemp("strata")
    return {
        name: finish(start("run", base / name, name, *flags))
        for name, flags in (("plain", ()), ("stratified", ("--stratify",)), ("replicates", REPLICATES))
    }


def test_plain_asha_stops_the_late_bloomer(runs):
    # Rung 1 (epoch 1), median of all trials before: frozen 0.34, 0.32, 0.30 then finetune 0.09, 0.07, 0.05.
    assert by_arm(runs["plain"]) == {
        ("frozen", 2): {"epochs": 4, "stop": None},
        ("frozen", 1): {"epochs": 1, "stop": stop("(all)", 0.32, 0.34)},
        ("frozen", 0): {"epochs": 1, "stop": stop("(all)", 0.30, 0.33)},
        ("finetune", 2): {"epochs": 1, "stop": stop("(all)", 0.09, 0.32)},
        ("finetune", 1): {"epochs": 1, "stop": stop("(all)", 0.07, 0.31)},
        ("finetune", 0): {"epochs": 1, "stop": stop("(all)", 0.05, 0.30)},
    }
    # Every fine-tuned trial was stopped at 0.09 or less; run on, the best would have reached 0.49 > frozen's 0.37.


def test_stratified_asha_keeps_the_best_of_each_freeze_mode(runs):
    arms = by_arm(runs["stratified"])
    assert arms == {
        ("frozen", 2): {"epochs": 4, "stop": None},
        ("frozen", 1): {"epochs": 1, "stop": stop("frozen", 0.32, 0.34)},
        ("frozen", 0): {"epochs": 1, "stop": stop("frozen", 0.30, 0.33)},
        ("finetune", 2): {"epochs": 4, "stop": None},
        ("finetune", 1): {"epochs": 1, "stop": stop("finetune", 0.07, 0.09)},
        ("finetune", 0): {"epochs": 1, "stop": stop("finetune", 0.05, 0.08)},
    }
    for freeze in ("frozen", "finetune"):  # every stratum has a trial that reached max_epochs
        assert max(a["epochs"] for (f, _), a in arms.items() if f == freeze) == MAX_EPOCHS


@pytest.mark.parametrize("name", ["plain", "stratified"])
def test_recorded_cutoff_is_the_schedulers(runs, name):
    """Each stop's cutoff is the percentile Ray's bracket takes of the rung records made before the trial's,
    as the scheduler's persisted rungs (in the order they were made) hold them."""
    state = json.loads(Path(runs[name]["state"]).read_text())
    decisions = read_decisions(runs[name]["state"])
    assert set(decisions) == set(runs[name]["decisions"]) and len(decisions) >= 4
    for trial_id, decision in decisions.items():
        (rung_records,) = [
            pairs for milestone, pairs in state["strata"][decision.stratum][0] if milestone == decision.rung
        ]
        order = [t for t, _ in rung_records]
        before = [value for _, value in rung_records[: order.index(trial_id)]]
        assert decision.cutoff == np.nanpercentile(before, 50)  # reduction_factor 2: the median, AP as is
        assert dict(rung_records)[trial_id] == decision.value < decision.cutoff


def same_fate_per_arm(arms: dict[tuple, dict]) -> None:
    """Every arm's seeds end alike: all ran to the end, or all were stopped at the same epoch."""
    fates: dict[tuple, set] = {}
    for (freeze, capacity, _), trial in arms.items():
        fates.setdefault((freeze, capacity), set()).add((trial["epochs"], trial["stop"] is None))
    assert all(len(ends) == 1 for ends in fates.values()), fates


def test_replicates_of_an_arm_continue_or_stop_together(runs):
    # Rung 1, one record per arm (the mean of its seeds; seed s adds 0.001): frozen capacity 2 passes first
    # (0.34, then its seed 1 makes it 0.3405); capacity 1's seed 0 (0.32) misses the median of the others
    # {0.3405}, and its seed 1 (0.321) runs to epoch 1 and stops with it (the arm's record: 0.3205); capacity 0's
    # seed 0 (0.30) misses the median {0.3405, 0.3205} = 0.3305. Fine-tuned alike: 0.0905, then 0.0805.
    arms = by_arm(runs["replicates"])
    stopped = {
        ("frozen", 1): stop("frozen", 0.32, 0.3405),
        ("frozen", 0): stop("frozen", 0.30, 0.3305),
        ("finetune", 1): stop("finetune", 0.07, 0.0905),
        ("finetune", 0): stop("finetune", 0.05, 0.0805),
    }
    assert arms == {
        (freeze, capacity, seed): {"epochs": 1, "stop": stopped[(freeze, capacity)]}
        if (freeze, capacity) in stopped
        else {"epochs": MAX_EPOCHS, "stop": None}
        for freeze in ("frozen", "finetune")
        for capacity in (2, 1, 0)
        for seed in (0, 1)
    }
    same_fate_per_arm(arms)
    for decision in runs["replicates"]["decisions"].values():  # judged on seed 0, stopping both seeds
        assert decision["replicates_by"] == ["arm.seed"] and len(decision["replicates"]) == 1
        assert len(decision["trials"]) == 2


@pytest.mark.parametrize(
    ("name", "flags", "stops"), [("stratified", ("--stratify",), 4), ("replicates", REPLICATES, 8)]
)
def test_stops_are_the_same_after_a_sigkill_at_a_rung_boundary_and_restore(
    runs, tmp_path, name, flags, stops
):
    storage = tmp_path / "killed"
    state = storage / "killed-asha-state.json"
    driver = start("run", storage, "killed", *flags, "--epoch-s", "1.0")
    # The first stop was decided (frozen capacity 1 at rung 1) and Tune has an experiment state to restore.
    wait_until(
        lambda: read_decisions(state) and list((storage / "killed").glob("experiment_state-*.json")),
        driver,
        300,
        "first rung decision",
    )
    sigkill(driver)
    time.sleep(1)  # let the killed runtime's processes go before the next one starts
    decided_before = set(read_decisions(state))
    assert len(decided_before) < stops  # killed mid-sweep

    restored = finish(start("restore", storage, "killed", *flags))
    after, straight = by_arm(restored), by_arm(runs[name])
    assert {arm: a["stop"] for arm, a in after.items()} == {arm: a["stop"] for arm, a in straight.items()}
    # Epochs: the same, but a trial stopped just before the kill may run the epoch Tune's lagging snapshot
    # resumed it into (then it stops with the decision first made).
    for arm, trial in after.items():
        extra = trial["epochs"] - straight[arm]["epochs"]
        assert extra == 0 or (extra == 1 and trial["stop"] is not None), (arm, trial, straight[arm])
    assert decided_before <= set(restored["decisions"])
    if name == "replicates":
        same_fate_per_arm(after)


def test_frost_run_set_stratify_by_keeps_strata_in_the_sweeps_json_state(tmp_path):
    from helpers import frost, tiny_sweep

    spec = tmp_path / "strata.yaml"
    spec.write_text(
        json.dumps(
            tiny_sweep(
                "strata",
                lrs=[],
                epochs=2,
                concurrent=1,
                warmup_steps=0,
                search={
                    "backbone.freeze": {"grid": ["frozen", "finetune"]},
                    "optim.lr": {"grid": [0.05, 1e-9]},
                },
                scheduler={"type": "asha", "metric": "loss", "mode": "min", "grace_period": 1},
            )
        )
    )
    root = tmp_path / "root"
    driver = frost("run", str(spec), "--json", "--set", "scheduler.stratify_by=backbone.freeze", root=root)
    out, err = driver.communicate(timeout=900)
    assert driver.returncode == 0, err[-3000:]
    assert "frost: warning:" not in err  # stratified: nothing to warn about
    summary = json.loads(out.strip().splitlines()[-1])
    sweep = root / "sweeps" / "strata"
    state = json.loads((sweep / "asha-state.json").read_text())
    assert state["stratify_by"] == "backbone.freeze" and set(state["strata"]) == {"frozen", "finetune"}
    for freeze in (
        "frozen",
        "finetune",
    ):  # every stratum's first trial at the rung passes: one ran both epochs
        epochs = [t["epochs"] for t in summary["trials"] if t["config"]["backbone.freeze"] == freeze]
        assert len(epochs) == 2 and max(epochs) == 2
    stopped = {t["trial_id"] for t in summary["trials"] if t["epochs"] < 2}
    decisions = read_decisions(sweep / "asha-state.json")
    assert set(decisions) == stopped
    for trial_id, decision in decisions.items():
        freeze = next(t["config"]["backbone.freeze"] for t in summary["trials"] if t["trial_id"] == trial_id)
        assert decision.stratum == freeze and decision.rung == 1 and decision.value > decision.cutoff  # min

    status = frost("status", "strata", "--json", root=root)
    out, err = status.communicate(timeout=120)
    assert status.returncode == 0, err[-3000:]
    shown = {t["trial_id"]: t["asha"] for t in json.loads(out.strip().splitlines()[-1])["trials"]}
    assert {t for t, stop in shown.items() if stop} == stopped
    for trial_id in stopped:
        assert shown[trial_id]["cutoff"] == decisions[trial_id].cutoff
        assert shown[trial_id]["describe"].startswith(
            f"stopped at rung 1 (epoch 1) among {decisions[trial_id].stratum}: loss"
        )

    # The stop is on each stopped trial's MLflow run too, with the scheduler's own cutoff.
    from mlflow.tracking import MlflowClient

    tracking = json.loads((sweep / "tracking.json").read_text())
    client = MlflowClient(summary["tracking_uri"])
    for trial_id, decision in decisions.items():
        tags = client.get_run(tracking["trials"][trial_id]["run_id"]).data.tags
        assert tags["frost.asha.stratum"] == decision.stratum and tags["frost.asha.rung"] == "1"
        assert float(tags["frost.asha.cutoff"]) == decision.cutoff
        assert tags["frost.fate"] == "stopped" and tags["frost.fate_detail"] == decision.describe()
