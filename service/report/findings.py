"""The numbers a report compares, and the finding paragraph written from them.

Rules (docs/report.md; the statistics are service/report/stats.py):
- A cell is the mean ± sample standard deviation over the seeds of one (capacity, freeze mode) that ran to
  the end; n is their count. Stopped, errored or running trials are never in a cell.
- A delta is mode − fine-tuned of the means with its 95% interval: paired over the seeds when both sides ran
  the same seeds, Welch's otherwise. `better` / `worse` when the interval excludes 0, `tie` when it covers 0,
  `one seed` (no interval) with n < 2 on either side. `spread`, sqrt(std_a² + std_b²), stays as information.
- The finding leads with the sweep's own metric and AP_r (rare classes: the paper's claim), calls the other AP
  metrics secondary, states the capacity trend of each lead metric, and counts the comparisons made.
- Every claim in the finding carries its n.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from service.report.stats import (
    BETTER,
    ONE_SEED,
    TIE,
    WORSE,
    Difference,
    Trend,
    difference,
    trend,
    trend_sentence,
)

BASELINE = "finetune"
UNJUDGED = ONE_SEED  # the verdict without an interval
LEVEL_PERCENT = 95


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # None with one value
    n: int

    def text(self, digits: int = 3) -> str:
        spread = f" ± {self.std:.{digits}f}" if self.std is not None else ""
        return f"{self.mean:.{digits}f}{spread} (n={self.n})"


def stat_of(values: list[float]) -> Stat | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(mean=statistics.fmean(values), std=std, n=len(values))


@dataclass(frozen=True)
class Delta:
    """`freeze` − BASELINE on `metric` at one capacity, with its interval (service/report/stats.py)."""

    capacity: str
    label: str
    freeze: str
    metric: str
    diff: Difference

    @property
    def value(self) -> float:
        return self.diff.value

    @property
    def n(self) -> int:
        return self.diff.n_a

    @property
    def n_baseline(self) -> int:
        return self.diff.n_b

    @property
    def verdict(self) -> str:
        """better, worse, tie, one seed (for `freeze`, higher is better on AP metrics)."""
        return self.diff.verdict

    @property
    def spread(self) -> float | None:
        """The former tie threshold sqrt(std_a² + std_b²): the spread of one draw of each, not an interval."""
        if self.diff.sd_a is None or self.diff.sd_b is None:
            return None
        return math.hypot(self.diff.sd_a, self.diff.sd_b)

    def interval_text(self) -> str:
        """`+0.010 [-0.012, +0.032]`, or the value alone without an interval."""
        low, high = self.diff.ci_low, self.diff.ci_high
        bounds = f" [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else ""
        return f"{self.value:+.3f}{bounds}"

    def how(self) -> str:
        """How the interval was made, with its n."""
        if self.diff.paired:
            return f"paired over {self.diff.n_pairs} seeds"
        if self.verdict == ONE_SEED:
            return f"n={self.n}/{self.n_baseline}"
        return f"Welch, n={self.n}/{self.n_baseline}"

    def resolution(self) -> str:
        """For a tie: what this sweep could resolve, and the seeds that would resolve the observed value."""
        half = self.diff.half_width
        if self.verdict != TIE or half is None:
            return ""
        seeds = self.diff.seeds_needed()
        need = (
            f"~{seeds} seeds per side would resolve {self.value:+.3f}"
            if seeds is not None
            else "no number of seeds would resolve it"
        )
        return f"resolves ±{half:.3f}; {need}"

    def to_json(self) -> dict[str, object]:
        return {
            "capacity": self.capacity,
            "label": self.label,
            "freeze": self.freeze,
            "baseline": BASELINE,
            "metric": self.metric,
            "delta": self.value,
            "spread": self.spread,
            "n": self.n,
            "n_baseline": self.n_baseline,
            "verdict": self.verdict,
            "ci_low": self.diff.ci_low,
            "ci_high": self.diff.ci_high,
            "paired": self.diff.paired,
            "n_pairs": self.diff.n_pairs,
        }


def compare(
    capacity: str, label: str, freeze: str, metric: str, a: dict[str, float], b: dict[str, float]
) -> Delta:
    """`a` (mode `freeze`, value by seed) against `b` (fine-tuned, value by seed)."""
    return Delta(capacity, label, freeze, metric, difference(a, b))


def _claim(delta: Delta, a: Stat, b: Stat) -> str:
    both = f"{a.text()} vs fine-tuned {b.text()}"
    interval = f"Δ {delta.interval_text()}, {delta.how()}"
    if delta.verdict == TIE:
        return f"{delta.metric} {both}: a tie ({interval}; {delta.resolution()})"
    if delta.verdict == ONE_SEED:
        return f"{delta.metric} {both}: difference {delta.value:+.3f}, not judged (one seed, no interval)"
    word = "beats" if delta.verdict == BETTER else "trails"
    return f"{delta.metric} {both}: {delta.freeze} {word} fine-tuned by {abs(delta.value):.3f} ({interval})"


@dataclass(frozen=True)
class Comparison:
    """One capacity, one mode against fine-tuned: the stats and deltas the finding speaks of."""

    capacity: str
    label: str
    freeze: str
    deltas: dict[str, Delta]  # by metric
    stats: dict[str, tuple[Stat, Stat]]  # by metric: (mode, fine-tuned)
    step_time: tuple[Stat, Stat] | None = None
    memory: tuple[Stat, Stat] | None = None
    share: tuple[Stat, Stat] | None = None


@dataclass(frozen=True)
class CapacityTrend:
    """Δ (`freeze` − fine-tuned) on `metric` across the capacities, lightest first (service/report/stats.py)."""

    freeze: str
    metric: str
    trend: Trend
    start_verdict: str  # the lightest capacity's delta verdict
    end_verdict: str  # the heaviest's

    def sentence(self) -> str | None:
        return trend_sentence(self.freeze, self.metric, self.trend, self.start_verdict, self.end_verdict)

    def to_json(self) -> dict[str, Any]:
        t = self.trend
        return {
            "freeze": self.freeze,
            "metric": self.metric,
            "slope": t.slope,
            "ci_low": t.ci_low,
            "ci_high": t.ci_high,
            "verdict": t.verdict,
            "from_delta": t.from_delta,
            "to_delta": t.to_delta,
        }


def capacity_trends(deltas: list[Delta], capacities: list[str]) -> list[CapacityTrend]:
    """One trend per (mode, metric) with deltas, the capacities in `capacities` order."""
    rank = {c: i for i, c in enumerate(capacities)}
    keys = dict.fromkeys((d.freeze, d.metric) for d in deltas)
    trends = []
    for freeze, metric in keys:
        ordered = sorted(
            (d for d in deltas if d.freeze == freeze and d.metric == metric), key=lambda d: rank[d.capacity]
        )
        result = trend([(d.value, d.diff.se) for d in ordered])
        trends.append(CapacityTrend(freeze, metric, result, ordered[0].verdict, ordered[-1].verdict))
    return trends


def _ratio(what: str, pair: tuple[Stat, Stat] | None, freeze: str) -> str | None:
    if pair is None or pair[1].mean == 0:
        return None
    a, b = pair
    return f"{what} {freeze}/fine-tuned {a.mean / b.mean:.2f} (n={a.n}/{b.n})"


def lead_metrics(sweep_metric: str) -> tuple[str, ...]:
    """The sweep's own metric (when it is an AP metric; AP otherwise) and AP_r, the rare classes."""
    from service.report.rows import AP_METRICS

    lead = sweep_metric if sweep_metric in AP_METRICS else "AP"
    return (lead,) if lead == "AP_r" else (lead, "AP_r")


