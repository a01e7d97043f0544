"""Ensembles of the best points, per method (the megadocs paper's Figure 7, Appendix B.3).

For each method (real-only and each synthetic stream: simple, stitched, latent,
self-distillation) K members are trained, member i with seed `seed + i` (its init and data
order), at the hyper-parameters a named rule gives; the ensemble of the first k members
(logits averaged) is scored for k = 1..K, and loss against k is fitted to A / k^B + C, whose C is
the method's ensemble asymptote. Figure 7's question is whether a method lowers that asymptote
(synthetic data composes with ensembling) or only the single model's loss.

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

Everything resumes: members are `megadoc.train.loop.train` runs in their own workdirs
(<workdir>/<method>/<point>/member_<i>), trained in this process; a finished member is not
trained again and an interrupted one resumes from its checkpoint. Every ensemble score is kept in
<workdir>/evaluations.jsonl under its members' parameter checksums, so a rerun scores nothing
twice. Writes <workdir>/ensemble_scaling.json, ensemble_scaling.md and
ensemble_scaling_<val>.png (loss against members, one fitted curve per method).
"""
from __future__ import annotations

import dataclasses
import json
import math

import jax

from megadoc import compile_cache, fs
from megadoc.analysis import ensemble, plots, scaling, search
from megadoc.data import store as store_lib
from megadoc.data import validation
from megadoc.models import llama
from megadoc.train import config as config_lib
from megadoc.train import loop, published

RULES = ("b3", "kim", "explicit")
REAL = "real"
SYNTHETIC_METHODS = ("simple", "stitched", "latent", "self_distillation")
# B.3: these use simple rephrasing's ensemble settings. Self-distillation has no published
# single-model point; megadoc treats it as B.3 treats the megadoc methods.
USE_SIMPLE_SETTINGS = ("stitched", "latent", "self_distillation")


@dataclasses.dataclass(frozen=True)
class EnsembleScalingConfig:
    """Ensembles of K members for each method, at the hyper-parameters of a named rule."""
    workdir: str
    """output directory (local or gs://): member runs, evaluations, table and figure"""
    real: str
    """window store of the real documents (every member trains on it)"""
    synthetic: tuple[tuple[str, str], ...] = ()
    """METHOD=STORE for each synthetic arm; METHOD is simple | stitched | latent |
    self_distillation"""
    real_only: bool = True
    """also ensemble real-only members (the comparison every method is read against)"""
    val: tuple[tuple[str, str], ...] = ()
    """validation sets, NAME=PATH (window store or documents, as a training run takes them)"""
    members: int = 8
    """K: the most members of each ensemble; ensembles of 1..K members are scored"""
    rule: str = "b3"
    """where members' hyper-parameters come from: b3 | kim | explicit"""
    generations: int = 32
    """generations per document of the synthetic stores (selects the published points)"""
    preset: str = "300m"
    """training preset of every member (model size, batch, microbatches)"""
    epochs: int | None = None
    """rule explicit: passes over the real store (over the synthetic one at mix 1)"""
    lr: float | None = None
    """rule explicit: peak learning rate"""
    weight_decay: float | None = None
    """rule explicit: weight decay"""
    mix: float | None = None
    """rule explicit: synthetic fraction of each batch of the synthetic arms"""
    seed: int = 0
    """seed of member 0 (init and data order); member i gets seed + i"""
    mesh: tuple[int, int, int] = (1, -1, 1)
    """mesh shape data,fsdp,tensor of every member's training and of the evaluation"""
    eval_batch_size: int = 8
    """windows per evaluation batch"""
    average: str = "logits"
    """how members' outputs are combined: logits | probs"""
    checkpoint_every_steps: int = 200
    """member checkpoints every N steps (a killed member resumes from the newest)"""

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule {self.rule!r}: expected one of {RULES}")
        if self.average not in ensemble.AVERAGES:
            raise ValueError(f"average {self.average!r}: expected one of {ensemble.AVERAGES}")
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        for method, _ in self.synthetic:
            if method not in SYNTHETIC_METHODS:
                raise ValueError(f"synthetic arm {method!r}: expected one of {SYNTHETIC_METHODS}")
        if len({m for m, _ in self.synthetic}) != len(self.synthetic):
            raise ValueError(f"synthetic arms repeat a method: {[m for m, _ in self.synthetic]}")
        if not self.synthetic and not self.real_only:
            raise ValueError("no arm to ensemble: give --synthetic=METHOD=STORE or --real_only")
        if not self.val:
            raise ValueError("ensembles are scored on validation sets: give --val=NAME=PATH")

    def arms(self) -> list[tuple[str, str | None]]:
        """(method, synthetic store or None) of each arm, real-only first."""
        return [(REAL, None)] * self.real_only + [(m, s) for m, s in self.synthetic]


