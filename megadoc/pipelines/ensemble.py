"""Ensembles: train K members (member i: seed + i, for data order and init), evaluate their
averaged loss on each validation store, and fit loss against member count to read off the
ensemble's asymptote. Members whose summary.json exists are not trained again; one cut short
resumes from its checkpoints."""
from __future__ import annotations

import dataclasses
import json

from megadoc import cli, fs
from megadoc.analysis import ensemble, plots, scaling
from megadoc.pipelines import runs
from megadoc.train import config as config_lib


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """Which members, whether to train them first, and how to evaluate them."""
    workdirs: tuple[str, ...] = ()
    """training runs whose newest checkpoints are the members"""
    root: str | None = None
    """members live in <root>/member_<i> (instead of --workdirs)"""
    members: int = 0
    """number of members under --root"""
    train: config_lib.TrainConfig | None = None
    """train the missing members under --root first: this run with member i's seed and
    workdir"""
    seed: int = 0
    """seed of member 0 (data order and init); member i gets seed+i"""
    val: tuple[tuple[str, str], ...] = ()
    """validation window stores the ensemble is evaluated on"""
    batch_size: int = 8
    """eval windows per batch"""
    average: str = "logits"
    """how member outputs are combined: logits | probs"""
    curve: bool = False
    """also evaluate the first k members for k = 1..K and fit L(k) = A / k^B + C (needs
    K >= 3 for the fit)"""
    baseline_loss: float | None = None
    """also report data efficiency (reference data law) of the ensemble's loss and asymptote
    against this baseline loss"""
    output: str | None = None
    """output directory (default: --root, else required)"""

    def __post_init__(self):
        if self.root and self.workdirs:
            raise ValueError("pass --root with --members, or --workdirs, not both")
        if self.root and self.members < 1:
            raise ValueError("--root needs --members >= 1")
        if not self.root and not self.workdirs:
            raise ValueError("pass --workdirs=A,B,... or --root=DIR --members=K")
        if not (self.output or self.root):
            raise ValueError("--output is required with --workdirs")
        if self.train and not self.root:
            raise ValueError("--train needs --root and --members")
        if not self.val and not self.train:
            raise ValueError("pass --val=NAME=STORE to evaluate the ensemble (and/or --train)")
        if self.average not in ensemble.AVERAGES:
            raise ValueError(f"--average={self.average}: one of {', '.join(ensemble.AVERAGES)}")

    def member_workdirs(self) -> list[str]:
        if self.root:
            return [fs.join(self.root, f"member_{i}") for i in range(self.members)]
        return list(self.workdirs)


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
    """The members and, per validation set, {"loss", "curve", "law", "data_efficiency"} (also
    <output>/ensemble.json)."""
    members: tuple[str, ...]
    average: str
    val: dict

    def as_dict(self) -> dict:
        return {"members": list(self.members), "average": self.average, "val": self.val}


def train_members(cfg: EnsembleConfig) -> None:
    for i, workdir in enumerate(cfg.member_workdirs()):
        if fs.exists(fs.join(workdir, "summary.json")):
            print(f"[ensemble] member {i}: finished ({workdir})", flush=True)
            continue
        print(f"[ensemble] member {i}: training in {workdir}", flush=True)
        runs.train(cli.replace(cfg.train, workdir=workdir, seed=cfg.seed + i))


def data_efficiencies(entry: dict, baseline_loss: float) -> dict:
    """Data efficiency (reference data law) of the ensemble's loss and, if fitted, its asymptote;
    None where a loss is at or below the law's asymptote (undefined)."""
    out = {}
    for key, loss in (("loss", entry["loss"]), ("asymptote", entry.get("law", {}).get("C"))):
        if loss is None:
            continue
        try:
            out[key] = scaling.data_efficiency(loss, baseline_loss)
        except ValueError as e:
            print(f"[ensemble] {key}: {e}", flush=True)
            out[key] = None
    return out


def evaluate(cfg: EnsembleConfig) -> EnsembleResult:
    """The members' averaged loss on every validation set (and the curve over k members)."""
    import jax

    from megadoc.data import store as store_lib

    workdirs, output = cfg.member_workdirs(), cfg.output or cfg.root
    config, stacked = ensemble.load_members(workdirs)
    counts = range(1, len(workdirs) + 1) if cfg.curve else [len(workdirs)]
    val = {}
    for name, path in cfg.val:
        store = store_lib.open(path)
        ensemble.check_store(workdirs, store)  # the members' tokenizer, by fingerprint
        losses = []
        for n in counts:
            first_n = jax.tree.map(lambda x: x[:n], stacked)
            losses.append(ensemble.ensemble_loss(config, first_n, store, cfg.batch_size,
                                                 average=cfg.average))
            print(f"[ensemble] {name}: {n} member(s) loss {losses[-1]:.5f}", flush=True)
        entry = {"loss": losses[-1], "curve": [[n, loss] for n, loss in zip(counts, losses)]}
        if cfg.curve:
            laws = plots.plot_scaling({name: (list(counts), losses)},
                                      fs.join(output, f"ensemble_{name}.png"),
                                      xlabel="ensemble members", title=f"{name}: loss vs members")
            if name in laws:
                law = laws[name]
                entry["law"] = {"A": law.A, "B": law.B, "C": law.C, "C_stderr": law.C_stderr}
                print(f"[ensemble] {name}: {law} -> asymptote {law.C:.4f} ± {law.C_stderr:.4f}",
                      flush=True)
        if cfg.baseline_loss is not None:
            entry["data_efficiency"] = data_efficiencies(entry, cfg.baseline_loss)
            print(f"[ensemble] {name}: data efficiency vs {cfg.baseline_loss}: "
                  f"{entry['data_efficiency']}", flush=True)
        val[name] = entry
    result = EnsembleResult(tuple(workdirs), cfg.average, val)
    fs.write_text(fs.join(output, "ensemble.json"), json.dumps(result.as_dict(), indent=1) + "\n")
    return result


def run(cfg: EnsembleConfig) -> EnsembleResult | None:
    """Train the missing members (with `cfg.train`), then evaluate (with `cfg.val`)."""
    if cfg.train:
        train_members(cfg)
    return evaluate(cfg) if cfg.val else None
