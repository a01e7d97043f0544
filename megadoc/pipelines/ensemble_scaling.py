"""Ensembles of the best points, per method (the megadocs paper's Figure 7, Appendix B.3).

For each method (real-only and each synthetic stream: simple, stitched, latent,
self-distillation) K members are trained, member i with seed `seed + i` (its init and data
order), at the hyper-parameters a named rule gives (megadoc.analysis.ensemble_scaling); the
ensemble of the first k members (logits averaged) is scored for k = 1..K, and loss against k is
fitted to A / k^B + C, whose C is the method's ensemble asymptote. Figure 7's question is whether
a method lowers that asymptote (synthetic data composes with ensembling) or only the single
model's loss.

Everything resumes: members are runs in their own workdirs (<workdir>/<method>/<point>/member_<i>)
started with `runs.train`, in this process; a finished member is not trained again and an
interrupted one resumes from its checkpoint. Every ensemble score is kept in
<workdir>/evaluations.jsonl under its members' parameter checksums, so a rerun scores nothing
twice. Writes <workdir>/ensemble_scaling.json, ensemble_scaling.md and
ensemble_scaling_<val>.png (loss against members, one fitted curve per method).
"""
from __future__ import annotations

import dataclasses
import json

from megadoc import compile_cache, fs
from megadoc.analysis import ensemble, plots, search
from megadoc.analysis import ensemble_scaling as analysis
from megadoc.pipelines import runs
from megadoc.train import config as config_lib
from megadoc.train import published


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
    """training preset of every member (model size, batch, rows per device)"""
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
        if self.rule not in analysis.RULES:
            raise ValueError(f"rule {self.rule!r}: expected one of {analysis.RULES}")
        if self.average not in ensemble.AVERAGES:
            raise ValueError(f"average {self.average!r}: expected one of {ensemble.AVERAGES}")
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        for method, _ in self.synthetic:
            if method not in analysis.SYNTHETIC_METHODS:
                raise ValueError(f"synthetic arm {method!r}: expected one of "
                                 f"{analysis.SYNTHETIC_METHODS}")
        if len({m for m, _ in self.synthetic}) != len(self.synthetic):
            raise ValueError(f"synthetic arms repeat a method: {[m for m, _ in self.synthetic]}")
        if not self.synthetic and not self.real_only:
            raise ValueError("no arm to ensemble: give --synthetic=METHOD=STORE or --real_only")
        if not self.val:
            raise ValueError("ensembles are scored on validation sets: give --val=NAME=PATH")
        if self.rule != "explicit":
            return
        if (self.epochs is None or self.epochs < 1 or self.lr is None or self.lr <= 0
                or self.weight_decay is None or self.weight_decay < 0):
            raise ValueError(f"rule explicit needs --epochs >= 1, --lr > 0 and --weight_decay "
                             f">= 0; got {self.epochs}, {self.lr}, {self.weight_decay}")
        if self.synthetic and not 0 < (self.mix or 0.0) <= 1:
            raise ValueError(f"rule explicit with synthetic arms needs --mix in (0, 1], got "
                             f"{self.mix}")

    def arms(self) -> list[tuple[str, str | None]]:
        """(method, synthetic store or None) of each arm, real-only first."""
        return [(analysis.REAL, None)] * self.real_only + [(m, s) for m, s in self.synthetic]

    def explicit_point(self) -> published.Point | None:
        """Rule explicit's point (None under the other rules)."""
        if self.rule != "explicit":
            return None
        return published.Point(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                               mix=self.mix or 0.0)


@dataclasses.dataclass(frozen=True)
class EnsembleScalingResult:
    """Each arm's point, members and scores; the table (also ensemble_scaling.md)."""
    arms: tuple[analysis.Arm, ...]
    table: str
    new_members: int
    """members trained (or resumed) by this call"""


