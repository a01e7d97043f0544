"""Simple rephrasing: real data mixed with a stream of rephrases, each its own document shuffled
across the whole corpus (store prepared with --recipe=simple).

Defaults: the best 300m point with 8 rephrases per document, mix 0.75, 8 epochs, lr 3e-3,
wd 0.8 (Marin experiments/data_efficiency/synth_data_eval_models.py, run "dcr+s8^0.75" x8),
with cross-document attention and batch 64 × 4096 (stores prepared with --seq_len=4096).
--published_generations=N takes the published point for N rephrases per document (2, 4, 8, 16, 32;
megadoc/train/published.py).

On a TPU VM (e.g. v4-8; add --distributed on every host of a multi-host slice):
    python -m experiments.simple_rephrase --preset=300m --workdir=gs://BUCKET/runs/simple-300m \\
        --real=gs://BUCKET/stores/dclm-real --synthetic=gs://BUCKET/stores/dclm-simple \\
        --val=iid=gs://BUCKET/dclm/val.jsonl
"""
from experiments import train
from megadoc.train import published

FLAGS = train.FLAGS  # experiments.train's flags, with this experiment's defaults

# The published simple ×8 optimum (sources: megadoc/train/published.py).
DEFAULTS = {"preset": "300m", **published.SYNTHETIC["simple", 8].as_flags()}
train.define_generations_flag()

if __name__ == "__main__":
    train.run_experiment(DEFAULTS, synthetic_recipe="simple")
