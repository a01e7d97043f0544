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
for the papers' data and validation set). Members train in this process, one after another
(megadoc.pipelines.ensemble); rerunning skips members whose summary.json exists.
"""
from __future__ import annotations

import shlex

from absl import flags

from megadoc import cli
from megadoc.analysis import ensemble as ensemble_lib
from megadoc.pipelines import ensemble, runs

FLAGS = cli.command_flags(ensemble.EnsembleConfig, skip=("train",),
                          choices={"average": ensemble_lib.AVERAGES})
flags.DEFINE_bool("train", False, "train the members under --root first (--train_flags, "
                  "--seed=<seed>+i for member i)", flag_values=FLAGS)
flags.DEFINE_string("train_flags", "", "experiments.train flags of every member", flag_values=FLAGS)


def build_config(f=FLAGS) -> ensemble.EnsembleConfig:
    train = (runs.train_config_from_argv(shlex.split(f.train_flags), workdir=f.root or ".")
             if f.train else None)
    return cli.build(ensemble.EnsembleConfig, f, train=train)


if __name__ == "__main__":
    cli.run_flags(lambda: ensemble.run(build_config()), FLAGS)
