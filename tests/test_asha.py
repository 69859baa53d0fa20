"""PersistentASHA without a Ray runtime: Ray's own scheduler and bracket code fed results by hand (Trial stubs),
cutoffs derived by hand; strata, rung metrics, the JSON state and its refusal of anything else; the spec's
`scheduler.stratify_by` / `rung_metric`, their validation and the warning."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from service.cli import main
from sweeps.asha import PersistentASHA
from sweeps.asha_state import UNSTRATIFIED, Decision, read_decisions
from sweeps.space import build_scheduler
from sweeps.spec import AshaSpec, SweepSpec, load_sweep_spec, spec_warnings
from trainers.errors import FrostError

CATALOG = Path(__file__).resolve().parents[1] / "sweeps" / "catalog"
STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


def trial(trial_id: str, freeze: str = "frozen") -> Trial:
    return Trial("scripted", config={"backbone.freeze": freeze}, trial_id=trial_id, stub=True)


def asha(state: Path | None = None, **kwargs) -> PersistentASHA:
    options = dict(time_attr="epoch", metric="AP", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    return PersistentASHA(state, **{**options, **kwargs})


def report(scheduler: PersistentASHA, t: Trial, epoch: int, ap: float) -> str:
    return scheduler.on_trial_result(None, t, {"epoch": epoch, "AP": ap})


# ------------------------------------------------------------------------------------------------ decisions


def test_plain_asha_judges_every_trial_against_all_before_it():
    scheduler = asha()
    a, b, c = trial("a", "frozen"), trial("b", "finetune"), trial("c", "finetune")
    for t in (a, b, c):
        scheduler.on_trial_add(None, t)
    assert report(scheduler, a, 1, 0.30) == CONTINUE  # the first at a rung always passes
    assert report(scheduler, b, 1, 0.10) == STOP  # 0.10 < median {0.30}
    assert report(scheduler, c, 1, 0.20) == CONTINUE  # 0.20 >= median {0.30, 0.10} = 0.20
    decision = scheduler.decisions()["b"]
    assert (decision.stratum, decision.rung, decision.epoch, decision.value, decision.cutoff) == (
        UNSTRATIFIED,
        1,
        1,
        0.10,
        0.30,
    )
    assert list(scheduler.decisions()) == ["b"]


def test_strata_compare_trials_only_with_their_own_kind():
    scheduler = asha(stratify_by="backbone.freeze")
    a, b, c = trial("a", "frozen"), trial("b", "finetune"), trial("c", "finetune")
    for t in (a, b, c):
        scheduler.on_trial_add(None, t)
    assert report(scheduler, a, 1, 0.30) == CONTINUE
    assert report(scheduler, b, 1, 0.10) == CONTINUE  # first of its stratum: frozen's 0.30 is not its bar
    assert report(scheduler, c, 1, 0.08) == STOP  # below finetune's median {0.10}
    decision = scheduler.decisions()["c"]
    assert (decision.stratum, decision.rung, decision.value, decision.cutoff) == ("finetune", 1, 0.08, 0.10)
    assert decision.tags() == {
        "frost.asha.stratum": "finetune",
        "frost.asha.rung": "1",
        "frost.asha.cutoff": "0.1",
        "frost.asha.value": "0.08",
    }
    assert decision.describe() == "stopped at rung 1 (epoch 1) among finetune: AP 0.080 < cutoff 0.100"


@pytest.mark.parametrize(
    ("rung_metric", "value", "cutoff", "action"),
    [("last", 0.05, 0.30, STOP), ("best", 0.40, 0.30, CONTINUE), ("ema", 0.225, 0.25, STOP)],
)
def test_rung_metric_is_the_value_compared(rung_metric, value, cutoff, action):
    # a's epochs: 0.20, 0.30; b's: 0.40, 0.05. At rung 2 the bar is a's rung value, the only one recorded there
    # (ema: 0.5 * 0.30 + 0.5 * 0.20 = 0.25 for a; 0.5 * 0.05 + 0.5 * 0.40 = 0.225 for b).
    scheduler = asha(rung_metric=rung_metric)
    a, b = trial("a"), trial("b")
    report(scheduler, a, 1, 0.20)
    report(scheduler, a, 2, 0.30)
    assert report(scheduler, b, 1, 0.40) == CONTINUE
    assert report(scheduler, b, 2, 0.05) == action
    assert scheduler.rung_value("b", 2) == pytest.approx(value)
    if action == STOP:
        assert scheduler.decisions()["b"].value == pytest.approx(value)
        assert scheduler.decisions()["b"].cutoff == pytest.approx(cutoff)


def test_min_mode_cutoff_is_in_the_metric_units():
    scheduler = asha(metric="loss", mode="min")
    a, b, c = trial("a"), trial("b"), trial("c")
    scheduler.on_trial_result(None, a, {"epoch": 1, "loss": 1.0})
    scheduler.on_trial_result(None, b, {"epoch": 1, "loss": 3.0})
    assert scheduler.on_trial_result(None, c, {"epoch": 1, "loss": 2.5}) == STOP  # median {1.0, 3.0} = 2.0
    assert scheduler.decisions()["b"].cutoff == 1.0
    assert scheduler.decisions()["c"].cutoff == 2.0


def test_a_stopped_trial_that_reports_again_stays_stopped_with_its_first_decision():
    # After a driver SIGKILL, Tune may resume a trial ASHA had stopped (its snapshot lags): it reports again.
    scheduler = asha()
    a, b = trial("a"), trial("b")
    report(scheduler, a, 1, 0.5)
    report(scheduler, a, 2, 0.9)
    assert report(scheduler, b, 1, 0.1) == STOP
    first = scheduler.decisions()["b"]
    assert report(scheduler, b, 2, 0.95) == STOP
    scheduler.on_trial_complete(None, b, {"epoch": 2, "AP": 0.95})
    assert scheduler.decisions() == {"b": first} and first.rung == 1
    assert [[t for t, _ in pairs] for _, pairs in scheduler.state()["strata"][UNSTRATIFIED][0]] == [
        [],  # rung 4
        ["a"],  # rung 2: b's resumed epoch is not a rung record
        ["a", "b"],  # rung 1
    ]


def test_a_stopped_trial_replaying_from_scratch_runs_up_to_its_decision_then_stops():
    # Resumed with no checkpoint Tune knows of, the trial replays its epochs from 1: those before the stop go
    # through (they are already in the rungs), the one it was stopped at ends it again.
    scheduler = asha()
    a, b = trial("a"), trial("b")
    for epoch, ap in ((1, 0.5), (2, 0.9)):
        report(scheduler, a, epoch, ap)
    assert report(scheduler, b, 1, 0.6) == CONTINUE
    assert report(scheduler, b, 2, 0.1) == STOP
    rungs = scheduler.state()["strata"]
    assert report(scheduler, b, 1, 0.6) == CONTINUE
    assert report(scheduler, b, 2, 0.1) == STOP
    assert scheduler.state()["strata"] == rungs and scheduler.decisions()["b"].epoch == 2


def test_a_trial_reaching_max_epochs_is_not_a_stop_on_record():
    scheduler = asha(max_t=2)
    a, b = trial("a"), trial("b")
    report(scheduler, a, 1, 0.5)
    report(scheduler, a, 2, 0.9)
    report(scheduler, b, 1, 0.6)
    assert report(scheduler, b, 2, 0.1) == STOP  # max_t: it ran its course
    scheduler.on_trial_complete(None, b, {"epoch": 2, "AP": 0.1})
    assert scheduler.decisions() == {}


# ------------------------------------------------------------------------------------------------ the state


def test_state_is_json_and_a_restored_copy_decides_the_same(tmp_path):
    path = tmp_path / "asha-state.json"
    scheduler = asha(path, stratify_by="backbone.freeze", rung_metric="best")
    frozen_at_start = pickle.dumps(scheduler)  # what Tune keeps in its experiment state, and restores
    trials = [trial(f"t{i}", freeze) for i, freeze in enumerate(["frozen", "finetune"] * 3)]
    for i, t in enumerate(trials[:4]):
        scheduler.on_trial_add(None, t)
        report(scheduler, t, 1, 0.1 * (i + 1))
    saved = json.loads(path.read_text())
    assert saved["format"] == "frost.asha/2" and set(saved["strata"]) == {"frozen", "finetune"}

    restored = pickle.loads(frozen_at_start)
    for t in trials[4:]:
        restored.on_trial_add(None, t)
        scheduler.on_trial_add(None, t)
    assert [report(restored, t, 1, 0.25) for t in trials[4:]] == [
        report(scheduler, t, 1, 0.25) for t in trials[4:]
    ]
    assert restored.state() == scheduler.state()
    # t5 (0.25) is below finetune's median {0.2, 0.4}: a restored copy that forgot the rungs would pass it
    assert read_decisions(path) == scheduler.decisions() and set(read_decisions(path)) == {"t5"}


class _Planted:
    """Unpickling this writes a marker file: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.mark.parametrize("content", ["pickle", "garbage", "foreign json"])
