"""Loss against generations per document with searched hyper-parameters (the megadocs paper's
Figures 1 and 5): for each count N, prepare the store of the first N generations of every
document, run the certified search (each count starting from the previous count's optimum; N = 0
is the real-only baseline), and tabulate (megadoc.pipelines.sweep).

    python -m experiments.generations_sweep --recipe=stitched --docs=gs://b/dclm/train.jsonl \\
        --generation_records=gs://b/synth/rephrase --tokenizer=gs://b/llama-3.1-8b-instruct \\
        --seq_len=4096 --val=iid=gs://b/stores/val --counts=0,1,2,4,8,16,32 --preset=300m \\
        --workdir=gs://b/sweeps/dclm [--data_fractions=0.125,0.25,0.5]

Writes <workdir>/sweep.json ({"rows": [{recipe, generations, loss, best, certified, at_bound,
data_efficiency, data_law, runs}], "data_law": {...}}), sweep.md and sweep.png. Running it again
with another --recipe and the same --workdir adds that recipe's rows to the same table and figure
(the baseline is shared). Data efficiency comes from a data law fitted on real-only baselines
trained on --data_fractions of the documents (with the full data: at least 3 points), else from
the infinite-compute paper's published law; the table says which. Everything resumes: rerunning
a finished sweep trains nothing. --grid=toy (2 values an axis) with --preset=tiny runs on a CPU
in minutes.
"""
from megadoc import cli
from megadoc.pipelines import sweep

FLAGS = cli.command_flags(sweep.SweepConfig, aliases={"generation_records": "generations"},
                          choices={"recipe": sweep.RECIPES, "grid": tuple(sweep.GRIDS),
                                   "real_position": ("last", "first", "none")})


def build_config(f=FLAGS) -> sweep.SweepConfig:
    return cli.build(sweep.SweepConfig, f)


if __name__ == "__main__":
    cli.run_flags(lambda: sweep.run(build_config()), FLAGS)
