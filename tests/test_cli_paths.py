"""The command lines as a user types them: relative paths from an arbitrary working directory.
prepare → train (checkpoint, kill -9, resume) → synthesize → prepare a stitched store, every
path relative to a fresh temporary directory; what is recorded keeps the paths as written."""
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import hf, llama

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["The river floods every spring and the farmers plant after it recedes.",
             "A prime number has exactly two divisors: one and itself.",
             "Copper conducts heat well, so pans are often made of it.",
             "The committee met on 12 March 1998 and approved the budget."]


def _env(cwd):
    """The test's own code, and one compilation cache for the killed and the resumed trainer."""
    return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=str(cwd / ".jax_cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _run(cwd, module, *argv, timeout=300):
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, env=_env(cwd),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _write_inputs(cwd):
    docs = [{"id": f"doc{i}", "text": " ".join(SENTENCES[(i + j) % 4] for j in range(1 + i % 3))}
            for i in range(24)]
    with open(cwd / "docs.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    os.makedirs(cwd / "gen")
    tokenizer_lib.train_sentencepiece(SENTENCES * 20, 300, str(cwd / "gen" / "tokenizer.model"))
    vocab = tokenizer_lib.load(str(cwd / "gen")).vocab_size
    config = llama.LlamaConfig(vocab_size=vocab, hidden=32, ffn=64, layers=2, heads=4,
                               kv_heads=2, max_seq_len=1024)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s)).astype(np.float32),
                          llama.param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    hf.save(config, params, str(cwd / "gen"))


def _checkpoints(cwd):
    d = cwd / "runs" / "a" / "checkpoints"
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if d.exists() else []


def test_prepare_train_kill_resume_synthesize_with_relative_paths(tmp_path):
    _write_inputs(tmp_path)
    _run(tmp_path, "experiments.prepare", "--docs=docs.jsonl", "--recipe=real",
         "--tokenizer=gen/tokenizer.model", "--seq_len=16", "--output=stores/real")
    meta = json.loads((tmp_path / "stores" / "real" / "metadata.json").read_text())
    assert meta["settings"]["output"] == "stores/real"  # recorded as typed

    train = [sys.executable, "-m", "experiments.train", "--workdir=runs/a", "--real=stores/real",
             "--epochs=20", "--checkpoint_every_steps=5", "--checkpoint_every_minutes=0",
             "--log_every=1"]
    first = subprocess.Popen(train, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not [s for s in _checkpoints(tmp_path) if s >= 5]:
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.1)
    first.kill()
    first.wait()
    first.stdout.close()
    out = _run(tmp_path, "experiments.train", *train[3:])
    assert "resumed from runs/a/checkpoints at step" in out
    summary = json.loads((tmp_path / "runs" / "a" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["config"]["workdir"] == "runs/a"

    _run(tmp_path, "experiments.synthesize", "--method=rephrase", "--generator=gen",
         "--docs=docs.jsonl", "--output=synth/rephrase", "--max_new_tokens=4", "--batch_size=8")
    _run(tmp_path, "experiments.prepare", "--docs=docs.jsonl", "--recipe=stitched",
         "--generations=synth/rephrase", "--tokenizer=gen", "--seq_len=16",
         "--output=stores/stitched")
    stitched = json.loads((tmp_path / "stores" / "stitched" / "metadata.json").read_text())
    assert stitched["counts"]["generations_used"] == 24
