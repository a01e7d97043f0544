"""Wrong inputs on the newer surfaces (--init, knowledge synthesis, the sweep, validation sets,
metrics logs, distillation texts, QuALITY) are refused where they enter, naming the flag, file
and line; a torn log is cut, not fatal; every user error is one line `error: ...`, exit 2."""
import json
import os
import subprocess
import sys

import pytest
from absl import app

from data_fixtures import corpus, train_tokenizer
from knowledge_fixtures import make_hf_model
from megadoc import cli, fs
from megadoc.analysis import benchmarks, distill, quality, search
from megadoc.data import docs, prepare, validation
from megadoc.data import store as store_lib
from megadoc.synth import job
from megadoc.train import loop, metrics
from train_fixtures import make_store, train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *argv, cwd):
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Documents, a sentencepiece tokenizer (relative to `dir`), a store prepared with it from
    `dir`, and rephrase records with samples 0..2 of every document."""
    d = tmp_path_factory.mktemp("wave5")
    source = corpus(12)
    docs.write_jsonl(str(d / "docs.jsonl"), source)
    docs.write_jsonl(str(d / "gens.jsonl"), [
        {"doc_id": x["id"], "method": "rephrase", "sample": s, "offset": None,
         "text": f"Rephrase {s} of {x['text']}", "finish_reason": "eos"}
        for x in source for s in range(3)])
    train_tokenizer(str(d / "sp.model"), [x["text"] for x in source])
    cwd = os.getcwd()
    os.chdir(d)  # the store records the tokenizer as the user typed it: relative
    try:
        prepare.prepare(prepare.PrepareConfig(docs="docs.jsonl", recipe="real",
                                              tokenizer="sp.model", seq_len=16, seed=0,
                                              output="real", buckets=2))
    finally:
        os.chdir(cwd)
    return d


# 1. --init meets a store by tokenizer fingerprint, not vocabulary size.

def test_init_refuses_a_store_prepared_with_another_tokenizer(tmp_path):
    model = make_hf_model(str(tmp_path / "base"), max_seq_len=64)
    real = make_store(str(tmp_path / "real"), 16, seq_len=16)  # vocab 64 <= the model's
    cfg = train_config([f"--init={model}", f"--workdir={tmp_path / 'w'}", f"--real={real}"])
    with pytest.raises(ValueError, match=r"real: prepared with tokenizer test-tokenizer .* but "
                                         r"the model .*base has tokenizer fingerprint spm:"):
        loop.train(cfg)
    assert not os.path.exists(tmp_path / "w" / "metrics.jsonl")


# 2. focal_rewrite with --questions that hold no question; and nothing written when refused.

def test_focal_rewrite_refuses_questions_that_give_no_document_one(inputs, tmp_path):
    questions = tmp_path / "questions.jsonl"
    docs.write_jsonl(str(questions), [  # qa records that failed to parse: no question
        {"doc_id": x["id"], "method": "qa", "sample": 0, "offset": None, "text": "",
         "finish_reason": "malformed"} for x in corpus(12)])
    cfg = job.JobConfig(method="focal_rewrite", generator=str(tmp_path / "no-model"),
                        docs=str(inputs / "docs.jsonl"), output=str(tmp_path / "out" / "focal"),
                        questions=str(questions))
    with pytest.raises(ValueError, match=r"--questions=.*questions.jsonl: no questions for any "
                                         r"of the 12 documents"):
        job.run(cfg)
    assert not (tmp_path / "out").exists()


def test_a_synthesis_refused_at_its_generator_leaves_no_output_directory(inputs, tmp_path):
    cfg = job.JobConfig(method="rephrase", generator=str(tmp_path / "no-model"),
                        docs=str(inputs / "docs.jsonl"), output=str(tmp_path / "out" / "a"))
    with pytest.raises(OSError):
        job.run(cfg)
    assert not (tmp_path / "out").exists()


# 3. A store of N generations needs samples 0..N-1; the sweep checks every count up front.

def test_max_generations_beyond_the_synthesis_run_is_refused(inputs, tmp_path):
    cfg = prepare.PrepareConfig(docs=str(inputs / "docs.jsonl"), recipe="simple",
                                tokenizer=str(inputs / "sp.model"), seq_len=16, seed=0,
                                output=str(tmp_path / "n5"), generations=str(inputs / "gens.jsonl"),
                                max_generations=5, buckets=2)
    with pytest.raises(ValueError, match=r"--max_generations=5: .*gens.jsonl holds samples 0..2 "
                                         r"\(3 per document at most\)"):
        prepare.prepare(cfg)
    prepare.check_samples(str(inputs / "gens.jsonl"), 3)  # N = 3 is what it holds
    with pytest.raises(ValueError, match="--max_generations=4"):
        prepare.check_samples(str(inputs / "gens.jsonl"), 4)


def test_sweep_counts_that_are_not_numbers_name_the_flag():
    from experiments import generations_sweep as sweep

    base = ["sweep", "--recipe=simple", "--docs=d", "--generations=g", "--tokenizer=t",
            "--seq_len=8", "--workdir=w"]
    for extra, message in ((["--val=iid=v", "--counts=a,b"],
                            r"^--counts=a,b: expected comma-separated int"),
                           (["--val=iid=A", "--val=iid=B"],
                            "--val=iid=B: the name 'iid' is already given")):
        sweep.FLAGS.unparse_flags()
        sweep.FLAGS(base + extra)
        try:
            with pytest.raises(app.UsageError, match=message):
                sweep.build_config()
        finally:
            sweep.FLAGS.unparse_flags()


# 4. Two validation sets of one name: refused, not one dropped.

def test_duplicate_validation_names_are_refused(inputs, tmp_path):
    with pytest.raises(app.UsageError, match="--val=iid=B: the name 'iid' is already given to A"):
        train_config([f"--workdir={tmp_path}", f"--real={inputs / 'real'}", "--val=iid=A",
                      "--val=iid=B"])
    real = store_lib.open(str(inputs / "real"))
    with pytest.raises(ValueError, match="the name 'iid' is already taken"):
        validation.open_sets((("iid", str(inputs / "real")), ("iid", str(inputs / "real"))), real)


# 6. A torn last line of an appended log is cut off and reported; the log goes on.

def test_a_torn_metrics_line_is_cut_and_resume_goes_on(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    writer = metrics.Writer(str(tmp_path), num_steps=4, log_every=1)
    writer.truncate_after(2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n'
    assert f"{path}:3: dropping a torn last line" in capsys.readouterr().out
    path.write_text(path.read_text() + '{"step": 3, "lo')  # torn again, then appended to
    fs.append_jsonl(str(path), [{"step": 3, "loss": 1.8}])
    assert [r["step"] for _, r in fs.read_jsonl_log(str(path))] == [1, 2, 3]


def test_a_torn_search_result_is_redone_not_fatal(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"point": {"lr": 1}, "loss": 3.0}\n{"point": {"lr": 2}, "lo')
    assert search.load_results(str(path)) == [({"lr": 1}, 3.0)]
    path.write_text('{"point": {"lr": 1}, "lo\n{"point": {"lr": 2}, "loss": 3.0}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:1: not a JSON line"):
        search.load_results(str(path))  # a bad line that is not the last: not ours to cut


# 7. The distillation texts are part of the run: other texts on the same workdir are refused.

def test_distillation_texts_of_another_run_are_refused(inputs, tmp_path):
    other = tmp_path / "other.jsonl"
    docs.write_jsonl(str(other), [{"doc_id": "x", "method": "rephrase", "sample": 0,
                                   "offset": None, "text": "Other words entirely.",
                                   "finish_reason": "eos"}])
    workdir, real = str(tmp_path / "student"), str(inputs / "real")
    os.chdir(inputs)  # where the store's relative tokenizer path is read from
    try:
        distill.texts_store(str(inputs / "gens.jsonl"), workdir, real, 0)
        distill.texts_store(str(inputs / "gens.jsonl"), workdir, real, 0)  # the same: resumes
        with pytest.raises(ValueError, match=r"--texts=.*other.jsonl: .*student was started on "
                                             r"other texts \(.*gens.jsonl\)"):
            distill.texts_store(str(other), workdir, real, 0)
    finally:
        os.chdir(REPO)


# 8. Strict types in QuALITY; bytes that are not UTF-8 name file and line.

def test_a_boolean_quality_label_is_refused(tmp_path):
    path = tmp_path / "q.jsonl"
    question = {"question": "Why?", "options": ["a", "b", "c", "d"], "gold_label": True}
    path.write_text(json.dumps({"article_id": "a1", "title": "T", "article": "Text.",
                                "questions": [question]}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:1: question 0 of article 'a1'"):
        quality.read_quality(str(path))


@pytest.mark.parametrize("read", [quality.read_quality, benchmarks.read_piqa,
                                  benchmarks.read_sciq, benchmarks.read_arc])
def test_invalid_utf8_names_file_and_line(tmp_path, read):
    path = tmp_path / "bench.jsonl"
    path.write_bytes(b'{"goal": "ok"}\n{"goal": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"bench.jsonl:2: not UTF-8 text \(byte 0xe9 at column "
                                         r"14"):
        read(str(path))


# Poor messages: the store's recorded tokenizer; one line and exit 2 for every user error.

def test_a_relative_recorded_tokenizer_says_whose_it_is(inputs, tmp_path, monkeypatch):
    real = store_lib.open(str(inputs / "real"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"the store's recorded tokenizer 'sp.model' does "
                                                r"not exist \(a relative path, read from the "
                                                r"directory prepare ran in"):
        validation.open_sets((("iid", str(inputs / "docs.jsonl")),), real)


def test_a_diverged_run_and_usage_errors_are_one_line_exit_2(capsys):
    def diverge(argv):
        raise FloatingPointError("loss is nan at step 3; the state before that update is saved")

    def misuse(argv):
        raise app.UsageError("--val='bad': expected NAME=PATH")

    for main, line in ((diverge, "error: loss is nan at step 3; the state before that update "
                                 "is saved"), (misuse, "error: --val='bad': expected NAME=PATH")):
        with pytest.raises(SystemExit) as exit_:
            cli.plain_errors(main)(["prog"])
        assert exit_.value.code == 2
        assert capsys.readouterr().err == line + "\n"


def test_train_usage_errors_are_one_line_not_the_module_help(inputs, tmp_path):
    out = _run("experiments.train", "--workdir=w", f"--real={inputs / 'real'}", "--val=bad",
               cwd=tmp_path)
    assert (out.returncode, out.stderr) == (2, "error: --val='bad': expected NAME=PATH\n")
    out = _run("experiments.train", "--epochs=many", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: flag --epochs=many:")


# The class behind 7: a run names its stores by content, not by sizes another corpus can share.

def test_a_run_names_its_stores_by_content_not_by_size(inputs, tmp_path):
    from megadoc.train import checkpoint

    prepared = store_lib.open(str(inputs / "real")).metadata
    assert prepared["content_id"] == prepare.content_id(prepared["settings"])
    a = store_lib.open(make_store(str(tmp_path / "a"), 16, seq_len=16))
    b = store_lib.open(make_store(str(tmp_path / "a2"), 16, seq_len=16, seed=1))
    a.metadata["content_id"], b.metadata["content_id"] = "corpus-a", "corpus-b"  # same sizes
    cfg = train_config(["--preset=tiny", f"--workdir={tmp_path / 'w'}", f"--real={a.path}"])
    saved = loop.run_record(cfg, {"real": a, "synthetic": None}, 4)
    now = loop.run_record(cfg, {"real": b, "synthetic": None}, 4)
    with pytest.raises(ValueError, match=r"stores.real.content_id: checkpoint 'corpus-a' != now "
                                         r"'corpus-b'"):
        checkpoint.check_run(saved, now, "w")


def test_trained_runs_meet_stores_and_tokenizers_by_fingerprint(inputs, tmp_path):
    """Ensemble members (evaluation, unconditional sampling) and distillation teachers: a store
    or tokenizer other than the one the runs trained on is refused, same size or not."""
    from megadoc.analysis import ensemble
    from megadoc.data import tokenizer as tokenizer_lib
    from megadoc.train import pretrained

    real = make_store(str(tmp_path / "real"), 16, seq_len=16)
    workdir = str(tmp_path / "run")
    loop.train(train_config(["--preset=tiny", f"--workdir={workdir}", f"--real={real}",
                             "--global_batch=8", "--epochs=1"]))
    other = store_lib.open(make_store(str(tmp_path / "other"), 8, seq_len=16,
                                      fingerprint="another-tokenizer"))
    with pytest.raises(ValueError, match=r"other: prepared with tokenizer another-tokenizer .* "
                                         r"the model .*run has tokenizer fingerprint "
                                         r"test-tokenizer"):
        ensemble.check_store([workdir], other)
    pretrained.check_store(workdir, store_lib.open(real))  # its own store passes
    sp = tokenizer_lib.load(str(inputs / "sp.model"))
    with pytest.raises(ValueError, match=r"sp.model: fingerprint spm:.*run was trained on data "
                                         r"tokenized with test-tokenizer"):
        ensemble.load_members([workdir], sp)
