"""Knowledge synthesis: QA pairs, focal rewrites, EntiGraph stages; parsing with a status for
malformed output; exactly-once records after kill -9."""
import collections
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from megadoc.analysis import quality
from megadoc.data import methods
from megadoc.synth import job, knowledge
from knowledge_fixtures import make_hf_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_qa_parsing():
    assert methods.parse_qa("Sure!\nQuestion: Who built it?\n Answer: Ilse Varga.\n") == \
        ("Who built it?", "Ilse Varga.")
    for bad in ("Who built it? Ilse Varga.", "Question: Who?\nAnswer:   ", "Answer: x\n"):
        assert methods.parse_qa(bad) is None
    text, reason, fields = knowledge.finish("qa", "Question: Q?\nAnswer: A.", "eos", None)
    assert (text, reason, fields) == ("Question: Q?\nAnswer: A.", "eos",
                                      {"question": "Q?", "answer": "A."})
    assert knowledge.finish("qa", "no pair here", "length", None) == \
        ("", "malformed", {"raw": "no pair here"})


def test_entity_parsing():
    out = 'Here: {"summary": "A clock.", "entities": ["clock", " Varga ", "clock", ""]} done'
    assert methods.parse_entities(out) == ("A clock.", ["clock", "Varga"])
    for bad in ('{"summary": "x"}', '{"summary": "x", "entities": []}', "[1, 2]", "{oops}",
                '{"summary": 3, "entities": ["a"]}'):
        assert methods.parse_entities(bad) is None
    assert knowledge.finish("entigraph_entities", out, "eos", None) == \
        ("A clock.", "eos", {"entities": ["clock", "Varga"]})


def test_entity_groups_enumerate_all_pairs_before_any_triple_under_the_budget():
    ents = ["a", "b", "c", "d", "e"]
    groups = knowledge.entity_groups(ents, budget=25, seed=0, key=7)
    assert groups == knowledge.entity_groups(ents, budget=25, seed=0, key=7)
    assert groups != knowledge.entity_groups(ents, budget=25, seed=1, key=7)
    # EntiGraph's order: all 10 pairs, then the 10 triples (each size shuffled), then nothing
    assert sorted(groups[:10]) == list(itertools.combinations(ents, 2))
    assert sorted(groups[10:20]) == list(itertools.combinations(ents, 3))
    assert groups[20:] == [None] * 5
    assert groups[:10] != sorted(groups[:10])  # shuffled: a small budget draws pairs evenly
    # a budget is a prefix of the same enumeration: smaller budgets are subsets of larger
    assert knowledge.entity_groups(ents, budget=12, seed=0, key=7) == groups[:12]
    assert knowledge.entity_groups(["a"], 3, 0, 0) == [None, None, None]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("knowledge_synth")
    model = make_hf_model(str(d / "gen"), max_seq_len=1024)
    docs = d / "docs.jsonl"
    articles = quality.read_quality(quality.FIXTURE)
    with open(docs, "w") as f:
        for a in articles:
            for i, para in enumerate(a.text.split("\n\n")[:2]):
                f.write(json.dumps({"id": f"{a.id}-{i}", "text": para}) + "\n")
    # Hand-written inputs of the conditioned methods: questions for some documents, entities
    # (one list too short for a triple) for others.
    questions = d / "questions"
    questions.mkdir()
    with open(questions / "shard-00000.jsonl", "w") as f:
        for doc_id, sample, q in [("fixture-vell-0", 0, "What is a salt lantern?"),
                                  ("fixture-vell-0", 1, "Where is Vell?"),
                                  ("fixture-orrin-1", 0, "Why no minute hand?")]:
            f.write(json.dumps({"doc_id": doc_id, "method": "qa", "sample": sample, "text": "",
                                "question": q, "finish_reason": "eos"}) + "\n")
    entities = d / "entities"
    entities.mkdir()
    with open(entities / "shard-00000.jsonl", "w") as f:
        for doc_id, ents in [("fixture-vell-0", ["Vell", "Marrow River", "salt lantern", "sea"]),
                             ("fixture-tarrow-1", ["lamp line", "volunteers"])]:
            f.write(json.dumps({"doc_id": doc_id, "method": "entigraph_entities", "sample": 0,
                                "text": "summary", "entities": ents,
                                "finish_reason": "eos"}) + "\n")
    return {"model": model, "docs": str(docs), "questions": str(questions),
            "entities": str(entities), "dir": d, "cache": str(d / "xla_cache")}


def _records(output):
    out = []
    for name in sorted(os.listdir(output)):
        if name.endswith(".jsonl") and not name.startswith("."):  # not a killed write's temp
            with open(os.path.join(output, name)) as f:
                out += [json.loads(line) for line in f]
    return out


def _run(setup, name, **kw):
    cfg = job.JobConfig(generator=setup["model"], docs=setup["docs"],
                        output=str(setup["dir"] / name), max_new_tokens=8, batch_size=4,
                        shard_size=2, **kw)
    job.run(cfg)
    return _records(cfg.output)


