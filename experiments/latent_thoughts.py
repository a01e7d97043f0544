"""Latent-thought megadocs: the document's pieces with generated <think>…</think> spans inserted
at the split points (store prepared with --recipe=latent).

Defaults: the megadocs paper's best 300m latent point with 16 thoughts per document, mix 0.75,
16 epochs, lr 3e-3, wd 0.4 (the same point as stitched ×16), with cross-document attention and
batch 64 × 4096. --published_generations=N takes the published point for N thoughts per document (2, 4,
8, 16, 32; megadoc/train/published.py).

On a TPU VM (e.g. v4-8; add --distributed on every host of a multi-host slice):
    python -m experiments.latent_thoughts --preset=300m --workdir=gs://BUCKET/runs/latent-300m \\
        --real=gs://BUCKET/stores/dclm-real --synthetic=gs://BUCKET/stores/dclm-latent \\
        --val=iid=gs://BUCKET/dclm/val.jsonl
"""
from experiments import train
from megadoc.train import published

FLAGS = train.FLAGS  # experiments.train's flags, with this experiment's defaults

# The published latent ×16 optimum (sources: megadoc/train/published.py).
DEFAULTS = {"preset": "300m", **published.SYNTHETIC["latent", 16].as_flags()}
train.define_generations_flag()

if __name__ == "__main__":
    train.run_experiment(DEFAULTS, synthetic_recipe="latent")
