"""Simple rephrasing: real data mixed with a stream of single rephrases, each its own document
(store prepared with --recipe=simple).

On a TPU VM (e.g. v4-8; add --distributed on every host of a multi-host slice):
    python -m experiments.simple_rephrase --preset=300m --workdir=gs://BUCKET/runs/simple-300m \\
        --real=gs://BUCKET/stores/dclm-real --synthetic=gs://BUCKET/stores/dclm-simple \\
        --val=iid=gs://BUCKET/stores/dclm-val --mix=0.75 --epochs=16 --lr=3e-3 --weight_decay=0.8
"""
from experiments import train

DEFAULTS = {"preset": "300m", "epochs": 16, "lr": 3e-3, "weight_decay": 0.8, "mix": 0.75}

if __name__ == "__main__":
    train.run_experiment(DEFAULTS, synthetic_recipe="simple")
