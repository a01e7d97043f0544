"""Ensembles of the best points, per method (the megadocs paper's Figure 7): K members of each
method at the hyper-parameters of a named rule, scored for k = 1..K members, and each method's
loss fitted against k to read off its ensemble asymptote.

    python -m experiments.ensemble_scaling --workdir=gs://b/ens_scaling --real=gs://b/stores/real \\
        --synthetic=simple=gs://b/stores/simple32 --synthetic=stitched=gs://b/stores/stitched32 \\
        --synthetic=latent=gs://b/stores/latent32 \\
        --synthetic=self_distillation=gs://b/stores/self \\
        --val=iid=gs://b/stores/val --members=8 --rule=b3 --generations=32 --preset=300m

--rule=b3 (Appendix B.3) trains every synthetic method at simple rephrasing's best single-model
point with its epochs doubled and real-only members by Kim et al.'s rule (epochs doubled, weight
decay halved); --rule=kim applies Kim et al.'s rule to each method's own published point;
--rule=explicit takes --epochs, --lr, --weight_decay and --mix. Rerunning resumes: finished
members are not trained again, an interrupted one continues from its checkpoint, scored
ensembles are not scored again. Writes <workdir>/ensemble_scaling.{json,md} and
ensemble_scaling_<val>.png (megadoc.analysis.ensemble_scaling).
"""
from __future__ import annotations

import sys

from absl import flags

from megadoc import cli
from megadoc.analysis import ensemble_scaling as lib

# Own FlagValues: several experiment modules share a process in the tests.
FLAGS = flags.FlagValues()
cli.define_fields(lib.EnsembleScalingConfig, FLAGS,
                  choices={"rule": lib.RULES, "average": ("logits", "probs")})


def main(argv):
    del argv
    from absl import app

    if not FLAGS.workdir or not FLAGS.real:
        raise app.UsageError("--workdir and --real are required")
    try:
        lib.run(lib.EnsembleScalingConfig(**cli.field_values(lib.EnsembleScalingConfig, FLAGS)))
    except lib.Preempted as e:
        print(f"[ensemble_scaling] {e}", flush=True)
        sys.exit(143)  # 128 + SIGTERM: a preempted, resumable job


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
