"""Stitched megadocs: all rephrases of a document and the document itself, joined with EOS, one
stream document per source (store prepared with --recipe=stitched --real_position=last).

Defaults: the best 300m point with 16 rephrases per document, mix 0.75, 16 epochs, lr 3e-3,
wd 0.4 (Marin experiments/data_efficiency/synth_data_eval_models.py, run "dcr+b16^0.75" x16),
with cross-document attention and batch 64 × 4096. --published_generations=N (alias
--generations) takes the published point for N rephrases per document
(megadoc/train/published.py): --published_generations=32 is the paper's best stitched run, mix 0.9, 32 epochs, lr 1e-3, wd 0.4 (run "dcr+b32^0.9" x32; that Marin file trains
it at lr 3e-3, where the megadocs paper's summary table lists 1e-3).

On a TPU VM (e.g. v4-8; add --distributed on every host of a multi-host slice):
    python -m experiments.stitched --preset=300m --workdir=gs://BUCKET/runs/stitched-300m \\
        --real=gs://BUCKET/stores/dclm-real --synthetic=gs://BUCKET/stores/dclm-stitched \\
        --val=iid=gs://BUCKET/dclm/val.jsonl
    # the paper's best stitched run (a store prepared with --max_generations=32, or all 32):
    python -m experiments.stitched --published_generations=32 \\
        --workdir=gs://BUCKET/runs/stitched-300m-32 --real=gs://BUCKET/stores/dclm-real --synthetic=gs://BUCKET/stores/dclm-stitched-32 \\
        --val=iid=gs://BUCKET/dclm/val.jsonl
"""
from experiments import train
from megadoc.train import published

FLAGS = train.FLAGS  # experiments.train's flags, with this experiment's defaults

# The published stitched ×16 optimum (sources: megadoc/train/published.py).
DEFAULTS = {"preset": "300m", **published.SYNTHETIC["stitched", 16].as_flags()}
train.define_generations_flag()

if __name__ == "__main__":
    train.run_experiment(DEFAULTS, synthetic_recipe="stitched")