def test_a_planted_state_file_is_refused_and_never_executed(tmp_path, content):
    path, marker = tmp_path / "asha-state.json", tmp_path / "marker"
    data = {
        "pickle": pickle.dumps({"_brackets": _Planted(marker)}),
        "garbage": bytes(range(256)),
        "foreign json": json.dumps({"_brackets": [], "format": "other"}).encode(),
    }[content]
    path.write_bytes(data)
    scheduler = pickle.loads(pickle.dumps(asha(path)))  # as after Tuner.restore
    refused = re.escape("refusing to use it (nothing in it is run). Remove the file")
    with pytest.raises(FrostError, match=f"{re.escape(str(path))}.*{refused}"):
        scheduler.on_trial_add(None, trial("a"))
    assert not marker.exists()
    assert read_decisions(path) == {}  # status views read past it


def test_a_state_of_the_previous_format_is_refused_with_the_clear_error(tmp_path):
    # frost.asha/1 kept rungs per trial: read as per-configuration records they would judge wrongly.
    path = tmp_path / "asha-state.json"
    old = asha(path).state() | {"format": "frost.asha/1"}
    path.write_text(json.dumps(old))
    with pytest.raises(
        FrostError, match=r"not a frost ASHA state \(frost.asha/2 JSON\) \(its format is 'frost.asha/1'\)"
    ):
        asha(path).on_trial_add(None, trial("a"))
    assert read_decisions(path) == {}


