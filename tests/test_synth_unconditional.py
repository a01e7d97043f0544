"""Self-distillation end to end on CPU: a tiny trained student samples documents from BOS
(alone and as an ensemble), and a new student trains on them through the ordinary loop."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import pytest

from data_fixtures import corpus, train_tokenizer
from experiments import distill as distill_exp
from experiments import synthesize as synth_exp
from megadoc.data import docs, store
from megadoc.data.prepare import PrepareConfig, prepare
from megadoc.models import llama
from megadoc.synth import unconditional
from megadoc.train import loop
from train_fixtures import train_config


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    d = tmp_path_factory.mktemp("student")
    source = corpus(40, seed=3)
    docs.write_jsonl(str(d / "docs.jsonl"), source)
    tok = train_tokenizer(str(d / "tok.model"), [x["text"] for x in source])
    prepare(PrepareConfig(docs=str(d / "docs.jsonl"), recipe="real", tokenizer=tok.path, seq_len=32,
                          seed=0, output=str(d / "real")))
    loop.train(train_config(["--preset=tiny", f"--workdir={d / 'run'}", f"--real={d / 'real'}",
                             "--epochs=2", "--lr=1e-2"]))
    return {"dir": d, "tok": tok, "run": str(d / "run"), "real": str(d / "real")}


def synthesize(*argv):
    synth_exp.FLAGS.unparse_flags()
    synth_exp.FLAGS(["prog", *argv])
    synth_exp.main(["prog"])


@pytest.mark.slow  # two training runs
def test_unconditional_samples_are_shared_schema_records_and_distil_through_the_loop(student, capsys):
    d = student["dir"]
    common = ["--method=unconditional", f"--tokenizer={student['tok'].path}", "--num_documents=6",
              "--max_new_tokens=12", "--batch_size=4", "--shard_size=4", "--seed=5"]
    synthesize(*common, f"--generator={student['run']}", f"--output={d / 'self'}")
    bad = docs.BadRecords()
    records = list(docs.read_generations(str(d / "self"), bad))
    assert not bad.counts and len(records) == 6
    assert [r["doc_id"] for r in records] == [f"unconditional-{i:08d}" for i in range(6)]
    assert {r["method"] for r in records} == {"unconditional"} and {r["sample"] for r in records} == {0}
    assert {r["finish_reason"] for r in records} <= {"eos", "length"}
    assert all(r["seed"] == 5 and r["generator"] == student["run"] for r in records)
    assert sum(len(r["text"]) for r in records) > 0

    # Two identical members average to the same logits: the same documents.
    synthesize(*common, f"--generator={student['run']},{student['run']}", f"--output={d / 'ens'}")
    assert [r["text"] for r in docs.read_generations(str(d / "ens"))] == [r["text"] for r in records]

    marker = d / "self" / "_job" / "shard-00000.done"
    stamp = os.stat(marker).st_mtime_ns
    capsys.readouterr()
    synthesize(*common, f"--generator={student['run']}", f"--output={d / 'self'}")
    assert "2 already done" in capsys.readouterr().out and os.stat(marker).st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings"):
        synthesize(*common[:-1], "--seed=6", f"--generator={student['run']}", f"--output={d / 'self'}")

    distill_exp.FLAGS.unparse_flags()
    distill_exp.FLAGS(["prog", f"--texts={d / 'self'}", "--preset=tiny", f"--workdir={d / 'distilled'}",
                       f"--real={student['real']}", "--mix=0.5", "--epochs=1",
                       f"--val=iid={student['real']}"])
    distill_exp.main()
    summary = json.loads((d / "distilled" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["eval"]["iid"] > 0
    texts = str(d / "distilled" / "texts" / "store")
    assert summary["config"]["data"]["synthetic"] == texts and summary["config"]["data"]["mix"] == 0.5
    made = store.open(texts).metadata
    assert made["counts"]["docs_used"] == sum(1 for r in records if r["text"])
    assert made["tokenizer_fingerprint"] == student["tok"].fingerprint


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_documents must be >= 1"):
        unconditional.UnconditionalConfig(output=str(tmp_path), generator="g", num_documents=0)
    synth_exp.FLAGS.unparse_flags()
    synth_exp.FLAGS(["prog", "--method=unconditional", "--generator=g", f"--output={tmp_path}",
                     "--tokenizer=t", "--num_documents=3", "--docs=d"])
    with pytest.raises(Exception, match="takes no --docs"):
        synth_exp.build_unconditional_config()


def test_an_ensemble_of_identical_members_draws_what_one_member_draws(tmp_path, capsys):
    """Unconditional documents come from the synthesis job's sampler (members' logits averaged)
    and shard writer: two identical members give one member's documents, and a rerun keeps the
    shards whose checksummed markers are intact."""
    config = dataclasses.replace(llama.preset("tiny"), dtype="float32", max_seq_len=64)
    params = llama.init(config, jax.random.PRNGKey(0))
    tokenizer = dataclasses.make_dataclass("Tok", ["bos_id", "eos_id", "fingerprint"])(0, 1, "t")
    tokenizer.decode = lambda ids: " ".join(map(str, ids))
    cfg = unconditional.UnconditionalConfig(output=str(tmp_path / "one"), generator="g",
                                            num_documents=5, max_new_tokens=12, batch_size=2,
                                            shard_size=2, seed=5)
    one = jax.tree.map(lambda x: x[None], params)
    two = jax.tree.map(lambda x: jnp.stack([x, x]), params)
    unconditional.run(cfg, config, one, tokenizer)
    summary = unconditional.run(dataclasses.replace(cfg, output=str(tmp_path / "two")), config,
                                two, tokenizer)
    texts = {name: [r["text"] for r in docs.read_generations(str(tmp_path / name))]
             for name in ("one", "two")}
    assert texts["one"] == texts["two"] and len(texts["one"]) == 5
    assert len(set(texts["one"])) > 1  # each document its own stream
    assert summary["records"] == 5 and summary["cost_now"]["generated_tokens"] > 0
    capsys.readouterr()
    unconditional.run(cfg, config, one, tokenizer)
    assert "3 already done" in capsys.readouterr().out