def test_qa_records_parse_or_say_malformed(setup):
    records = _run(setup, "qa", method="qa", generations=2)
    assert collections.Counter(r["doc_id"] for r in records) == {
        f"{a}-{i}": 2 for a in ("fixture-vell", "fixture-orrin", "fixture-tarrow") for i in (0, 1)}
    for r in records:
        assert r["method"] == "qa" and r["template"].startswith("qa@")
        if r["finish_reason"] == "malformed":
            assert r["text"] == "" and r["raw"] and "question" not in r
        else:
            assert r["text"] == methods.qa_text(r["question"], r["answer"])


def test_focal_rewrites_one_per_question_and_generation(setup):
    records = _run(setup, "focal", method="focal_rewrite", generations=2,
                   questions=setup["questions"])
    by_doc = collections.defaultdict(list)
    for r in records:
        by_doc[r["doc_id"]].append(r)
    assert len(by_doc) == 6
    vell = sorted(by_doc["fixture-vell-0"], key=lambda r: r["sample"])
    assert [(r["sample"], r["question"]) for r in vell] == [
        (0, "What is a salt lantern?"), (1, "What is a salt lantern?"), (2, "Where is Vell?"),
        (3, "Where is Vell?")]
    assert all(r["finish_reason"] in ("eos", "length") and r["text"] for r in vell)
    assert len(by_doc["fixture-orrin-1"]) == 2
    assert [(r["sample"], r["finish_reason"], r["text"]) for r in by_doc["fixture-tarrow-0"]] == \
        [(0, "no_questions", "")]


def test_entigraph_relations_for_seeded_pairs_and_triples(setup):
    records = _run(setup, "relations", method="entigraph_relations", relations=5,
                   entities=setup["entities"])
    by_doc = collections.defaultdict(list)
    for r in records:
        by_doc[r["doc_id"]].append(r)
    assert all(len(rs) == 5 for rs in by_doc.values()) and len(by_doc) == 6
    vell = sorted(by_doc["fixture-vell-0"], key=lambda r: r["sample"])
    groups = knowledge.entity_groups(["Vell", "Marrow River", "salt lantern", "sea"], 5, 0,
                                     job.sample_stream("fixture-vell-0"))
    assert [tuple(r["entities"]) for r in vell] == groups
    assert all(len(g) == 2 for g in groups)  # 6 pairs of 4 entities: no triple within 5
    assert all(r["finish_reason"] in ("eos", "length") and r["text"] for r in vell)
    tarrow = sorted(by_doc["fixture-tarrow-1"], key=lambda r: r["sample"])
    # two entities: one pair, no triple, then nothing for the rest of the budget
    assert [r["finish_reason"] for r in tarrow[1:]] == ["too_few_entities"] * 4
    assert tarrow[0]["entities"] == ["lamp line", "volunteers"]
    assert {r["finish_reason"] for r in by_doc["fixture-orrin-0"]} == {"no_entities"}


def test_entity_lists_are_sampled_again_until_they_parse_at_most_attempts_times(setup,
                                                                               monkeypatch):
    calls = []
    finish = knowledge.finish

    def parse_from_the_second_round(method, text, reason, fields):  # 6 docs: round 1 fails
        calls.append(text)
        if len(calls) <= 6:
            return "", knowledge.MALFORMED, {"raw": text}
        return finish(method, '{"summary": "s", "entities": ["x", "y"]}', reason, fields)

    monkeypatch.setattr(knowledge, "finish", parse_from_the_second_round)
    records = _run(setup, "entities_retry", method="entigraph_entities", attempts=3)
    assert len(calls) == 12 and len(records) == 6  # one record per document, whatever it took
    assert all((r["sample"], r["attempts"], r["entities"]) == (0, 2, ["x", "y"])
               for r in records)
    calls.clear()
    once = _run(setup, "entities_once", method="entigraph_entities", attempts=1)
    assert len(calls) == 6 and {(r["finish_reason"], r["attempts"]) for r in once} == \
        {(knowledge.MALFORMED, 1)}


def test_entigraph_both_stages_through_the_flags(setup):
    from experiments import synthesize

    out = setup["dir"] / "eg"
    synthesize.FLAGS.unparse_flags()
    synthesize.FLAGS(["synthesize", "--method=entigraph", f"--generator={setup['model']}",
                      f"--docs={setup['docs']}", f"--output={out}", "--relations=3",
                      "--max_new_tokens=8", "--batch_size=4"])
    try:
        stage1, stage2 = synthesize.build_configs()
        try:
            synthesize.main([])
        except ValueError as e:  # stage 1 parsed no document's entities: stage 2 is refused
            refused = str(e)
        else:
            refused = None
    finally:
        synthesize.FLAGS.unparse_flags()
    assert stage2.entities == stage1.output == str(out / "entities")
    entities = _records(out / "entities")
    assert len(entities) == 6
    parsed = {r["doc_id"] for r in entities if r["finish_reason"] != "malformed"}
    for r in entities:  # a random tiny model rarely writes JSON: malformed, with its raw text
        assert ("entities" in r) == (r["doc_id"] in parsed) and ("raw" in r) != ("entities" in r)
    if not parsed:
        assert refused.startswith(f"--entities={out / 'entities'}: no entities for any of the "
                                  f"6 documents")
        assert not (out / "relations").exists()
        return
    relations = _records(out / "relations")
    assert refused is None and len(relations) == 6 * 3
    assert {r["finish_reason"] for r in relations if r["doc_id"] not in parsed} <= \
        {"no_entities"}


