"""Faults during training: a gradient gone infinite never reaches the saved parameters; a
damaged newest checkpoint is skipped (named, with the reason) for the newest intact one; a
rerun of a finished run adds nothing to its metrics."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megadoc.train import checkpoint, loop
from megadoc.train import step as step_lib
from train_fixtures import make_store, train_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    return {"real": make_store(str(d / "real"), 64, seq_len=16),
            "val": make_store(str(d / "val"), 8, seq_len=16, seed=1), "dir": d}


def argv(data, workdir, *extra):
    return ["--preset=tiny", f"--workdir={workdir}", f"--real={data['real']}", "--epochs=1",
            "--checkpoint_every_steps=4", "--checkpoint_every_minutes=0",
            f"--val=iid={data['val']}", *extra]


@pytest.fixture(scope="module")
def finished(data):
    workdir = str(data["dir"] / "finished")
    return workdir, loop.train(train_config(argv(data, workdir)))


def test_rerun_of_a_finished_run_writes_nothing(data, finished):
    workdir, summary = finished
    before = open(os.path.join(workdir, "metrics.jsonl")).read()
    again = loop.train(train_config(argv(data, workdir)))
    assert again["params_sha256"] == summary["params_sha256"]
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == before


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(data, finished, tmp_path,
                                                                      capsys):
    workdir = str(tmp_path / "run")
    shutil.copytree(finished[0], workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    newest = os.path.join(workdir, "checkpoints", "8")
    biggest = max((os.path.join(d, n) for d, _, names in os.walk(newest) for n in names),
                  key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    capsys.readouterr()
    summary = loop.train(train_config(argv(data, workdir)))
    out = capsys.readouterr().out
    assert "skipping unreadable checkpoint 8:" in out and "resumed from" in out
    assert "at step 4" in out
    assert summary["params_sha256"] == finished[1]["params_sha256"]  # redone exactly


def test_a_non_finite_gradient_is_never_applied(data, tmp_path, monkeypatch):
    finite_loss = step_lib.mean_loss

    def nan_gradient(model_config, params, tokens, segment_ids):  # loss finite, gradient NaN
        zero = 0.0 * jnp.sum(params["final_norm"])
        return finite_loss(model_config, params, tokens, segment_ids) + 0.0 * jnp.sqrt(zero)

    monkeypatch.setattr(step_lib, "mean_loss", nan_gradient)
    workdir = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match="grad_norm is nan at step 1"):
        loop.train(train_config(argv(data, workdir)))
    _, params = checkpoint.load_params(workdir, 0)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))
