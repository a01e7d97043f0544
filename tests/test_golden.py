"""Golden values: the loss of a fixed tiny run at steps 1, 10 and 50, so that a change of
numerics (init, loss, optimizer, schedule, data order, model) cannot pass unnoticed.

The run: preset tiny with a 64-token vocabulary, 100 windows of 32 tokens from
`train_fixtures.make_store` (seed 0), 4 epochs in batches of 8 (50 steps), lr 3e-3, weight
decay 0.1, seed 0, on this suite's 8 simulated CPU devices. The tolerance (relative 2e-3) is the
one the suite uses between mesh layouts: reduction order may move the bf16 compute that much,
a real numerics change moves it more.

After an intended numerics change, regenerate and commit tests/golden_values.json, saying why:

    MEGADOC_REGENERATE_GOLDEN=1 python -m pytest -q tests/test_golden.py
"""
import json
import os
import pathlib

import numpy as np

from megadoc.train import loop
from train_fixtures import make_store, train_config

GOLDEN = pathlib.Path(__file__).with_name("golden_values.json")
STEPS = (1, 10, 50)
RTOL = 2e-3


def test_tiny_run_matches_its_golden_losses(tmp_path):
    real = make_store(str(tmp_path / "real"), 100)
    workdir = tmp_path / "run"
    summary = loop.train(train_config([
        "--preset=tiny", f"--workdir={workdir}", f"--real={real}", "--epochs=4", "--seed=0",
        "--lr=3e-3", "--weight_decay=0.1", "--global_batch=8", "--microbatches=1",
        "--checkpoint_every_minutes=0"]))
    assert summary["final_step"] == max(STEPS)
    with open(workdir / "metrics.jsonl") as f:
        losses = {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}
    got = {str(step): losses[step] for step in STEPS}
    if os.environ.get("MEGADOC_REGENERATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"loss": got, "rtol": RTOL}, indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())["loss"]
    assert set(want) == set(got)
    for step in want:
        np.testing.assert_allclose(got[step], want[step], rtol=RTOL, err_msg=f"loss at step {step}")
