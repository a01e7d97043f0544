"""Bad numbers and misused flags as a new user types them: refused before any work, with one
line `error: ...` naming what was expected and exit code 2, not a traceback."""
import os
import subprocess
import sys

import pytest

from megadoc.synth import job
from megadoc.train import config
from train_fixtures import make_store, train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return make_store(str(tmp_path_factory.mktemp("stores") / "real"), 16, seq_len=16)


@pytest.mark.parametrize("flag, message", [
    ("--global_batch=0", "global_batch must be >= 1, got 0"),
    ("--microbatches=-1", "microbatches must be >= 0, got -1"),
    ("--lr=-0.003", "lr must be > 0, got -0.003"),
    ("--weight_decay=-5", "weight_decay must be >= 0, got -5"),
    ("--warmup=1.5", r"warmup_frac must be in \[0, 1\), got 1.5"),
    ("--epochs=0", "epochs must be >= 1, got 0"),
    ("--mix=1.5", r"mix must be in \[0, 1\], got 1.5"),
    ("--keep_checkpoints=0", "keep_checkpoints must be >= 1, got 0"),
    ("--synthetic=SYN", "synthetic store SYN given with mix 0"),
    ("--mix=0.5", "mix=0.5 needs a synthetic store"),
])
def test_train_flags_out_of_range_are_refused(real, tmp_path, flag, message):
    with pytest.raises(ValueError, match=message):
        train_config(["--preset=tiny", f"--workdir={tmp_path}", f"--real={real}", flag])


def test_defaults_apply_only_to_unset_values():
    assert config.DataConfig(real="r").global_batch == 64
    with pytest.raises(ValueError, match="global_batch must be >= 1, got 0"):
        config.DataConfig(real="r", global_batch=0)
    with pytest.raises(ValueError, match="lr must be > 0, got nan"):
        config.OptimizerConfig(lr=float("nan"), weight_decay=0.1)


@pytest.mark.parametrize("value", [0, -5])
def test_max_new_tokens_must_be_positive(value):
    with pytest.raises(ValueError, match=f"max_new_tokens must be >= 1, got {value}"):
        job.JobConfig(method="rephrase", generator="g", docs="d", output="o",
                      max_new_tokens=value)


def _run(module, *argv, cwd):
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))


def test_a_refused_synthesis_writes_nothing_and_says_so_in_one_line(tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "x"}\n')
    out = _run("experiments.synthesize", "--method=rephrase", "--generator=gen",
               "--docs=docs.jsonl", "--output=out", "--max_new_tokens=-5", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "error: max_new_tokens must be >= 1, got -5"
    assert not (tmp_path / "out").exists()


def test_train_errors_are_one_line(real, tmp_path):
    out = _run("experiments.train", "--workdir=w", f"--real={real}", "--lr=-0.003", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: OptimizerConfig.lr must be > 0, got -0.003"
    out = _run("experiments.train", "--workdir=w", "--real=missing", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: missing: no window store here"
