"""Distil an ensemble of trained runs into one student (the infinite-compute paper's 8x-smaller
student): KL(teacher ‖ student) to the members' averaged distribution, optionally mixed with the
data loss.

    python -m experiments.distill --teachers=gs://b/ens/member_0,...,gs://b/ens/member_7 \\
        --preset=150m --workdir=gs://b/distill/150m --real=gs://b/stores/real --epochs=8 \\
        --lr=3e-3 --weight_decay=0.8 --kl_weight=1.0 --val=iid=gs://b/stores/val

Rerunning the same command resumes from the newest checkpoint in --workdir. The student's model
shape is the training preset's; its vocabulary and context come from --real, as in
experiments.train.
"""
from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from experiments import cli, own_flags

# Own FlagValues: see experiments/ensemble.py.
FLAGS = flags.FlagValues()
flags.DEFINE_list("teachers", [], "training runs whose newest checkpoints form the teacher", flag_values=FLAGS)
flags.DEFINE_enum("teacher_average", "logits", ["logits", "probs"], "how members are combined", flag_values=FLAGS)
flags.DEFINE_float("kl_weight", 1.0, "loss = w * KL(teacher || student) + (1 - w) * data loss", flag_values=FLAGS)
flags.DEFINE_string("preset", "tiny", "student's training preset (model size, batch, lr, wd)", flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "student's output directory (local or gs://)", flag_values=FLAGS)
flags.DEFINE_string("real", None, "window store of real documents", flag_values=FLAGS)
flags.DEFINE_string("synthetic", None, "window store of synthetic documents", flag_values=FLAGS)
flags.DEFINE_float("mix", 0.0, "fraction of each global batch taken from --synthetic", flag_values=FLAGS)
flags.DEFINE_integer("epochs", 1, "passes over the real store", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "seed of the data order and the student's init", flag_values=FLAGS)
flags.DEFINE_float("lr", None, "peak learning rate (default: the preset's)", flag_values=FLAGS)
flags.DEFINE_float("weight_decay", None, "decoupled weight decay, times lr (default: preset's)", flag_values=FLAGS)
flags.DEFINE_integer("global_batch", None, "windows per step (default: the preset's)", flag_values=FLAGS)
flags.DEFINE_integer("microbatches", None, "gradient-accumulation slices per step (default: preset's)",
                     flag_values=FLAGS)
flags.DEFINE_list("mesh", ["1", "-1", "1"], "mesh shape data,fsdp,tensor (-1: remaining devices)", flag_values=FLAGS)
flags.DEFINE_multi_string("val", [], "NAME=PATH validation set (store or documents), evaluated at the end", flag_values=FLAGS)
flags.DEFINE_integer("checkpoint_every_steps", 200, "checkpoint every N steps (0 = at the end and on "
                     "SIGTERM only)", flag_values=FLAGS)
flags.DEFINE_integer("log_every", 10, "progress line every N steps", flag_values=FLAGS)


def build_config(f=FLAGS):
    from experiments.ensemble import parse_val
    from megadoc.analysis import distill
    from megadoc.data import store as store_lib
    from megadoc.models import llama
    from megadoc.train import config

    if not f.workdir or not f.real or not f.teachers:
        raise app.UsageError("--workdir, --real and --teachers are required")
    p = config.preset(f.preset)
    real = store_lib.open(f.real)
    model = dataclasses.replace(llama.preset(p.model), vocab_size=int(real.metadata["vocab_size"]),
                                max_seq_len=real.seq_len, remat=p.remat)
    return distill.DistillConfig(
        model=model,
        data=config.DataConfig(real=f.real, synthetic=f.synthetic, mix=f.mix, epochs=f.epochs,
                               seed=f.seed, global_batch=(p.global_batch if f.global_batch is None
                                                          else f.global_batch)),
        optimizer=config.OptimizerConfig(
            lr=p.lr if f.lr is None else f.lr,
            weight_decay=p.weight_decay if f.weight_decay is None else f.weight_decay),
        workdir=f.workdir, teacher=tuple(f.teachers), kl_weight=f.kl_weight,
        teacher_average=f.teacher_average, mesh=tuple(int(x) for x in f.mesh),
        microbatches=p.microbatches if f.microbatches is None else f.microbatches,
        val=tuple(parse_val(f.val).items()), checkpoint_every_steps=f.checkpoint_every_steps,
        log_every=f.log_every)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from experiments.ensemble import load_members
    from megadoc.analysis import distill

    cfg = build_config()
    teacher_config, teacher = load_members(list(cfg.teacher))
    summary = distill.distill(cfg, teacher_config, teacher)
    if summary["status"] == "preempted":
        sys.exit(143)  # 128 + SIGTERM, as experiments.train: a preempted, resumable job


if __name__ == "__main__":
    cli.run(main, flags_parser=own_flags.parser(FLAGS))
