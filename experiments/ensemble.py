"""Ensembles: train K members (seed = data order + init), evaluate their logit-averaged loss,
and fit loss vs member count to read off the ensemble's asymptote.

    # train 8 members of the regularized baseline (each its own resumable run), then evaluate
    python -m experiments.ensemble --root=gs://b/ens/base --members=8 --train \\
        --train_flags="--preset=300m --real=gs://b/stores/real --epochs=16 --lr=3e-3 \\
                       --weight_decay=0.8 --val=iid=gs://b/stores/val" \\
        --val=iid=gs://b/stores/val --curve
    # evaluate existing runs
    python -m experiments.ensemble --workdirs=RUN_A,RUN_B,RUN_C --val=iid=STORE --curve

Writes <output>/ensemble.json ({"val": {name: {"loss", "curve": [[k, loss], ...], "law",
"data_efficiency"}}}) and, with --curve, ensemble_<name>.png. With --baseline_loss, the data
efficiency of the ensemble's loss and asymptote is read off the papers' reference data law (valid
for the papers' data and validation set). Rerunning skips members whose summary.json exists.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys

from absl import app, flags

from megadoc import cli

# Flags live in their own FlagValues so this module can share a process (tests) with other
# experiment modules that define flags of the same names.
FLAGS = flags.FlagValues()
flags.DEFINE_list("workdirs", [], "training runs whose newest checkpoints are the members", flag_values=FLAGS)
flags.DEFINE_string("root", None, "members live in <root>/member_<i> (instead of --workdirs)", flag_values=FLAGS)
flags.DEFINE_integer("members", 0, "number of members under --root", flag_values=FLAGS)
flags.DEFINE_bool("train", False, "train the members under --root first (experiments.train, "
                  "--seed=<seed>+i for member i)", flag_values=FLAGS)
flags.DEFINE_string("train_flags", "", "flags passed to every member's experiments.train", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "seed of member 0 (data order and init); member i gets seed+i", flag_values=FLAGS)
flags.DEFINE_multi_string("val", [], "NAME=STORE validation set (repeatable)", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 8, "eval windows per batch", flag_values=FLAGS)
flags.DEFINE_enum("average", "logits", ["logits", "probs"], "how member outputs are combined", flag_values=FLAGS)
flags.DEFINE_bool("curve", False, "also evaluate the first k members for k = 1..K and fit "
                  "L(k) = A / k^B + C (needs K >= 3 for the fit)", flag_values=FLAGS)
flags.DEFINE_float("baseline_loss", None, "also report data efficiency (reference data law) of the "
                   "ensemble's loss and asymptote against this baseline loss", flag_values=FLAGS)
flags.DEFINE_string("output", None, "output directory (default: --root, else required)", flag_values=FLAGS)


def member_workdirs(f=FLAGS) -> list[str]:
    from megadoc import fs

    if f.root:
        if f.workdirs:
            raise app.UsageError("pass --root with --members, or --workdirs, not both")
        if f.members < 1:
            raise app.UsageError("--root needs --members >= 1")
        return [fs.join(f.root, f"member_{i}") for i in range(f.members)]
    if not f.workdirs:
        raise app.UsageError("pass --workdirs=A,B,... or --root=DIR --members=K")
    return list(f.workdirs)


def train_members(workdirs: list[str], train_flags: str, seed: int) -> None:
    from megadoc import fs

    for i, workdir in enumerate(workdirs):
        if fs.exists(fs.join(workdir, "summary.json")):
            print(f"[ensemble] member {i}: finished ({workdir})", flush=True)
            continue
        cmd = [sys.executable, "-m", "experiments.train", *shlex.split(train_flags),
               f"--seed={seed + i}", f"--workdir={workdir}"]
        print(f"[ensemble] member {i}: $ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)


def data_efficiencies(entry: dict, baseline_loss: float) -> dict:
    """Data efficiency (reference data law) of the ensemble's loss and, if fitted, its asymptote;
    None where a loss is at or below the law's asymptote (undefined)."""
    from megadoc.analysis import scaling

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


def evaluate(workdirs, val: dict[str, str], batch_size: int, average: str, curve: bool, output: str,
             baseline_loss: float | None = None) -> dict:
    import jax

    from megadoc import fs
    from megadoc.analysis import ensemble, plots
    from megadoc.data import store as store_lib

    config, stacked = ensemble.load_members(workdirs)
    k = len(workdirs)
    counts = range(1, k + 1) if curve else [k]
    results = {"members": list(workdirs), "average": average, "val": {}}
    for name, path in val.items():
        store = store_lib.open(path)
        ensemble.check_store(workdirs, store)
        losses = []
        for n in counts:
            first_n = jax.tree.map(lambda x: x[:n], stacked)
            losses.append(ensemble.ensemble_loss(config, first_n, store, batch_size, average=average))
            print(f"[ensemble] {name}: {n} member(s) loss {losses[-1]:.5f}", flush=True)
        entry = {"loss": losses[-1], "curve": [[n, loss] for n, loss in zip(counts, losses)]}
        if curve:
            laws = plots.plot_scaling({name: (list(counts), losses)}, fs.join(output, f"ensemble_{name}.png"),
                                      xlabel="ensemble members", title=f"{name}: loss vs members")
            if name in laws:
                law = laws[name]
                entry["law"] = {"A": law.A, "B": law.B, "C": law.C, "C_stderr": law.C_stderr}
                print(f"[ensemble] {name}: {law} -> asymptote {law.C:.4f} ± {law.C_stderr:.4f}", flush=True)
        if baseline_loss is not None:
            entry["data_efficiency"] = data_efficiencies(entry, baseline_loss)
            print(f"[ensemble] {name}: data efficiency vs {baseline_loss}: {entry['data_efficiency']}", flush=True)
        results["val"][name] = entry
    fs.write_text(fs.join(output, "ensemble.json"), json.dumps(results, indent=1) + "\n")
    return results


def main(argv):
    del argv
    workdirs = member_workdirs()
    output = FLAGS.output or FLAGS.root
    if not output:
        raise app.UsageError("--output is required with --workdirs")
    val = cli.parse_named(FLAGS.val, "val")
    if not val and not FLAGS.train:
        raise app.UsageError("pass --val=NAME=STORE to evaluate the ensemble (and/or --train)")
    if FLAGS.train:
        if not FLAGS.root:
            raise app.UsageError("--train needs --root and --members")
        train_members(workdirs, FLAGS.train_flags, FLAGS.seed)
    if val:
        evaluate(workdirs, val, FLAGS.batch_size, FLAGS.average, FLAGS.curve, output, FLAGS.baseline_loss)


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
