"""The pairs step of SBP: on a corpus of planted paraphrase pairs, the pairs found are the planted
ones, exact duplicates are excluded by the threshold, the summary holds the score distribution,
and a kill -9 during embedding resumes to the same bytes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from megadoc.analysis import neighbours
from sbp_fixtures import make_embedding_model, planted_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("sbp_pairs")
    docs, planted = planted_corpus()
    (d / "docs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    return {"model": make_embedding_model(str(d / "model")), "docs": str(d / "docs.jsonl"),
            "planted": planted, "dir": d}


def _pairs(output) -> set:
    return {(r["x1"], r["x2"]) for r in map(json.loads, open(os.path.join(output, "pairs.jsonl")))}


def test_the_pairs_found_are_the_planted_paraphrases_and_duplicates_are_excluded(corpus):
    cfg = neighbours.PairsConfig(model=corpus["model"], docs=corpus["docs"],
                                 output=str(corpus["dir"] / "out"), threshold=0.5, shard_size=8)
    summary = neighbours.run(cfg)
    found = _pairs(cfg.output)
    # dup0 is a0's paraphrase b0's neighbour as much as a0 is; a0-dup0 (score 1) is never a pair.
    assert {p for p in found if "dup0" not in p} == corpus["planted"]
    assert found - corpus["planted"] == {("dup0", "b0"), ("b0", "dup0")}
    assert summary["duplicates_excluded"] == 2 and summary["pairs"] == len(found)
    assert summary["neighbour_scores"]["q1"] == pytest.approx(1.0, abs=1e-4)
    assert summary["pair_scores"]["q1"] < cfg.duplicate_above <= summary["neighbour_scores"]["q1"]
    assert sum(summary["neighbour_score_histogram"]["counts"]) == 31 * cfg.neighbours
    # A threshold above every paraphrase's score leaves no pair; the approximate index agrees.
    ids, vectors = neighbours.read_embeddings(cfg.output)
    scores, found_i = neighbours.neighbour_scores(vectors, 2)
    exact = {(ids[r], ids[found_i[r, 0]]) for r in range(len(ids))}
    old = neighbours.EXACT_SEARCH_MAX
    try:
        neighbours.EXACT_SEARCH_MAX = 0
        _, hnsw_i = neighbours.neighbour_scores(vectors, 2)
    finally:
        neighbours.EXACT_SEARCH_MAX = old
    assert {(ids[r], ids[hnsw_i[r, 0]]) for r in range(len(ids))} == exact


def test_a_rerun_keeps_finished_shards_and_changed_settings_are_refused(corpus, tmp_path):
    cfg = neighbours.PairsConfig(model=corpus["model"], docs=corpus["docs"],
                                 output=str(tmp_path / "out"), shard_size=16, threshold=0.5)
    neighbours.embed(cfg)
    shard = tmp_path / "out" / "embeddings" / "shard-00001.jsonl"
    kept = shard.stat().st_mtime_ns
    assert neighbours.embed(cfg)["shards_written_now"] == 0 and shard.stat().st_mtime_ns == kept
    with pytest.raises(ValueError, match="max_tokens"):
        neighbours.embed(neighbours.PairsConfig(**{**cfg.__dict__, "max_tokens": 32}))
    with pytest.raises(ValueError, match="threshold < duplicate_above"):
        neighbours.PairsConfig(model="m", docs="d", output="o", threshold=0.99)


@pytest.mark.slow
def test_kill_9_during_embedding_resumes_to_the_same_bytes(corpus, tmp_path):
    cmd = [sys.executable, "-m", "experiments.pairs", f"--model={corpus['model']}",
           f"--docs={corpus['docs']}", "--shard_size=2", "--batch_size=1", "--threshold=0.5"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=REPO,
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    whole = subprocess.run(cmd + [f"--output={tmp_path / 'whole'}"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    output = tmp_path / "killed"
    first = subprocess.Popen(cmd + [f"--output={output}"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = output / "embeddings" / "_job" / "shard-00002.done"
    deadline = time.time() + 300
    while not marker.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = sorted(p.name for p in (output / "embeddings" / "_job").glob("*.done"))
    assert marker.exists() and len(done) < 16, first.stdout.read().decode()[-2000:]
    second = subprocess.run(cmd + [f"--output={output}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{len(done)} already done" in second.stdout
    for j in range(16):
        name = f"shard-{j:05d}.jsonl"
        assert (output / "embeddings" / name).read_bytes() == \
            (tmp_path / "whole" / "embeddings" / name).read_bytes(), name
    whole_pairs = (tmp_path / "whole" / "pairs.jsonl").read_bytes()
    assert (output / "pairs.jsonl").read_bytes() == whole_pairs
