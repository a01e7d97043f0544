"""SBP end to end at the smallest scale: pairs → pair store → conditional training from the
base → `sbp` synthesis (one record per document, exactly once) → students at equal compute →
table and plot; and the `experiments.synthesize --method=sbp` flags."""
import json

import pytest
from absl import app

from megadoc.pipelines import sbp
from megadoc.data import docs as docs_lib
from megadoc.data import store as store_lib
from sbp_fixtures import make_embedding_model, planted_corpus


def _config(tmp_path, **kw) -> sbp.SBPConfig:
    docs, _ = planted_corpus()  # a0, b0, a1, b1, ...: paraphrase pairs, then dup0
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[:24]))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[24:30]))
    return sbp.SBPConfig(**{**dict(
        base=make_embedding_model(str(tmp_path / "base")), docs=str(tmp_path / "docs.jsonl"),
        val=str(tmp_path / "val.jsonl"), workdir=str(tmp_path / "run"), real_docs=12,
        seq_len=128, threshold=0.5, cpt_epochs=1, max_new_tokens=12, synth_batch=8, mix=0.5,
        student_epochs=1, student_hidden=32, student_layers=1, global_batch=8), **kw})


def _real_ids(cfg) -> list[str]:
    return sorted(d["id"] for d in docs_lib.read_docs(f"{cfg.workdir}/corpus/real.jsonl"))


def test_pairs_conditional_training_and_sbp_synthesis(tmp_path):
    """The fast reduced run: every stage up to the synthetic store."""
    cfg = _config(tmp_path)
    corpus = sbp.split_corpus(cfg)
    assert (corpus["real_docs"], corpus["oracle_docs"]) == (12, 24)
    assert sbp.pair_documents(cfg)["pairs"] == 12  # a0..a5 with b0..b5, both ways
    assert sbp.build_pair_store(cfg)["pairs"] == 12
    conditional = sbp.train_conditional(cfg)
    assert conditional["steps"] == 2
    run = json.loads((tmp_path / "run" / "conditional" / "summary.json").read_text())
    assert run["config"]["objective"] == "masked_language_model"
    assert run["config"]["init"] == cfg.base
    synthesis = sbp.synthesize(cfg)
    records = list(docs_lib.read_generations(f"{cfg.workdir}/synth"))
    assert sorted(r["doc_id"] for r in records) == _real_ids(cfg)  # each document once
    assert {r["method"] for r in records} == {"sbp"} and synthesis["records"] == 12
    assert all(r["template"] is None and r["generator"] == "conditional" for r in records)
    assert sbp.synthesize(cfg)["records"] == 12  # a rerun finds every shard done
    sbp.prepare_store(cfg, "sbp", f"{cfg.workdir}/corpus/real.jsonl", f"{cfg.workdir}/synth")
    synthetic = store_lib.open(f"{cfg.workdir}/stores/sbp").metadata
    assert synthetic["counts"]["documents"] == 12  # the samples alone: no real text in it


@pytest.mark.slow
def test_end_to_end_with_students_table_and_plot(tmp_path):
    cfg = _config(tmp_path)
    results = sbp.run(cfg)
    rows = {r["student"]: r for r in results.students}
    assert set(rows) == {"real", "sbp", "oracle"}
    assert rows["real"]["steps"] == rows["sbp"]["steps"]  # equal compute
    assert rows["sbp"]["windows"]["synthetic_windows"] == rows["sbp"]["steps"] * 8 // 2
    assert rows["oracle"]["real_docs"] == 24 and rows["real"]["real_docs"] == 12
    for name in ("results.md", "results.json", "val_loss.png"):
        assert (tmp_path / "run" / name).exists()
    assert "| sbp | 12 |" in (tmp_path / "run" / "results.md").read_text()
    again = sbp.run(cfg)  # every stage done: nothing reruns, the same table
    assert again.students == results.students


def test_synthesize_flags_for_sbp():
    from experiments import synthesize

    f = synthesize.FLAGS
    f.unparse_flags()
    try:
        f(["synthesize", "--method=sbp", "--generator=RUN", "--docs=D", "--output=O",
           "--generations_per_doc=2"])
        cfg = synthesize.build_config()
        assert (cfg.method, cfg.generations, cfg.template) == ("sbp", 2, None)
        f.unparse_flags()
        f(["synthesize", "--method=sbp", "--generator=RUN", "--docs=D", "--output=O",
           "--template=T"])
        with pytest.raises(ValueError, match="takes no template"):
            synthesize.build_config()
        f.unparse_flags()
        f(["synthesize", "--method=sbp", "--generator=RUN", "--docs=D", "--output=O",
           "--splits=2"])
        with pytest.raises(app.UsageError, match="--splits is for"):
            synthesize.build_config()
    finally:
        f.unparse_flags()
