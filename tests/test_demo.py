"""The main job at smoke scale, as typed from a fresh directory (the default, relative
--workdir=workdir/demo): every stage runs, results are sane, and a killed run resumes without
redoing finished stages."""
import json
import math
import os
import signal
import subprocess
import sys
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo(cwd, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"PYTHONPATH": REPO}
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.demo", "--scale=smoke", "--generator=tiny"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_smoke_demo_runs_every_stage_and_resumes_after_kill(tmp_path):
    workdir = tmp_path / "workdir" / "demo"  # the default --workdir, relative to the cwd
    first = _demo(tmp_path)
    marker = workdir / "stages" / "store_val.json"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "demo made no progress"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # mid-way through the generator's training
    first.wait()

    second = _demo(tmp_path)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    for stage in ("corpus", "tokenizer", "store_real", "store_val"):
        assert f"stage {stage}: done before, skipped" in out
    assert "stage generator: running" in out

    results = json.loads((workdir / "results.json").read_text())
    rows = {r["recipe"]: r for r in results["students"]}
    assert set(rows) == {"real", "simple", "stitched", "latent"}
    assert all(math.isfinite(r["val_loss"]) for r in rows.values())
    assert len({r["tokens"] for r in rows.values()}) == 1  # the same budget for every student
    assert rows["real"]["val_loss"] < results["untrained_val_loss"]
    results_md = (workdir / "results.md").read_text()
    assert results_md.count("|") > 20 and "Generator: tiny" in results_md
    assert "What it does not show" in results_md and "## Two documents" in results_md
    assert "| fidelity |" in results_md and "### Least faithful rephrase" in results_md
    assert (workdir / "val_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
