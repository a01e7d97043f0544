"""Regularized real-only baseline ("Pre-training under infinite compute"): epoch the real data
with heavy weight decay; tune lr / weight_decay / epochs around these defaults to a certified
optimum (megadoc.analysis.search).

On a TPU VM (e.g. v4-8; add --distributed on every host of a multi-host slice):
    python -m experiments.baseline --preset=300m --workdir=gs://BUCKET/runs/baseline-300m-e16 \\
        --real=gs://BUCKET/stores/dclm-real --val=iid=gs://BUCKET/stores/dclm-val \\
        --epochs=16 --lr=3e-3 --weight_decay=0.8
"""
from experiments import train

DEFAULTS = {"preset": "300m", "epochs": 16, "lr": 3e-3, "weight_decay": 0.8, "mix": 0.0}

if __name__ == "__main__":
    train.run_experiment(DEFAULTS, synthetic_recipe=None)
