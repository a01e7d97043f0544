"""Figure 7's analysis (the megadocs paper, Appendix B.3): which hyper-parameters a method's
ensemble members take under a named rule, the power-law fit of ensemble loss against member
count, and the table that compares methods by its asymptote. The members' training and scoring
are megadoc.pipelines.ensemble_scaling's.

Rules (`RULES`):
- "b3": the megadocs paper's Appendix B.3. A synthetic method's members take the best
  single-model point of simple rephrasing with its epochs doubled (stitched, latent and
  self-distillation use simple rephrasing's ensemble settings, so methods are compared at one
  setting); real-only members take Kim et al.'s rule below.
- "kim": "Pre-training under infinite compute"'s rule for ensemble members: each method's own
  best single-model point with its epochs doubled and its weight decay halved (self-distillation
  has no published point: give it explicitly).
- "explicit": the `epochs`, `lr`, `weight_decay` (and, for synthetic streams, `mix`) given.
The single-model points are `megadoc.train.published`'s.
"""
from __future__ import annotations

import dataclasses
import math

from megadoc.analysis import scaling
from megadoc.train import published

RULES = ("b3", "kim", "explicit")
REAL = "real"
SYNTHETIC_METHODS = ("simple", "stitched", "latent", "self_distillation")
# B.3: these use simple rephrasing's ensemble settings. Self-distillation has no published
# single-model point; megadoc treats it as B.3 treats the megadoc methods.
USE_SIMPLE_SETTINGS = ("stitched", "latent", "self_distillation")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One method's ensemble: its members' point and runs, and its scores for k = 1..K."""
    method: str
    point: published.Point
    workdirs: tuple[str, ...]
    losses: dict  # val name -> (loss of the first k members for k = 1..K)
    laws: dict  # val name -> scaling.PowerLaw fitted on those (None below 3 members)


def member_point(rule: str, method: str, preset: str, generations: int,
                 explicit: published.Point | None = None) -> published.Point:
    """The hyper-parameters of `method`'s ensemble members under `rule`."""
    if rule == "explicit":
        if explicit is None:
            raise ValueError("rule explicit needs the point (epochs, lr, weight_decay, mix)")
        return dataclasses.replace(explicit, mix=0.0) if method == REAL else explicit
    if method == REAL or rule == "kim":
        if method == "self_distillation":
            raise ValueError("rule kim: self-distillation has no published single-model point; "
                             "use rule b3 or explicit")
        best = published.point(None if method == REAL else method, generations, preset)
        return dataclasses.replace(best, epochs=2 * best.epochs,
                                   weight_decay=best.weight_decay / 2)
    if rule == "b3":
        source = "simple" if method in USE_SIMPLE_SETTINGS else method
        best = published.point(source, generations, preset)
        return dataclasses.replace(best, epochs=2 * best.epochs)
    raise ValueError(f"rule {rule!r}: expected one of {RULES}")


def fit(losses) -> scaling.PowerLaw | None:
    """A / k^B + C through (k, loss) for k = 1..K; None with fewer than 3 members."""
    return scaling.fit_power_law(range(1, len(losses) + 1), losses) if len(losses) >= 3 else None


def markdown(arms, val: str) -> str:
    """The table of one validation set: each arm's point, 1- and K-member loss and its fit."""
    lines = [f"Ensembles on {val}: loss of k members (logits averaged) and the fit "
             f"L(k) = A / k^B + C; C is the ensemble's asymptote.", "",
             "| method | epochs | lr | weight decay | mix | 1 member | K members | K | "
             "asymptote C | B |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm in arms:
        p, losses, law = arm.point, arm.losses[val], arm.laws[val]
        if law is None:
            asymptote, exponent = "n/a (K < 3)", "n/a"
        else:
            stderr = "n/a" if math.isnan(law.C_stderr) else f"{law.C_stderr:.4f}"
            asymptote, exponent = f"{law.C:.4f} ± {stderr}", f"{law.B:.3f}"
        lines.append(f"| {arm.method} | {p.epochs} | {p.lr:g} | {p.weight_decay:g} | {p.mix:g} | "
                     f"{losses[0]:.4f} | {losses[-1]:.4f} | {len(losses)} | {asymptote} | "
                     f"{exponent} |")
    return "\n".join(lines) + "\n"


def law_dict(law: scaling.PowerLaw | None) -> dict | None:
    """A fit as JSON (an undefined standard error as null)."""
    if law is None:
        return None
    return {"A": law.A, "B": law.B, "C": law.C,
            "C_stderr": None if math.isnan(law.C_stderr) else law.C_stderr}