class Preempted(Exception):
    """A member's run saved and stopped on SIGTERM; rerunning resumes it."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """One method's ensemble: its members' point and runs, and its scores for k = 1..K."""
    method: str
    point: published.Point
    workdirs: tuple[str, ...]
    losses: dict  # val name -> (loss of the first k members for k = 1..K)
    laws: dict  # val name -> scaling.PowerLaw fitted on those (None below 3 members)


@dataclasses.dataclass(frozen=True)
class EnsembleScalingResult:
    arms: tuple[Arm, ...]
    table: str  # ensemble_scaling.md's markdown
    new_members: int  # members trained (or resumed) by this call


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


def explicit_point(cfg: EnsembleScalingConfig) -> published.Point | None:
    if cfg.rule != "explicit":
        return None
    mix = cfg.mix or 0.0
    if (cfg.epochs is None or cfg.epochs < 1 or cfg.lr is None or cfg.lr <= 0
            or cfg.weight_decay is None or cfg.weight_decay < 0):
        raise ValueError(f"rule explicit needs --epochs >= 1, --lr > 0 and --weight_decay >= 0; "
                         f"got {cfg.epochs}, {cfg.lr}, {cfg.weight_decay}")
    if cfg.synthetic and not 0 < mix <= 1:
        raise ValueError(f"rule explicit with synthetic arms needs --mix in (0, 1], got {cfg.mix}")
    return published.Point(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, mix=mix)


def member_configs(cfg: EnsembleScalingConfig, method: str, synthetic: str | None,
                   point: published.Point) -> list[config_lib.TrainConfig]:
    """The K members' training runs: one point, seeds seed..seed+K-1."""
    preset = config_lib.preset(cfg.preset)
    real = store_lib.open(cfg.real)
    model = dataclasses.replace(llama.preset(preset.model),
                                vocab_size=int(real.metadata["vocab_size"]),
                                max_seq_len=real.seq_len, remat=preset.remat)
    root = fs.join(cfg.workdir, method, search.point_name(point.as_flags()))
    return [config_lib.TrainConfig(
        model=model,
        data=config_lib.DataConfig(real=cfg.real, synthetic=synthetic if point.mix else None,
                                   mix=point.mix, epochs=point.epochs, seed=cfg.seed + i,
                                   global_batch=preset.global_batch),
        optimizer=config_lib.OptimizerConfig(lr=point.lr, weight_decay=point.weight_decay,
                                             warmup_frac=preset.warmup_frac),
        workdir=fs.join(root, f"member_{i}"), microbatches=preset.microbatches, mesh=cfg.mesh,
        checkpoint_every_steps=cfg.checkpoint_every_steps, checkpoint_every_minutes=0)
        for i in range(cfg.members)]


def train_member(train_cfg: config_lib.TrainConfig) -> tuple[dict, bool]:
    """(summary, whether this call trained) of one member. A finished member is left alone
    (checked against its summary's config, without restoring its checkpoint)."""
    path = fs.join(train_cfg.workdir, "summary.json")
    if fs.exists(path):
        summary = json.loads(fs.read_text(path))
        current = config_lib.to_dict(train_cfg)
        changed = config_lib.differing_fields(
            {k: summary["config"].get(k) for k in current}, current)
        if changed:
            raise ValueError(f"{path}: this member finished with other settings "
                             f"({', '.join(changed)}); use another --workdir")
        return summary, False
    summary = loop.train(train_cfg)
    if summary["status"] != "finished":
        raise Preempted(f"{train_cfg.workdir}: member stopped at step {summary.get('step')} "
                        f"({summary['status']}); rerun to resume")
    return summary, True


class _Scores:
    """Ensemble losses kept in <workdir>/evaluations.jsonl, keyed by what they score."""

    def __init__(self, workdir: str):
        self.path = fs.join(workdir, "evaluations.jsonl")
        self.known = {}
        if fs.exists(self.path):
            for line in fs.read_text(self.path).splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.known[self._key(row["val"], row["members_sha256"], row["average"])] = \
                        row["loss"]

    @staticmethod
    def _key(val: str, shas, average: str) -> tuple:
        return val, tuple(shas), average

    def get(self, val: str, shas, average: str):
        return self.known.get(self._key(val, shas, average))

    def put(self, method: str, val: str, shas, average: str, loss: float) -> None:
        self.known[self._key(val, shas, average)] = loss
        fs.append_text(self.path, json.dumps({"method": method, "val": val, "k": len(shas),
                                              "members_sha256": list(shas),
                                              "average": average, "loss": loss}) + "\n")


