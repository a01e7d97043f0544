"""Loss against generations per document: the megadocs paper's one experiment, as rows.

A sweep holds one certified search per (recipe, generation count N); N = 0 is the real-only
baseline. Each search leaves its `search.json` (best point, loss, certified, at_bound, runs); this
module turns those into the table (`sweep.json`, `sweep.md`) with each row's data efficiency: the
real data the baseline recipe would need to reach the row's loss, D(loss) / D(baseline loss),
read off a data law L(D) = A / D^B + C. The law is fitted on real-only baselines trained on
fractions of the data when there are enough of them, else it is the infinite-compute paper's.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

from megadoc.analysis import scaling, search


@dataclasses.dataclass(frozen=True)
class DataLaw:
    law: scaling.PowerLaw
    source: str  # "fitted" (on real-only baselines at data fractions) | "published"
    points: tuple[tuple[float, float], ...] = ()  # (real tokens in billions, best loss) fitted on

    def efficiency(self, loss: float, baseline_loss: float) -> float | None:
        """D(loss) / D(baseline_loss); None where a loss is at or below the law's asymptote."""
        try:
            return scaling.data_efficiency(loss, baseline_loss, self.law)
        except ValueError:
            return None

    def as_dict(self) -> dict:
        return {"source": self.source, "A": self.law.A, "B": self.law.B, "C": self.law.C,
                "points": [list(p) for p in self.points]}


def data_law(baselines: Sequence[tuple[float, float]]) -> DataLaw:
    """The law fitted on (real tokens in billions, best loss) of real-only baselines when there
    are at least 3 (a power law with an asymptote has 3 parameters); else the published law."""
    if len(baselines) < 3:
        return DataLaw(scaling.REFERENCE_DATA_LAW, "published")
    tokens, losses = zip(*sorted(baselines))
    return DataLaw(scaling.fit_power_law(tokens, losses), "fitted", tuple(sorted(baselines)))


def start_point(grid: search.Grid, previous: Mapping) -> dict:
    """`previous` (another grid's optimum) moved onto `grid`: each axis to the nearest value (in
    log space: the grids are geometric), an axis it lacks to the grid's middle value."""
    point = {}
    for name, values in grid.axes:
        if name not in previous:
            point[name] = values[len(values) // 2]
            continue
        def distance(v, target=float(previous[name])):
            if v > 0 and target > 0:
                return abs(math.log(v) - math.log(target))
            return abs(v - target) + 1e9  # zero is farther than any positive value
        point[name] = min(values, key=distance)
    return point


def row(recipe: str, generations: int, found: Mapping, law: DataLaw,
        baseline_loss: float | None) -> dict:
    """One table row from a search.json summary."""
    loss = found["best_loss"]
    efficiency = None
    if baseline_loss is not None and loss is not None and math.isfinite(loss):
        efficiency = law.efficiency(loss, baseline_loss)
    return {"recipe": recipe, "generations": generations, "loss": loss, "best": found["best"],
            "certified": found["certified"], "at_bound": found["at_bound"],
            "data_efficiency": efficiency, "data_law": law.source, "runs": found["runs"]}


def markdown(rows: Sequence[Mapping], law: DataLaw) -> str:
    where = ("fitted on real-only baselines at fractions of the data"
             if law.source == "fitted" else "the published law of Kim et al. 2025, "
             "valid for their data and validation set only")
    lines = [f"Data efficiency = D(loss) / D(real-only loss) with L(D) = {law.law.A:.4g} / "
             f"D^{law.law.B:.4g} + {law.law.C:.4g} (D in billions of real tokens), {where}.", "",
             "| recipe | generations | loss | data efficiency | best point | certified | runs |",
             "|---|---:|---:|---:|---|---|---:|"]
    for r in rows:
        best = ", ".join(f"{k}={v}" for k, v in r["best"].items())
        verdict = "yes" if r["certified"] else f"no (at bound: {', '.join(r['at_bound'])})"
        efficiency = "undefined" if r["data_efficiency"] is None else f"{r['data_efficiency']:.3f}x"
        lines.append(f"| {r['recipe']} | {r['generations']} | {r['loss']:.4f} | {efficiency} | "
                     f"{best} | {verdict} | {r['runs']} |")
    return "\n".join(lines) + "\n"