def member_configs(cfg: EnsembleScalingConfig, method: str, synthetic: str | None,
                   point: published.Point) -> list[config_lib.TrainConfig]:
    """The K members' training runs: one point, seeds seed..seed+K-1."""
    root = fs.join(cfg.workdir, method, search.point_name(point.as_flags()))
    return [runs.train_config(dict(
        preset=cfg.preset, workdir=fs.join(root, f"member_{i}"), real=cfg.real,
        synthetic=synthetic if point.mix else None, mix=point.mix, epochs=point.epochs,
        seed=cfg.seed + i, lr=point.lr, weight_decay=point.weight_decay, mesh=cfg.mesh,
        checkpoint_every_steps=cfg.checkpoint_every_steps, checkpoint_every_minutes=0.0))
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
    return runs.train(train_cfg), True


class _Scores:
    """Ensemble losses kept in <workdir>/evaluations.jsonl, keyed by what they score."""

    def __init__(self, workdir: str):
        self.path = fs.join(workdir, "evaluations.jsonl")
        self.known = {self._key(row["val"], row["members_sha256"], row["average"]): row["loss"]
                      for _, row in fs.read_jsonl_log(self.path)}

    @staticmethod
    def _key(val: str, shas, average: str) -> tuple:
        return val, tuple(shas), average

    def get(self, val: str, shas, average: str):
        return self.known.get(self._key(val, shas, average))

    def put(self, method: str, val: str, shas, average: str, loss: float) -> None:
        self.known[self._key(val, shas, average)] = loss
        fs.append_jsonl(self.path, [{"method": method, "val": val, "k": len(shas),
                                     "members_sha256": list(shas), "average": average,
                                     "loss": loss}])


def score_arm(cfg: EnsembleScalingConfig, method: str, workdirs: list[str], shas: list[str],
              val_sets: dict, scores: _Scores, mesh) -> dict:
    """{val name: [loss of the first k members for k = 1..K]}, scoring only what is not kept."""
    import jax

    from megadoc.data import store as store_lib

    losses = {name: [scores.get(name, shas[:k], cfg.average) for k in range(1, len(shas) + 1)]
              for name in val_sets}
    if all(v is not None for vs in losses.values() for v in vs):
        return losses
    model, stacked = ensemble.load_members(workdirs)
    for name, store in val_sets.items():
        if isinstance(store, store_lib.WindowStore):  # documents: tokenized as the real store
            ensemble.check_store(workdirs, store)
        for k in range(1, len(shas) + 1):
            if losses[name][k - 1] is None:
                first_k = jax.tree.map(lambda x: x[:k], stacked)
                loss = ensemble.ensemble_loss(model, first_k, store, cfg.eval_batch_size, mesh,
                                              average=cfg.average)
                scores.put(method, name, shas[:k], cfg.average, loss)
                losses[name][k - 1] = loss
                print(f"[ensemble_scaling] {method} {name}: {k} member(s) loss {loss:.5f}",
                      flush=True)
    return losses


def run(cfg: EnsembleScalingConfig) -> EnsembleScalingResult:
    """Train (or resume) every member, score every ensemble size, fit, tabulate and plot."""
    from megadoc.data import store as store_lib
    from megadoc.data import validation
    from megadoc.train import loop

    compile_cache.use_workdir_cache(cfg.workdir)  # members share shapes: one compile each
    plan = [(method, synthetic, analysis.member_point(cfg.rule, method, cfg.preset,
                                                      cfg.generations, cfg.explicit_point()))
            for method, synthetic in cfg.arms()]  # every rule resolved before any training
    trained, members = 0, []
    for method, synthetic, point in plan:
        summaries = []
        for i, train_cfg in enumerate(member_configs(cfg, method, synthetic, point)):
            print(f"[ensemble_scaling] {method} member {i + 1}/{cfg.members}: {point}",
                  flush=True)
            summary, new = train_member(train_cfg)
            trained += new
            summaries.append((train_cfg.workdir, summary["params_sha256"]))
        members.append((method, point, summaries))

    mesh = loop.make_mesh(cfg.mesh)
    val_sets = validation.open_sets(cfg.val, store_lib.open(cfg.real))
    scores = _Scores(cfg.workdir)
    arms = []
    for method, point, summaries in members:
        workdirs, shas = [w for w, _ in summaries], [s for _, s in summaries]
        losses = score_arm(cfg, method, workdirs, shas, val_sets, scores, mesh)
        arms.append(analysis.Arm(method, point, tuple(workdirs),
                                 {n: tuple(v) for n, v in losses.items()},
                                 {n: analysis.fit(v) for n, v in losses.items()}))
    table = "\n".join(analysis.markdown(arms, name) for name in val_sets)
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
    """ensemble_scaling.json: the config and, per arm, its point, members, curves and fits."""
    return {"config": config_lib.to_dict(cfg), "arms": [
        {"method": a.method, "point": a.point.as_flags(), "members": list(a.workdirs),
         "val": {n: {"curve": [[k, loss] for k, loss in enumerate(a.losses[n], 1)],
                     "law": analysis.law_dict(a.laws[n])} for n in a.losses}} for a in arms]}
