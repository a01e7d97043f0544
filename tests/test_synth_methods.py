"""The synthesis-method registry: a new method is one entry in data/methods.py and one template
file, and the job, prepare, `synthesize --help` and the knowledge pipeline all see it."""
import json
import os
import subprocess
import sys

import pytest

from knowledge_fixtures import make_hf_model
from megadoc.analysis import quality
from megadoc.data import docs as docs_lib
from megadoc.data import methods, prepare, store
from megadoc.synth import job, prompts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = "[system]\nYou write short summaries.\n[user]\nSummarise this:\n{document}\n"


def summary_method(template_path: str) -> methods.Method:
    """What a contributor would add to METHODS for a new method."""
    return methods.Method("summary", template_path, ("document",), ("generations",),
                          ("simple", "stitched"), 16)


@pytest.fixture
def summary(tmp_path, monkeypatch):
    template = tmp_path / "summary.txt"
    template.write_text(TEMPLATE)
    monkeypatch.setitem(methods.METHODS, "summary", summary_method(str(template)))
    return str(template)


def test_every_method_has_one_name_its_template_and_its_fields():
    assert set(methods.METHODS) == {"rephrase", "latent_thoughts", "qa", "focal_rewrite",
                                    "entigraph_entities", "entigraph_relations", "unconditional"}
    for name in methods.prompted():
        path = prompts.builtin_template(name)
        assert os.path.basename(path) == name + ".txt"  # the file is named as the method
        prompts.load_template(path, name)  # exactly the method's placeholders
    assert not set(methods.LEGACY_NAMES) & set(methods.METHODS)
    assert methods.reading("relations") == ["entigraph_relations", "entigraph"]
    assert methods.reading("attempts") == ["entigraph_entities", "entigraph"]
    assert methods.reading("entities") == ["entigraph_relations"]  # the staged one makes its own
    assert methods.from_documents("simple") == ["rephrase", "qa", "entigraph_entities"]


def test_a_new_method_runs_through_synthesis_and_prepare(summary, tmp_path):
    model = make_hf_model(str(tmp_path / "model"), max_seq_len=256)
    articles = quality.read_quality(quality.FIXTURE)[:3]
    docs = str(tmp_path / "docs.jsonl")
    docs_lib.write_jsonl(docs, [{"id": a.id, "text": a.text[:300]} for a in articles])
    out = str(tmp_path / "summaries")
    result = job.run(job.JobConfig(method="summary", generator=model, docs=docs, output=out,
                                   generations=2, batch_size=4))
    records = list(docs_lib.read_generations(out))
    assert result["records"] == len(records) == 6
    assert {r["method"] for r in records} == {"summary"}
    assert all(r["template"].startswith("summary@") for r in records)
    assert all(r["sampling"]["max_new_tokens"] == 16 for r in records)  # the entry's default

    meta = prepare.prepare(prepare.PrepareConfig(
        docs=docs, generations=out, recipe="simple", tokenizer=model, seq_len=32, seed=0,
        output=str(tmp_path / "store")))
    assert meta["counts"]["generations_used"] == 6
    assert store.open(str(tmp_path / "store")).metadata["counts"]["documents"] == 3 + 6


def test_synthesize_help_and_the_knowledge_pipeline_list_a_new_method(tmp_path):
    template = tmp_path / "summary.txt"
    template.write_text(TEMPLATE)
    script = (
        "import runpy, sys\n"
        "from megadoc.data import methods\n"
        f"methods.METHODS['summary'] = methods.Method('summary', {str(template)!r}, "
        "('document',), ('generations',), ('simple', 'stitched'), 16)\n"
        "from megadoc.pipelines import knowledge\n"
        "print('knowledge methods:', ','.join(knowledge.METHODS))\n"
        "sys.argv = ['synthesize', '--help']\n"
        "runpy.run_module('experiments.synthesize', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("knowledge methods: ")[1].split("\n")[0].split(",")
    assert "summary" in listed and "qa" in listed
    method_help = done.stdout.split("--method:")[1].split("--")[0].replace("\n", "")
    assert "summary" in method_help.replace(" ", "")


def test_legacy_record_spellings_read_as_the_one_name(tmp_path):
    path = str(tmp_path / "old.jsonl")
    docs_lib.write_jsonl(path, [{"doc_id": "a", "method": "entigraph_relation", "sample": 0,
                                 "offset": None, "text": "t", "entities": ["x", "y"]}])
    [record] = docs_lib.read_generations(path)
    assert record["method"] == "entigraph_relations"
    assert json.loads(open(path).readline())["method"] == "entigraph_relation"  # file untouched