def score_arm(cfg: EnsembleScalingConfig, method: str, workdirs: list[str], shas: list[str],
              val_sets: dict, scores: _Scores, mesh) -> dict:
    """{val name: [loss of the first k members for k = 1..K]}, scoring only what is not kept."""
    losses = {name: [scores.get(name, shas[:k], cfg.average) for k in range(1, len(shas) + 1)]
              for name in val_sets}
    if all(v is not None for vs in losses.values() for v in vs):
        return losses
    model, stacked = ensemble.load_members(workdirs)
    for name, store in val_sets.items():
        for k in range(1, len(shas) + 1):
            if losses[name][k - 1] is None:
                loss = ensemble.ensemble_loss(model, _first(stacked, k), store,
                                              cfg.eval_batch_size, mesh, average=cfg.average)
                scores.put(method, name, shas[:k], cfg.average, loss)
                losses[name][k - 1] = loss
                print(f"[ensemble_scaling] {method} {name}: {k} member(s) loss {loss:.5f}",
                      flush=True)
    return losses


def _first(stacked: dict, k: int) -> dict:
    return jax.tree.map(lambda x: x[:k], stacked)


def fit(losses) -> scaling.PowerLaw | None:
    """A / k^B + C through (k, loss) for k = 1..K; None with fewer than 3 members."""
    return scaling.fit_power_law(range(1, len(losses) + 1), losses) if len(losses) >= 3 else None


def markdown(arms, val: str) -> str:
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


def run(cfg: EnsembleScalingConfig) -> EnsembleScalingResult:
    """Train (or resume) every member, score every ensemble size, fit, tabulate and plot."""
    explicit = explicit_point(cfg)
    compile_cache.use_workdir_cache(cfg.workdir)  # members share shapes: one compile each
    plan = [(method, synthetic, member_point(cfg.rule, method, cfg.preset, cfg.generations,
                                             explicit))
            for method, synthetic in cfg.arms()]  # every rule resolved before any training
    trained, runs = 0, []
    for method, synthetic, point in plan:
        summaries = []
        for i, train_cfg in enumerate(member_configs(cfg, method, synthetic, point)):
            print(f"[ensemble_scaling] {method} member {i + 1}/{cfg.members}: {point}",
                  flush=True)
            summary, new = train_member(train_cfg)
            trained += new
            summaries.append((train_cfg.workdir, summary["params_sha256"]))
        runs.append((method, point, summaries))

    mesh = loop.make_mesh(cfg.mesh)
    val_sets = validation.open_sets(cfg.val, store_lib.open(cfg.real))
    scores = _Scores(cfg.workdir)
    arms = []
    for method, point, summaries in runs:
        workdirs, shas = [w for w, _ in summaries], [s for _, s in summaries]
        losses = score_arm(cfg, method, workdirs, shas, val_sets, scores, mesh)
        arms.append(Arm(method, point, tuple(workdirs),
                        {n: tuple(v) for n, v in losses.items()},
                        {n: fit(v) for n, v in losses.items()}))
    table = "\n".join(markdown(arms, name) for name in val_sets)
    for name in val_sets:
        plots.plot_scaling({a.method: (range(1, cfg.members + 1), a.losses[name]) for a in arms},
                           fs.join(cfg.workdir, f"ensemble_scaling_{name}.png"),
                           xlabel="ensemble members",
                           title=f"{name}: ensemble loss vs members (Figure 7)")
    fs.write_text(fs.join(cfg.workdir, "ensemble_scaling.md"), table)
    fs.write_text(fs.join(cfg.workdir, "ensemble_scaling.json"),
                  json.dumps(as_dict(cfg, arms), indent=1) + "\n")
    print(table, flush=True)
    return EnsembleScalingResult(tuple(arms), table, trained)


def as_dict(cfg: EnsembleScalingConfig, arms) -> dict:
    def law(x):
        if x is None:
            return None
        return {"A": x.A, "B": x.B, "C": x.C,
                "C_stderr": None if math.isnan(x.C_stderr) else x.C_stderr}
    return {"config": config_lib.to_dict(cfg), "arms": [
        {"method": a.method, "point": a.point.as_flags(), "members": list(a.workdirs),
         "val": {n: {"curve": [[k, loss] for k, loss in enumerate(a.losses[n], 1)],
                     "law": law(a.laws[n])} for n in a.losses}} for a in arms]}
