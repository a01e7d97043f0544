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

from absl import flags

from megadoc import cli
from megadoc.analysis import distill as distill_lib
from megadoc.pipelines import distill, runs

FLAGS = flags.FlagValues()
runs.define_flags(FLAGS)
cli.define_fields(distill_lib.DistillConfig, FLAGS, only=("teacher", "kl_weight", "teacher_average"),
                  choices={"teacher_average": distill_lib.AVERAGES}, aliases={"teacher": "teachers"})
cli.define_fields(distill.DistillJob, FLAGS, skip=("student",))
FLAGS.set_default("checkpoint_every_steps", 200)


def build_config(f=FLAGS) -> distill_lib.DistillConfig:
    return distill.student_config(runs.flag_settings(f, distill_lib.DistillConfig), f.texts)


def main():
    cli.build(runs.Launch, FLAGS).initialize()
    distill.run(distill.DistillJob(build_config(), FLAGS.texts))


if __name__ == "__main__":
    cli.run_flags(main, FLAGS)
