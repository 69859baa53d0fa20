"""The numbers a report compares, and the finding paragraph written from them.

Rules (docs/report.md):
- A cell is the mean ± sample standard deviation over the seeds of one (capacity, freeze mode) that ran to
  the end; n is their count. Stopped, errored or running trials are never in a cell.
- A delta is mode − fine-tuned of the means. Its spread is sqrt(std_a² + std_b²), the standard deviation of
  the difference of one draw of each. |delta| <= spread is a tie; with n < 2 on either side the spread is
  unknown and the delta is not judged ("one seed").
- Every claim in the finding carries its n.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

BASELINE = "finetune"
TIE, BETTER, WORSE, UNJUDGED = "tie", "better", "worse", "one seed"


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
    """`freeze` − BASELINE on `metric` at one capacity."""

    capacity: str
    label: str
    freeze: str
    metric: str
    value: float
    spread: float | None
    n: int
    n_baseline: int
    verdict: str  # better, worse, tie, one seed (for `freeze`, higher is better on AP metrics)

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
        }


def compare(capacity: str, label: str, freeze: str, metric: str, a: Stat, b: Stat) -> Delta:
    """`a` (mode `freeze`) against `b` (fine-tuned): the delta and whether it is beyond the seed spread."""
    value = a.mean - b.mean
    if a.std is None or b.std is None:
        spread, verdict = None, UNJUDGED
    else:
        spread = math.hypot(a.std, b.std)
        verdict = TIE if abs(value) <= spread else (BETTER if value > 0 else WORSE)
    return Delta(capacity, label, freeze, metric, value, spread, a.n, b.n, verdict)


def _claim(delta: Delta, a: Stat, b: Stat) -> str:
    both = f"{a.text()} vs fine-tuned {b.text()}"
    if delta.verdict == TIE:
        return f"{delta.metric} {both}: a tie (difference {delta.value:+.3f} within the seed spread {delta.spread:.3f})"
    if delta.verdict == UNJUDGED:
        return f"{delta.metric} {both}: difference {delta.value:+.3f}, not judged (one seed, no spread)"
    word = "beats" if delta.verdict == BETTER else "trails"
    return (
        f"{delta.metric} {both}: {delta.freeze} {word} fine-tuned by {abs(delta.value):.3f} "
        f"(beyond the seed spread {delta.spread:.3f})"
    )


@dataclass(frozen=True)
class Comparison:
    """One capacity, one mode against fine-tuned: the stats and deltas the finding speaks of."""

    delta_ap: Delta
    delta_ap_r: Delta | None
    ap: tuple[Stat, Stat]
    ap_r: tuple[Stat, Stat] | None
    step_time: tuple[Stat, Stat] | None
    memory: tuple[Stat, Stat] | None
    share: tuple[Stat, Stat] | None


def _trend(comparisons: list[Comparison], freeze: str) -> str | None:
    """Whether the delta grows with capacity (capacities in order, first vs last)."""
    ordered = [c for c in comparisons if c.delta_ap.freeze == freeze]
    if len(ordered) < 2:
        return None
    first, last = ordered[0].delta_ap, ordered[-1].delta_ap
    direction = "grows" if last.value > first.value else "shrinks"
    judged = [c.delta_ap for c in ordered]
    ties = all(d.verdict == TIE for d in judged)
    tail = " (every step a tie within seed spread)" if ties else ""
    return (
        f"From the lightest to the heaviest capacity, the {freeze} − fine-tuned AP delta {direction} "
        f"from {first.value:+.3f} (n={first.n}/{first.n_baseline}) to {last.value:+.3f} "
        f"(n={last.n}/{last.n_baseline}){tail}."
    )


def _ratio(what: str, pair: tuple[Stat, Stat] | None, freeze: str) -> str | None:
    if pair is None or pair[1].mean == 0:
        return None
    a, b = pair
    return f"{what} {freeze}/fine-tuned {a.mean / b.mean:.2f} (n={a.n}/{b.n})"


def finding(comparisons: list[Comparison], stopped: int = 0, running: int = 0) -> str:
    """The paragraph: per capacity and mode, AP and AP_r against fine-tuned; the trend; resource ratios."""
    if not comparisons:
        text = "No capacity has both a fine-tuned and another freeze mode among its finished trials: nothing to compare."
    else:
        sentences = []
        for c in comparisons:
            d = c.delta_ap
            share = f", trainable share {c.share[0].mean:.0%} vs {c.share[1].mean:.0%}" if c.share else ""
            claims = [_claim(d, *c.ap)]
            if c.delta_ap_r is not None and c.ap_r is not None:
                claims.append(_claim(c.delta_ap_r, *c.ap_r))
            sentences.append(f"At {d.label or d.capacity} ({d.freeze}{share}): " + "; ".join(claims) + ".")
        for freeze in dict.fromkeys(c.delta_ap.freeze for c in comparisons):
            trend = _trend(comparisons, freeze)
            if trend:
                sentences.append(trend)
            ratios = [
                r
                for c in comparisons
                if c.delta_ap.freeze == freeze
                for r in (_ratio("step time", c.step_time, freeze), _ratio("peak memory", c.memory, freeze))
                if r
            ]
            if ratios:
                sentences.append(f"Resources, per capacity: {'; '.join(ratios)}.")
        text = " ".join(sentences)
    if stopped:
        text += f" {stopped} trial(s) stopped early are listed apart and not averaged."
    if running:
        text += (
            f" {running} trial(s) had not finished when this report was written: it covers the finished ones."
        )
    return text