def test_a_state_of_other_rungs_is_refused(tmp_path):
    path = tmp_path / "asha-state.json"
    first = asha(path)
    first.on_trial_add(None, trial("a"))
    with pytest.raises(FrostError, match="rungs"):
        asha(path, max_t=8).on_trial_add(None, trial("b"))


def test_recorded_cutoff_is_the_percentile_of_the_rung_before_the_trial():
    scheduler = asha(reduction_factor=3, max_t=3)
    values = [0.5, 0.1, 0.4, 0.3, 0.2, 0.35]
    for i, value in enumerate(values):
        report(scheduler, trial(f"t{i}"), 1, value)
    for trial_id, decision in scheduler.decisions().items():
        before = values[: int(trial_id[1:])]
        assert decision.cutoff == np.nanpercentile(before, (1 - 1 / 3) * 100)
        assert decision.value < decision.cutoff


# ------------------------------------------------------------------------------------------------ the spec


def spec(**scheduler) -> dict:
    return {
        "name": "s",
        "trial": {"train": {"epochs": 4}},
        "search": {
            "backbone.freeze": {"grid": ["frozen", "finetune"]},
            "optim.lr": {"uniform": [0.01, 0.02]},
        },
        "scheduler": {"type": "asha", **scheduler},
    }


def test_stratify_by_must_be_a_searched_grid_or_choice(tmp_path, capsys):
    ok = SweepSpec.model_validate(spec(stratify_by="backbone.freeze", rung_metric="ema"))
    assert isinstance(ok.scheduler, AshaSpec) and ok.scheduler.stratify_by == "backbone.freeze"
    scheduler = build_scheduler(ok)
    assert (
        isinstance(scheduler, PersistentASHA)
        and scheduler.stratum_of({"backbone.freeze": "finetune"}) == "finetune"
    )
    for path, message in [
        (
            "neck.fpn_channels",
            "scheduler.stratify_by: 'neck.fpn_channels' is not searched (searched: backbone.freeze",
        ),
        (
            "optim.lr",
            "scheduler.stratify_by: search.optim.lr is a uniform sampler; strata need a grid or choice",
        ),
    ]:
        file = tmp_path / "s.yaml"
        file.write_text(json.dumps(spec(stratify_by=path)))
        assert main(["validate", str(file)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_validate_warns_once_when_asha_searches_freeze_unstratified(tmp_path, capsys):
    file = tmp_path / "s.yaml"
    file.write_text(json.dumps(spec()))
    assert main(["validate", str(file)]) == 0
    out, err = capsys.readouterr()
    assert "valid sweep 's'" in out
    warnings = err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(
        "frost: warning: scheduler: ASHA searches backbone.freeze"
    )
    assert main(["validate", str(file), "--set", "scheduler.stratify_by=backbone.freeze"]) == 0
    assert capsys.readouterr().err == ""


def test_set_stratify_by_and_the_catalog_stratifies():
    smoke = load_sweep_spec(CATALOG / "smoke.yaml", ["scheduler.stratify_by=backbone.freeze"])
    assert isinstance(smoke.scheduler, AshaSpec) and smoke.scheduler.stratify_by == "backbone.freeze"
    for path in sorted(CATALOG.glob("*.yaml")):
        loaded = load_sweep_spec(path)
        assert spec_warnings(loaded) == [], path
        if isinstance(loaded.scheduler, AshaSpec) and "backbone.freeze" in loaded.search:
            assert loaded.scheduler.stratify_by == "backbone.freeze", path


# ------------------------------------------------------------------------------------------------ replicates


def rtrial(trial_id: str, capacity: int, seed: int, freeze: str = "frozen") -> Trial:
    config = {"backbone.freeze": freeze, "neck.fpn_channels": capacity, "seed": seed}
    return Trial("scripted", config=config, trial_id=trial_id, stub=True)


def replicated(state: Path | None = None, **kwargs) -> PersistentASHA:
    return asha(state, replicates_by=["seed"], **kwargs)


def test_a_rung_holds_one_mean_per_configuration_and_judges_it_against_the_others():
    scheduler = replicated()
    a0, a1, b0, c0 = rtrial("a0", 32, 0), rtrial("a1", 32, 1), rtrial("b0", 64, 0), rtrial("c0", 128, 0)
    a = scheduler.configuration_of(a0)
    assert scheduler.configuration_of(a1) == a != scheduler.configuration_of(b0)
    assert report(scheduler, a0, 1, 0.30) == CONTINUE  # the first configuration at the rung passes
    assert report(scheduler, a1, 1, 0.10) == CONTINUE  # a replicate of a judged configuration: no 2nd verdict
    assert report(scheduler, b0, 1, 0.25) == CONTINUE  # cutoff: median of the others {A: (0.30 + 0.10) / 2}
    assert report(scheduler, c0, 1, 0.21) == STOP  # cutoff: median {A: 0.20, B: 0.25} = 0.225
    records = scheduler.rung_records()[1]
    assert list(records.values()) == pytest.approx([0.20, 0.25, 0.21])
    decision = scheduler.decisions()["c0"]
    assert (decision.value, decision.cutoff, decision.replicates, decision.trials) == (
        0.21,
        pytest.approx(0.225),
        {"c0": 0.21},
        ("c0",),
    )
    assert decision.tags()["frost.asha.mean"] == "0.21"
    assert json.loads(decision.tags()["frost.asha.replicates"]) == {"c0": 0.21}


def test_replicates_of_a_stopped_configuration_run_up_to_its_rung_epoch_then_stop():
    scheduler = replicated()
    x0, x1, y0, y1 = rtrial("x0", 32, 0), rtrial("x1", 32, 1), rtrial("y0", 64, 0), rtrial("y1", 64, 1)
    for t in (x0, x1, y0, y1):
        scheduler.on_trial_add(None, t)
    assert [report(scheduler, x0, e, ap) for e, ap in ((1, 0.1), (2, 0.5))] == [CONTINUE, CONTINUE]
    assert report(scheduler, y0, 1, 0.2) == CONTINUE  # 0.2 >= X's 0.1
    assert report(scheduler, y0, 2, 0.3) == STOP  # rung 2: 0.3 < X's 0.5
    # y1 was behind (not started): its epoch 1 goes on (a rung Y passed), at the stop's epoch it stops
    assert report(scheduler, y1, 1, 0.9) == CONTINUE
    assert report(scheduler, y1, 2, 0.9) == STOP
    assert report(scheduler, x1, 1, 0.0) == CONTINUE  # far below Y, but X was judged at rung 1 already
    assert [report(scheduler, x0, e, 0.5) for e in (3, 4)] == [CONTINUE, STOP]  # 4: ran its course
    decided = scheduler.decisions()
    assert set(decided) == {"y0", "y1"} and decided["y0"] == decided["y1"]
    assert (decided["y1"].rung, decided["y1"].epoch, decided["y1"].trials) == (2, 2, ("y0", "y1"))
    # y1's values entered Y's records: what other configurations' cutoffs see
    assert scheduler.rung_records()[1][scheduler.configuration_of(y0)] == pytest.approx(0.55)
    assert scheduler.rung_records()[2][scheduler.configuration_of(y0)] == pytest.approx(0.6)
    assert scheduler.rung_records()[1][scheduler.configuration_of(x0)] == pytest.approx(0.05)


@pytest.mark.parametrize("order_seed", range(6))
def test_no_configuration_ends_with_some_replicates_completed_and_others_stopped(order_seed):
    # 6 configurations x 3 seeds in two strata, results interleaved in a random order (concurrent trials).
    rng = np.random.default_rng(order_seed)
    scheduler = replicated(stratify_by="backbone.freeze")
    trials = [
        rtrial(f"{freeze}-{capacity}-{seed}", capacity, seed, freeze)
        for freeze in ("frozen", "finetune")
        for capacity in (32, 64, 128)
        for seed in range(3)
    ]
    for t in trials:
        scheduler.on_trial_add(None, t)
    epochs = {t.trial_id: 0 for t in trials}
    running = list(trials)
    while running:
        t = running[int(rng.integers(len(running)))]
        epochs[t.trial_id] += 1
        if report(scheduler, t, epochs[t.trial_id], float(rng.uniform())) == STOP:
            scheduler.on_trial_complete(None, t, {"epoch": epochs[t.trial_id], "AP": 0.0})
            running.remove(t)
    decided = scheduler.decisions()
    assert decided  # something was stopped, so the property is not vacuous
    for configuration in {scheduler.configuration_of(t) for t in trials}:
        ends = {
            (t.trial_id in decided, epochs[t.trial_id])
            for t in trials
            if scheduler.configuration_of(t) == configuration
        }
        assert len(ends) == 1, ends  # all completed (4 epochs) or all stopped at the same epoch


def test_without_replicate_paths_every_trial_is_its_own_configuration():
    scheduler = asha()
    a0, a1 = rtrial("a0", 32, 0), rtrial("a1", 32, 1)
    assert report(scheduler, a0, 1, 0.3) == CONTINUE
    assert report(scheduler, a1, 1, 0.1) == STOP  # seeds compete: today's behaviour
    assert scheduler.decisions()["a1"].replicates_by == ()


def test_replicate_state_round_trips_through_json_and_a_restored_copy_decides_the_same(tmp_path):
    path = tmp_path / "asha-state.json"
    scheduler = replicated(path, stratify_by="backbone.freeze")
    frozen_at_start = pickle.dumps(scheduler)  # what Tune restores: the empty scheduler of the start
    first = [rtrial("p0", 32, 0), rtrial("q0", 64, 0), rtrial("q1", 64, 1)]
    report(scheduler, first[0], 1, 0.5)
    assert report(scheduler, first[1], 1, 0.2) == STOP
    saved = json.loads(path.read_text())
    assert saved["replicates_by"] == ["seed"] and saved["format"] == "frost.asha/2"
    restored = pickle.loads(frozen_at_start)
    assert report(restored, first[2], 1, 0.9) == STOP  # q1 joins its configuration's stop, after a restart
    assert report(scheduler, first[2], 1, 0.9) == STOP
    assert restored.state() == scheduler.state()
    assert read_decisions(path)["q1"].trials == ("q0", "q1") and set(read_decisions(path)) == {"q0", "q1"}
    with pytest.raises(FrostError, match="another scheduler"):
        asha(path, stratify_by="backbone.freeze").on_trial_add(None, rtrial("r", 1, 0))  # no replicates


@pytest.mark.parametrize(
    ("stratum", "replicates_by", "replicates", "sentence"),
    [
        (
            "finetune",
            ("seed",),
            {"a": 0.040, "b": 0.044, "c": 0.042},
            "stopped at rung 2 (epoch 2) among finetune: AP 0.042 (mean of 3 seeds) < cutoff 0.050",
        ),
        (
            UNSTRATIFIED,
            ("data.synth.seed",),
            {"a": 0.041, "b": 0.043},
            "stopped at rung 2 (epoch 2): AP 0.042 (mean of 2 replicates) < cutoff 0.050",
        ),
        (
            "frozen",
            ("seed",),
            {"a": 0.042},
            "stopped at rung 2 (epoch 2) among frozen: AP 0.042 < cutoff 0.050",
        ),
        (UNSTRATIFIED, (), {"a": 0.042}, "stopped at rung 2 (epoch 2): AP 0.042 < cutoff 0.050"),
    ],
)
def test_describe_is_a_sentence(stratum, replicates_by, replicates, sentence):
    decision = Decision(
        trial_id="a",
        stratum=stratum,
        rung=2,
        epoch=2,
        metric="AP",
        rung_metric="last",
        value=0.042,
        cutoff=0.050,
        replicates_by=replicates_by,
        replicates=replicates,
        trials=tuple(replicates),
    )
    assert decision.describe() == sentence


def test_describe_a_min_mode_stop():
    decision = Decision("a", UNSTRATIFIED, 1, 1, "loss", "last", 2.5, 2.0)
    assert decision.describe() == "stopped at rung 1 (epoch 1): loss 2.500 > cutoff 2.000"


def replicate_spec(search: dict, **scheduler) -> dict:
    return {
        "name": "r",
        "trial": {"train": {"epochs": 4}},
        "search": search,
        "scheduler": {"type": "asha", "stratify_by": "backbone.freeze", **scheduler},
    }


FREEZE = {"backbone.freeze": {"grid": ["frozen", "finetune"]}}


def test_replicates_by_defaults_to_a_searched_seed_and_keeps_the_digest():
    with_seed = SweepSpec.model_validate(replicate_spec({**FREEZE, "seed": {"grid": [0, 1]}}))
    assert with_seed.scheduler.replicates_by == ["seed"]
    assert build_scheduler(with_seed)._replicates_by == ("seed",)  # type: ignore[attr-defined]
    explicit = SweepSpec.model_validate(
        replicate_spec({**FREEZE, "seed": {"grid": [0, 1]}}, replicates_by=["seed"])
    )
    none = SweepSpec.model_validate(replicate_spec({**FREEZE, "seed": {"grid": [0, 1]}}, replicates_by=[]))
    assert explicit.digest() == with_seed.digest() != none.digest()  # the default hashes as before it existed
    assert SweepSpec.model_validate(replicate_spec(FREEZE)).scheduler.replicates_by == []
    fifo = {**replicate_spec({**FREEZE, "data.synth.seed": {"grid": [1, 2]}}), "scheduler": {"type": "fifo"}}
    fifo["scheduler"]["replicates_by"] = ["data.synth.seed"]
    assert SweepSpec.model_validate(fifo).scheduler.replicates_by == [
        "data.synth.seed"
    ]  # accepted, no effect


@pytest.mark.parametrize(
    ("search", "replicates_by", "message"),
    [
        (FREEZE, ["seed"], "scheduler.replicates_by: 'seed' is not searched (searched: backbone.freeze)"),
        (
            {**FREEZE, "seed": {"grid": [0, 1]}},
            ["backbone.freeze"],
            "scheduler.replicates_by: 'backbone.freeze' is scheduler.stratify_by",
        ),
        (
            {**FREEZE, "seed,optim.lr": {"grid": [[0, 0.01], [1, 0.02]]}},
            ["seed"],
            "scheduler.replicates_by: seed shares the joint search key 'seed,optim.lr' with optim.lr",
        ),
    ],
)
def test_validate_refuses_replicates_by(tmp_path, capsys, search, replicates_by, message):
    file = tmp_path / "r.yaml"
    file.write_text(json.dumps(replicate_spec(search, replicates_by=replicates_by)))
    assert main(["validate", str(file)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_catalog_sweeps_that_search_seed_use_replicates():
    for path in sorted(CATALOG.glob("*.yaml")):
        loaded = load_sweep_spec(path)
        if isinstance(loaded.scheduler, AshaSpec):
            assert loaded.scheduler.replicates_by == (["seed"] if "seed" in loaded.search else []), path