def _secondary(comparisons: list[Comparison], leads: tuple[str, ...]) -> str | None:
    verdicts = Counter(
        d.verdict for c in comparisons for metric, d in c.deltas.items() if metric not in leads
    )
    metrics = sorted({m for c in comparisons for m in c.deltas if m not in leads})
    if not metrics:
        return None
    counts = ", ".join(f"{verdicts[v]} {v}" for v in (BETTER, TIE, WORSE, ONE_SEED) if verdicts[v])
    return f"Secondary metrics ({', '.join(metrics)}), every mode and capacity: {counts} (the tables)."


def multiplicity(deltas: list[Delta]) -> str:
    """How many intervals the tables judge, and how many would exclude 0 by chance alone."""
    judged = sum(d.verdict != ONE_SEED for d in deltas)
    if not judged:
        return "No comparison has 2 seeds on each side: no difference is judged."
    chance = judged * (100 - LEVEL_PERCENT) / 100
    return (
        f"The tables make {judged} comparisons at {LEVEL_PERCENT}% each, uncorrected: about {chance:.1f} "
        "would cross by chance alone."
    )


def finding(
    comparisons: list[Comparison],
    stopped: int = 0,
    running: int = 0,
    leads: tuple[str, ...] = ("AP", "AP_r"),
    trends: list[CapacityTrend] | None = None,
    deltas: list[Delta] | None = None,
) -> str:
    """The paragraph: per capacity and mode, the lead metrics against fine-tuned; the secondary metrics in
    one count; the trend of each lead metric; resource ratios; the number of comparisons."""
    if not comparisons:
        text = "No capacity has both a fine-tuned and another freeze mode among its finished trials: nothing to compare."
    else:
        named = " and ".join(f"{m} (the sweep's metric)" if i == 0 else m for i, m in enumerate(leads))
        sentences = [f"Lead metrics: {named}."]
        for c in comparisons:
            share = f", trainable share {c.share[0].mean:.0%} vs {c.share[1].mean:.0%}" if c.share else ""
            claims = [_claim(c.deltas[m], *c.stats[m]) for m in leads if m in c.deltas and m in c.stats]
            if claims:
                sentences.append(
                    f"At {c.label or c.capacity} ({c.freeze}{share}): " + "; ".join(claims) + "."
                )
        secondary = _secondary(comparisons, leads)
        if secondary:
            sentences.append(secondary)
        for freeze in dict.fromkeys(c.freeze for c in comparisons):
            for t in trends or []:
                sentence = t.sentence() if t.freeze == freeze and t.metric in leads else None
                if sentence:
                    sentences.append(f"Capacity trend of {sentence}")
            ratios = [
                r
                for c in comparisons
                if c.freeze == freeze
                for r in (_ratio("step time", c.step_time, freeze), _ratio("peak memory", c.memory, freeze))
                if r
            ]
            if ratios:
                sentences.append(f"Resources, per capacity: {'; '.join(ratios)}.")
        sentences.append(multiplicity(deltas or [d for c in comparisons for d in c.deltas.values()]))
        text = " ".join(sentences)
    if stopped:
        text += f" {stopped} trial(s) stopped early are listed apart and not averaged."
    if running:
        text += (
            f" {running} trial(s) had not finished when this report was written: it covers the finished ones."
        )
    return text
