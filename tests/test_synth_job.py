"""The synthesis job: records per the shared schema, bad input, sharding, exactly-once restarts."""
import collections
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from megadoc.data import docs as docs_lib
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import hf, llama
from megadoc.synth import job, split

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["The river floods every spring and the farmers plant after it recedes.",
             "A prime number has exactly two divisors: one and itself.",
             "Copper conducts heat well, so pans are often made of it.",
             "The committee met on 12 March 1998 and approved the budget."]


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    """A tiny random Llama with a sentencepiece tokenizer, as an HF directory."""
    path = str(tmp_path_factory.mktemp("generator"))
    tokenizer_lib.train_sentencepiece(SENTENCES * 20, 600, os.path.join(path, "tokenizer.model"))
    vocab = tokenizer_lib.load(path).vocab_size
    config = llama.LlamaConfig(vocab_size=vocab, hidden=32, ffn=64, layers=2, heads=4,
                               kv_heads=2, max_seq_len=192)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s)).astype(np.float32),
                          llama.param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    hf.save(config, params, path)
    return path


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    path = tmp_path_factory.mktemp("templates")
    (path / "short_rephrase.txt").write_text("[system]\nBe clear.\n[user]\nRewrite: {document}\n")
    (path / "short_thought.txt").write_text("Start: {prefix}\nEnd: {suffix}\nReasoning:\n")
    return {"rephrase": str(path / "short_rephrase.txt"),
            "latent_thoughts": str(path / "short_thought.txt")}


