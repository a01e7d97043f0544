"""experiments.knowledge end to end on the QuALITY fixture with a tiny random model: synthesis
(QA + focal rewrites), nested volumes, CPT per volume, closed-book and RAG accuracy, the plot."""
import json
import os

import pytest

from megadoc.synth import knowledge
from knowledge_fixtures import make_hf_model


@pytest.mark.slow
def test_knowledge_end_to_end(tmp_path, monkeypatch):
    from experiments import knowledge as driver
    from megadoc.pipelines import knowledge as knowledge_pipeline

    model = make_hf_model(str(tmp_path / "model"), max_seq_len=2048)  # whole articles fit
    # A random model never writes "Question: …\nAnswer: …"; take its text as the question
    # (one per sample) so the focal stage has questions to rewrite for.
    monkeypatch.setattr(knowledge, "parse_qa", lambda text: (f"Why {text.strip()}?", "-"))
    workdir = tmp_path / "k"
    driver.FLAGS.unparse_flags()
    driver.FLAGS(["knowledge", f"--generator={model}", f"--workdir={workdir}", "--volumes=1,2",
                  "--max_new_tokens=8", "--seq_len=64", "--epochs=1", "--global_batch=8",
                  "--lr=1e-3", "--top_k=1", "--batch_size=4"])
    try:
        results = knowledge_pipeline.run(driver.build_config()).as_dict()
    finally:
        driver.FLAGS.unparse_flags()
    assert set(results["base"]) == {"closed_book", "rag"}
    assert all(results["base"][mode]["n"] == 12 for mode in ("closed_book", "rag"))
    v1, v2 = results["volumes"]
    assert (v1["volume"], v2["volume"]) == (1, 2)
    assert v1["records"] == 3 * 2 and v2["records"] == 3 * 2 * 2  # qa + focal per article
    assert 0 < v1["synthetic_tokens"] < v2["synthetic_tokens"]
    for v in (v1, v2):
        for mode in ("closed_book", "rag"):
            assert 0 <= v[mode]["accuracy"] <= 1 and v[mode]["n"] == 12
        with open(workdir / "runs" / f"volume-{v['volume']}" / "qa_eval.json") as f:
            assert json.load(f)["rag"]["n"] == 12
    with open(workdir / "generations" / "volume-1.jsonl") as f1, \
            open(workdir / "generations" / "volume-2.jsonl") as f2:
        small = {(r["method"], r["doc_id"], r["sample"]) for r in map(json.loads, f1)}
        large = {(r["method"], r["doc_id"], r["sample"]) for r in map(json.loads, f2)}
    assert small < large
    assert os.path.getsize(workdir / "accuracy.png") > 0
    assert set(results["fits"]) == {"closed_book", "rag"}
    assert set(results["stage_seconds"]) == {"synthesis", "base evaluation"} | {
        f"volume {v} {stage}" for v in (1, 2) for stage in ("prepare", "CPT", "evaluation")}
