"""Regularized real-only baseline ("Pre-training under infinite compute"): epoch the real data
with heavy weight decay; tune lr / weight_decay / epochs around these defaults to a certified
optimum (megadoc.analysis.search).

The defaults are the published optima per model size (steps per epoch 777 at batch 64 × 4096,
i.e. ~204M tokens; Marin experiments/data_efficiency/synth_data_regularized_baselines.py):
150m (16 epochs, lr 3e-3, wd 0.8), 300m (16, 3e-3, 1.6; i.i.d. loss 3.5544), 600m and 1.5b
(8, 1e-3, 3.2). Any flag given on the command line wins.

On a TPU VM (e.g. v4-8; add --distributed on every host of a multi-host slice):
    python -m experiments.baseline --preset=300m --workdir=gs://BUCKET/runs/baseline-300m-e16 \\
        --real=gs://BUCKET/stores/dclm-real --val=iid=gs://BUCKET/dclm/val.jsonl
"""
from experiments import train
from megadoc.train import published

FLAGS = train.FLAGS  # experiments.train's flags, with this experiment's defaults

# Marin experiments/data_efficiency/synth_data_regularized_baselines.py (standard-mode centres),
# named in megadoc/train/published.py.
BY_PRESET = {name: point.as_flags() for name, point in published.REAL_ONLY.items()}
DEFAULTS = {"preset": "300m", **BY_PRESET["300m"]}

if __name__ == "__main__":
    train.run_experiment(DEFAULTS, synthetic_recipe=None, by_preset=BY_PRESET)