def _docs(path, n=7):
    docs = [{"id": f"doc{i}", "text": SENTENCES[i % 4] + " " + SENTENCES[(i + 1) % 4]}
            for i in range(n)]
    docs[2]["text"] = "  \n "  # empty
    if n > 4:
        docs[4]["text"] = " ".join(SENTENCES * 8)  # longer than the generator's context
    with open(path, "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
        f.write('{"id": "broken", "text": \n')  # malformed: counted, reported, skipped
    return str(path)


def _records(output):
    out = []
    for name in sorted(os.listdir(output)):
        if name.endswith(".jsonl"):
            with open(os.path.join(output, name)) as f:
                out += [json.loads(line) for line in f]
    return out


@pytest.fixture(scope="module")
def rephrased(generator_dir, templates, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rephrase")
    cfg = job.JobConfig(method="rephrase", generator=generator_dir, docs=_docs(tmp / "docs.jsonl"),
                        output=str(tmp / "out"), generations=2, max_new_tokens=12, seed=3,
                        batch_size=4, shard_size=3, template=templates["rephrase"])
    return cfg, job.run(cfg)


def test_rephrase_records_follow_the_schema_with_explicit_reasons(rephrased, generator_dir):
    cfg, summary = rephrased
    records = _records(cfg.output)
    per_doc = collections.defaultdict(list)
    for r in records:
        assert set(r) == {"doc_id", "method", "sample", "offset", "text", "finish_reason", "seed",
                          "generator", "template", "sampling", "fidelity", "fidelity_logprob",
                          "max_similarity", "source_overlap"}
        assert (r["method"], r["offset"], r["seed"]) == ("rephrase", None, 3)
        # the generator is named by its directory (generator0, or generator1 when another
        # module's fixture took the first name)
        assert r["generator"] == os.path.basename(generator_dir)
        assert r["template"].startswith("short_rephrase@")
        per_doc[r["doc_id"]].append(r)
    assert sorted(per_doc) == [f"doc{i}" for i in range(7)]
    for doc_id, rs in per_doc.items():
        assert sorted(r["sample"] for r in rs) == [0, 1]
        reasons = {r["finish_reason"] for r in rs}
        if doc_id == "doc2":
            assert reasons == {"empty_document"} and all(r["text"] == "" for r in rs)
        elif doc_id == "doc4":  # the context holds no chunk with its continuation prompt
            assert reasons == {"prompt_too_long"} and all(r["text"] == "" for r in rs)
        else:
            assert reasons <= {"eos", "length"} and all(r["text"] for r in rs)
    assert per_doc["doc0"][0]["text"] != per_doc["doc0"][1]["text"]
    counts = collections.Counter(r["finish_reason"] for r in records)
    assert summary["finish_reason"] == dict(counts) and summary["records"] == 14
    assert summary["bad_input_records"]["counts"] == {"malformed_json": 1}
    with open(os.path.join(cfg.output, "summary.json")) as f:
        assert json.load(f)["shards_done"] == summary["shards_total"] == 3


def test_text_is_the_same_in_any_shard_process_and_batch_size(rephrased):
    cfg, _ = rephrased
    other = os.path.join(os.path.dirname(cfg.output), "split")
    for process in (1, 0):  # two processes, other shard boundaries, another batch size
        job.run(dataclasses.replace(cfg, output=other, shard_size=2, batch_size=3,
                                    process_id=process, num_processes=2))
    key = lambda r: (r["doc_id"], r["sample"])
    assert sorted(_records(other), key=key) == sorted(_records(cfg.output), key=key)
    assert len(list((Path(other) / "_job").glob("*.done"))) == 4


def test_restart_with_other_settings_refuses(rephrased):
    cfg, _ = rephrased
    with pytest.raises(ValueError, match=r"seed: 3 -> 4"):
        job.run(dataclasses.replace(cfg, seed=4))


def test_a_marker_of_other_settings_is_refused(rephrased, tmp_path):
    """Each done marker records what produced its shard: without config.json, a rerun with
    another seed still refuses to mix its records with them."""
    cfg, _ = rephrased
    output = tmp_path / "out"
    shutil.copytree(cfg.output, output)
    marker = json.loads((output / "_job" / "shard-00000.done").read_text())["produced_by"]
    assert marker["seed"] == 3 and len(marker["generator_digest"]) == 16
    assert marker["chat_date"] == "2024-07-23" and marker["sampling"]["max_new_tokens"] == 12
    (output / "_job" / "config.json").unlink()
    with pytest.raises(ValueError, match="shard-00000.done: produced by"):
        job.run(dataclasses.replace(cfg, output=str(output), seed=4))


def test_summary_names_tokens_device_seconds_and_the_projection(rephrased):
    cfg, summary = rephrased
    cost = summary["cost_now"]
    assert summary["prompt_tokens"] == cost["prompt_tokens"] > 0
    assert summary["generated_tokens"] == cost["generated_tokens"] > 0
    assert cost["prefill_device_s"] > 0 and cost["decode_device_s"] > 0
    assert cost["generated_tokens_per_device_s"] > 0
    assert 0 < cost["useful_row_step_fraction"] <= 1
    assert 0 < cost["attended_position_fraction"] <= 1
    assert summary["projection"]["records_left"] == 0
    assert summary["projection"]["device_hours_left"] == 0


def test_dry_run_estimates_the_pool_and_writes_nothing(rephrased, tmp_path):
    from megadoc.synth import executor

    cfg, summary = rephrased
    estimate = executor.run(dataclasses.replace(cfg, output=str(tmp_path / "new"), dry_run=7))
    assert not (tmp_path / "new").exists()
    assert estimate["documents_sampled"] == estimate["documents_total"] == 7
    projected = estimate["projected"]  # all documents sampled: the same tokens as the job
    assert projected["generated_tokens"] == summary["generated_tokens"]
    assert projected["prompt_tokens"] == summary["prompt_tokens"]
    assert projected["records"] == 14 and projected["device_s"] > 0
    half = executor.run(dataclasses.replace(cfg, output=str(tmp_path / "new"), dry_run=3))
    assert half["documents_sampled"] == 3 and half["projected"]["generated_tokens"] > 0


def test_a_mistyped_setting_writes_nothing_and_the_corrected_rerun_runs(rephrased):
    cfg, _ = rephrased
    output = os.path.join(os.path.dirname(cfg.output), "mistyped")
    with pytest.raises(ValueError, match="top_p"):
        job.run(dataclasses.replace(cfg, output=output, top_p=9.0))
    assert not os.path.exists(output)
    summary = job.run(dataclasses.replace(cfg, output=output, top_p=0.9))
    assert summary["shards_done"] == summary["shards_total"] == 3


def test_a_megadoc_run_is_a_generator_with_its_stores_tokenizer(rephrased, generator_dir):
    """The generator loads through train.pretrained: the same weights as a megadoc workdir
    (checkpoint + the tokenizer its store recorded) give the same records."""
    import jax.numpy as jnp

    from megadoc.data import store as store_lib
    from megadoc.train import checkpoint
    from megadoc.train import config as config_lib

    cfg, _ = rephrased
    workdir = os.path.join(os.path.dirname(cfg.output), "run")
    config, params = hf.load(generator_dir)
    mgr = checkpoint.manager(workdir)
    checkpoint.save(mgr, {"step": jnp.int32(1), "params": params},
                    {"model": config_lib.to_dict(config)})
    mgr.wait_until_finished()
    mgr.close()
    store = os.path.join(workdir, "store")
    writer = store_lib.StoreWriter(store, 4)
    writer.append(np.zeros((1, 5), np.int32), np.ones((1, 5), np.int32))
    writer.finish({"tokenizer_path": generator_dir, "num_tokens": 4, "recipe": "real"})
    checkpoint.save_json(os.path.join(workdir, "config.json"), {"data": {"real": store}})
    output = os.path.join(os.path.dirname(cfg.output), "from_run")
    job.run(dataclasses.replace(cfg, generator=workdir, output=output))
    key = lambda r: (r["doc_id"], r["sample"])
    texts = lambda out: [(key(r), r["text"], r["finish_reason"])
                         for r in sorted(_records(out), key=key)]
    assert texts(output) == texts(cfg.output)


def test_latent_thoughts_through_the_flags(generator_dir, templates, tmp_path, monkeypatch):
    from experiments import synthesize

    split_offsets = split.split_offsets

    def fail_on_doc3(tokenizer, text, splits):
        if text.startswith(SENTENCES[3]):
            raise RuntimeError("a document that breaks the pipeline")
        return split_offsets(tokenizer, text, splits)

    monkeypatch.setattr(split, "split_offsets", fail_on_doc3)

    docs = _docs(tmp_path / "docs.jsonl", n=4)
    argv = ["synthesize", "--method=latent_thoughts", f"--generator={generator_dir}",
            f"--docs={docs}", f"--output={tmp_path / 'out'}", "--splits=3",
            "--max_new_tokens=10", "--temperature=0.7", "--top_p=0.9", "--top_k=40", "--seed=5",
            "--batch_size=4",
            "--shard_size=3", f"--template={templates['latent_thoughts']}", "--tensor_parallel=2",
            "--process_id=0", "--num_processes=1"]
    synthesize.FLAGS.unparse_flags()
    synthesize.FLAGS(argv)
    cfg = synthesize.build_config()
    assert cfg == job.JobConfig(
        method="latent_thoughts", generator=generator_dir, docs=docs, output=str(tmp_path / "out"),
        splits=3, max_new_tokens=10, temperature=0.7, top_p=0.9, top_k=40, seed=5, batch_size=4,
        shard_size=3,
        template=templates["latent_thoughts"], tensor_parallel=2, process_id=0, num_processes=1)
    synthesize.main([])
    records = _records(cfg.output)
    tok = tokenizer_lib.load(generator_dir)
    texts = {d["id"]: d["text"] for d in docs_lib.read_docs(docs)}
    assert len(records) == 4 * 3
    for doc_id, text in texts.items():
        rs = [r for r in records if r["doc_id"] == doc_id]
        assert [r["sample"] for r in rs] == [0, 1, 2]
        assert all(r["method"] == "latent_thoughts" and r["seed"] == 5 for r in rs)
        assert all(r["sampling"] == {"temperature": 0.7, "top_p": 0.9, "top_k": 40,
                                     "max_new_tokens": 10} for r in rs)
        if doc_id == "doc2":
            assert {r["finish_reason"] for r in rs} == {"empty_document"}
        elif doc_id == "doc3":  # one bad document is recorded as such; the others go on
            assert {r["finish_reason"] for r in rs} == {"error"}
        else:
            assert [r["offset"] for r in rs] == split_offsets(tok, text, 3)
            assert {r["finish_reason"] for r in rs} <= {"eos", "length"}
    synthesize.FLAGS.unparse_flags()


def test_flag_misuse_is_a_usage_error():
    from absl import app
    from experiments import synthesize

    required = ["--generator=g", "--docs=d", "--output=o"]
    for argv in (["s", "--method=rephrase", *required, "--splits=2"],
                 ["s", "--method=latent_thoughts", *required, "--generations=2"],
                 ["s", "--method=rephrase", "--generator=g", "--docs=d"]):
        synthesize.FLAGS.unparse_flags()
        synthesize.FLAGS(argv)
        with pytest.raises(app.UsageError):
            synthesize.build_config()
    synthesize.FLAGS.unparse_flags()


def test_generator_without_tokenizer_and_broken_template(generator_dir, templates, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(generator_dir, bare, ignore=shutil.ignore_patterns("*.model"))
    cfg = job.JobConfig(method="rephrase", generator=str(bare), docs=_docs(tmp_path / "d.jsonl"),
                        output=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="no tokenizer"):
        job.run(cfg)
    broken = tmp_path / "broken.txt"
    broken.write_text("Summarise {document} for {audience}\n")
    with pytest.raises(ValueError, match=f"{broken}: unknown placeholder"):
        job.run(dataclasses.replace(cfg, generator=generator_dir, template=str(broken)))


def test_sigkill_mid_job_then_restart_gives_each_record_exactly_once(generator_dir, templates,
                                                                      tmp_path):
    docs = tmp_path / "docs.jsonl"
    with open(docs, "w") as f:
        for i in range(12):  # 6 shards: the kill lands after the first, before the last
            f.write(json.dumps({"id": f"d{i}", "text": SENTENCES[i % 4] * (1 + i % 2)}) + "\n")
    output = tmp_path / "out"
    cmd = [sys.executable, "-m", "experiments.synthesize", "--method=rephrase",
           f"--generator={generator_dir}", f"--docs={docs}", f"--output={output}",
           "--generations=2", "--max_new_tokens=32", "--batch_size=2", "--shard_size=2",
           f"--template={templates['rephrase']}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    marker = output / "_job" / "shard-00000.done"
    deadline = time.time() + 120
    while not marker.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert marker.exists(), first.stdout.read().decode()[-2000:]
    done_before = sorted(p.name for p in (output / "_job").glob("*.done"))
    assert len(done_before) < 6, "the job ended before the kill: nothing left to resume"
    kept = (output / "shard-00000.jsonl").stat().st_mtime_ns

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{len(done_before)} already done" in second.stdout
    assert (output / "shard-00000.jsonl").stat().st_mtime_ns == kept  # finished shards kept
    records = _records(output)
    counts = collections.Counter((r["doc_id"], r["sample"]) for r in records)
    assert set(counts) == {(f"d{i}", s) for i in range(12) for s in range(2)}
    assert set(counts.values()) == {1}


def test_rerun_verifies_finished_shards_and_redoes_damaged_ones(rephrased, tmp_path, capsys):
    cfg, _ = rephrased
    output = tmp_path / "out"
    shutil.copytree(cfg.output, output)
    want = _records(output)
    shard0, shard1 = output / "shard-00000.jsonl", output / "shard-00001.jsonl"
    shard0.write_bytes(shard0.read_bytes().replace(b"doc", b"dog", 1))  # corrupted, same count
    shard1.unlink()  # deleted
    kept = (output / "shard-00002.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    summary = job.run(dataclasses.replace(cfg, output=str(output)))
    out = capsys.readouterr().out
    assert "shard 0 was finished but" in out and "does not match the checksum" in out
    assert "shard 1 was finished but" in out and "shard-00001.jsonl is missing" in out
    assert summary["shards_written_now"] == 2 and summary["records"] == len(want)
    assert _records(output) == want
    assert (output / "shard-00002.jsonl").stat().st_mtime_ns == kept


def test_progress_counts_sequences_still_decoding_and_projects_the_rest(tmp_path, capsys):
    """A decode call can run for minutes with no document done: the progress line counts the
    tokens of unfinished sequences; before any record its ETA spends the rest of the token
    budget at that rate, after some at their tokens per record. It carries the cost."""
    from megadoc.synth import sampler as sampler_lib

    fake = dataclasses.make_dataclass("S", ["generated_tokens", "tokens_in_flight", "cost"])(
        30, 90, sampler_lib.Cost(devices=2, prompt_tokens=50, decode_s=4.0))
    path = str(tmp_path / "progress.jsonl")
    progress = job.Progress(path, {(0, 0): 2, (0, 1): 2}, 150, fake)
    progress.start -= 10.0  # as if it had run for 10 s
    progress.report()
    progress.record_done(job.Origin(0, 0, "a"))
    progress.record_done(job.Origin(0, 0, "a"))
    progress.report()
    first, second = [json.loads(x) for x in open(path)]
    assert first["docs_done"] == 0 and first["generated_tokens"] == 120
    assert first["tokens_per_s"] == pytest.approx(12.0, rel=0.01)
    assert first["eta_s"] == pytest.approx((600 - 120) / 12.0, rel=0.01)
    assert second["docs_done"] == 1 and second["records_done"] == 2
    # 2 records left at 30 / 2 tokens each, less the 90 in flight: nothing left to project
    assert second["eta_s"] == 0
    assert first["prompt_tokens"] == 50 and first["decode_device_s"] == 8.0
    assert first["device_hours_left"] == pytest.approx(2 * 40.0 / 3600, abs=1e-3)
    assert "50 prompt + 120 generated tokens" in capsys.readouterr().out