def test_flag_misuse(setup):
    from absl import app
    from experiments import synthesize

    base = ["s", f"--generator={setup['model']}", "--docs=d", "--output=o"]
    for extra in (["--method=qa", "--splits=2"], ["--method=focal_rewrite"],
                  ["--method=qa", "--questions=q"],
                  ["--method=entigraph_relations", "--relations=1"],
                  ["--method=qa", "--attempts=2"],
                  ["--method=entigraph", "--template=t.txt"]):
        synthesize.FLAGS.unparse_flags()
        synthesize.FLAGS(base + extra)
        with pytest.raises((app.UsageError, ValueError)):
            synthesize.build_configs()
    synthesize.FLAGS.unparse_flags()


@pytest.mark.parametrize("method", ["qa", "focal_rewrite", "entigraph_relations"])
def test_sigkill_then_restart_gives_each_record_exactly_once(setup, tmp_path, method):
    docs = tmp_path / "docs.jsonl"
    articles = quality.read_quality(quality.FIXTURE)
    with open(docs, "w") as f:
        for a in articles:
            for i, para in enumerate(a.text.split("\n\n")):
                f.write(json.dumps({"id": f"{a.id}-{i}", "text": para}) + "\n")
    output = tmp_path / "out"
    extra = {"qa": ["--generations=3"],
             "focal_rewrite": ["--generations=2", f"--questions={setup['questions']}"],
             "entigraph_relations": ["--relations=5", f"--entities={setup['entities']}"]}[method]
    cmd = [sys.executable, "-m", "experiments.synthesize", f"--method={method}",
           f"--generator={setup['model']}", f"--docs={docs}", f"--output={output}",
           "--max_new_tokens=24", "--batch_size=2", "--shard_size=1", *extra]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",
               JAX_COMPILATION_CACHE_DIR=setup["cache"],
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    job_dir = output / "_job"
    deadline = time.time() + 300
    while (not job_dir.exists() or not list(job_dir.glob("shard-*.done"))) and first.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = list(job_dir.glob("shard-*.done"))
    assert done_before, first.stdout.read().decode()[-2000:]
    num_docs = sum(len(a.text.split("\n\n")) for a in articles)
    assert len(done_before) < num_docs, "the job finished before it could be killed"

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{len(done_before)} already done" in second.stdout
    counts = collections.Counter((r["doc_id"], r["sample"]) for r in _records(output))
    assert set(counts.values()) == {1}
    per_doc = collections.Counter(doc_id for doc_id, _ in counts)
    assert len(per_doc) == num_docs
    want = {"qa": lambda d: 3, "entigraph_relations": lambda d: 5,
            "focal_rewrite": lambda d: {"fixture-vell-0": 4, "fixture-orrin-1": 2}.get(d, 1)}
    assert all(n == want[method](d) for d, n in per_doc.items())


def test_a_killed_writes_temp_file_is_not_read_as_generations(tmp_path):
    from megadoc.data import docs as docs_lib

    (tmp_path / "shard-00000.jsonl").write_text(json.dumps(
        {"doc_id": "a", "method": "qa", "sample": 0, "text": "Question: q\nAnswer: a"}) + "\n")
    (tmp_path / ".tmp-x1y2-shard-00000.jsonl").write_text("half a reco")
    assert [r["doc_id"] for r in docs_lib.read_generations(str(tmp_path))] == ["a"]


def test_prepare_mixes_generation_directories_of_any_method(setup, tmp_path):
    from megadoc.data import prepare as prepare_lib
    from megadoc.data import store as store_lib

    dirs = []
    for method, texts in [("qa", ["Question: Where is Vell?\nAnswer: On a shelf of rock."]),
                          ("focal_rewrite", ["Vell lies where the Marrow River meets the sea.",
                                             ""])]:
        d = tmp_path / method
        d.mkdir()
        with open(d / "shard-00000.jsonl", "w") as f:
            for i, text in enumerate(texts):
                f.write(json.dumps({"doc_id": "fixture-vell-0", "method": method, "sample": i,
                                    "text": text, "finish_reason": "eos" if text else
                                    "malformed"}) + "\n")
        dirs.append(str(d))
    meta = prepare_lib.prepare(prepare_lib.PrepareConfig(
        docs=setup["docs"], generations=",".join(dirs), recipe="simple", tokenizer=setup["model"],
        seq_len=16, seed=0, output=str(tmp_path / "store")))
    assert meta["counts"]["generations_used"] == 2 and meta["counts"]["docs_used"] == 6
    assert store_lib.open(str(tmp_path / "store")).metadata["recipe"] == "simple"
