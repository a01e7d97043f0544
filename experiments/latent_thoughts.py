"""Latent-thought megadocs: the document's pieces with generated <think>…</think> spans inserted
at the split points (store prepared with --recipe=latent).

Defaults: the megadocs paper's best 300m latent point with 16 thoughts per document, mix 0.75,
16 epochs, lr 3e-3, wd 0.4 (the same point as stitched ×16), with cross-document attention and
batch 64 × 4096.

On a TPU VM (e.g. v4-8; add --distributed on every host of a multi-host slice):
    python -m experiments.latent_thoughts --preset=300m --workdir=gs://BUCKET/runs/latent-300m \\
        --real=gs://BUCKET/stores/dclm-real --synthetic=gs://BUCKET/stores/dclm-latent \\
        --val=iid=gs://BUCKET/dclm/val.jsonl
"""
from experiments import train

# The megadocs paper's latent ×16 optimum (mix, epochs, lr, wd) = (0.75, 16, 3e-3, 0.4).
DEFAULTS = {"preset": "300m", "epochs": 16, "lr": 3e-3, "weight_decay": 0.4, "mix": 0.75}

if __name__ == "__main__":
    train.run_experiment(DEFAULTS, synthetic_recipe="latent")
