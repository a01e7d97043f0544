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
--rule=explicit takes --epochs, --lr, --weight_decay and --mix. Members train in this process
(megadoc.pipelines.ensemble_scaling). Rerunning resumes: finished members are not trained
again, an interrupted one continues from its checkpoint (a preempted member exits 143), scored
ensembles are not scored again. Writes <workdir>/ensemble_scaling.{json,md} and
ensemble_scaling_<val>.png.
"""
from megadoc import cli
from megadoc.analysis import ensemble
from megadoc.analysis import ensemble_scaling as rules
from megadoc.pipelines import ensemble_scaling

FLAGS = cli.command_flags(ensemble_scaling.EnsembleScalingConfig,
                          choices={"rule": rules.RULES, "average": ensemble.AVERAGES})


def build_config(f=FLAGS) -> ensemble_scaling.EnsembleScalingConfig:
    return cli.build(ensemble_scaling.EnsembleScalingConfig, f)


if __name__ == "__main__":
    cli.run_flags(lambda: ensemble_scaling.run(build_config()), FLAGS)
