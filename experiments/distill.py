"""Distil trained runs into one student, in either of the papers' two ways:

- --texts: train on documents a teacher sampled (experiments.synthesize --method=unconditional,
  from one run: self-distillation, the megadocs paper's §5 baseline; from an ensemble: the
  infinite-compute paper's ensemble distillation), mixed with the real stream at --mix, through
  the ordinary training loop (megadoc.train.loop). The texts become a window store in
  <workdir>/texts/ with the real store's tokenizer and window length;
- --teachers: token-level KL(teacher ‖ student) to the members' averaged distribution,
  optionally mixed with the data loss.

    python -m experiments.distill --texts=gs://b/synth/self --preset=300m \\
        --workdir=gs://b/distill/self --real=gs://b/stores/real --mix=0.75 --epochs=16 \\
        --val=iid=gs://b/stores/val

    python -m experiments.distill --teachers=gs://b/ens/member_0,...,gs://b/ens/member_7 \\
        --preset=150m --workdir=gs://b/distill/150m --real=gs://b/stores/real --epochs=8 \\
        --lr=3e-3 --weight_decay=0.8 --kl_weight=1.0 --val=iid=gs://b/stores/val

Rerunning the same command resumes from the newest checkpoint in --workdir (a preempted run
exits 143). Every
experiments.train flag applies (either way the run is megadoc.train.loop's), including
--distributed; the student's model shape is the training preset's, its vocabulary and context
come from --real.
"""
from __future__ import annotations

from absl import app, flags

from experiments import train
from megadoc import cli
from megadoc.analysis import distill
from megadoc.pipelines import runs

FLAGS = flags.FlagValues()
train.define_flags(FLAGS)
cli.define_fields(distill.DistillConfig, FLAGS, only=("teacher", "kl_weight", "teacher_average"),
                  choices={"teacher_average": distill.AVERAGES}, aliases={"teacher": "teachers"})
flags.DEFINE_string("texts", None, "generation records to train the student on (with --mix of each "
                    "batch; instead of --teachers)", flag_values=FLAGS)
FLAGS.set_default("checkpoint_every_steps", 200)


def build_config(f=FLAGS) -> distill.DistillConfig:
    if bool(f.teacher) == bool(f.texts):
        raise app.UsageError("--workdir, --real and one of --teachers or --texts are required")
    settings = runs.flag_settings(f, distill.DistillConfig)
    if f.texts:  # the texts are the synthetic stream, prepared into <workdir>/texts/store
        if f.synthetic:
            raise app.UsageError("--texts becomes the synthetic stream; drop --synthetic")
        if not f.mix > 0:
            raise app.UsageError("--texts needs --mix > 0: the fraction of each batch from the texts")
        settings["synthetic"] = distill.texts_store_path(f.workdir)
    return runs.train_config(settings, distill.DistillConfig)


def main(argv):
    del argv
    from megadoc.analysis import ensemble
    from megadoc.data import store as store_lib

    train.initialize_distributed(FLAGS)
    cfg = build_config()
    if FLAGS.texts:
        summary = distill.train_on_texts(cfg, FLAGS.texts)
    else:
        teacher_config, teacher = ensemble.load_members(list(cfg.teacher))
        ensemble.check_store(cfg.teacher, store_lib.open(cfg.data.real))  # by fingerprint
        summary = distill.distill(cfg, teacher_config, teacher)
    if summary["status"] == "preempted":
        raise runs.Preempted(cfg.workdir, summary["step"])


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
