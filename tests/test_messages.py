"""Errors a new user meets name the file and what was expected; valid input is never rejected
and a killed job's leftovers are cleaned up."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

from megadoc.analysis import benchmarks
from megadoc.data import prepare as prepare_lib
from megadoc.data import tokenizer


def test_tokenizer_errors_name_the_path(tmp_path):
    fake = tmp_path / "notes.model"
    fake.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=f"{fake}: not a sentencepiece model"):
        tokenizer.load(str(fake))
    broken = tmp_path / "hf" / "tokenizer.json"
    broken.parent.mkdir()
    broken.write_text('{"model": ')
    with pytest.raises(ValueError, match=f"{broken}: not a valid tokenizer.json"):
        tokenizer.load(str(broken.parent))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing'}: no such tokenizer"):
        tokenizer.load(str(tmp_path / "missing"))


def test_benchmark_jsonl_with_a_line_separator_inside_a_string(tmp_path):
    path = tmp_path / "piqa.jsonl"
    rows = [{"goal": "Split\u2028here.", "sol1": "a\u2029b", "sol2": "c\x85d", "label": 1},
            {"goal": "g", "sol1": "x", "sol2": "y", "label": 0}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    questions = benchmarks.read_piqa(str(path))
    assert [q.label for q in questions] == [1, 0]
    assert questions[0].choices == ("a\u2029b", "c\x85d")


def test_spill_directories_of_killed_prepare_jobs_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"megadoc-prepare-{dead.pid}-abc"
    left.mkdir()
    (left / "docs-00000.jsonl").write_text("{}\n")
    alive = tmp_path / f"megadoc-prepare-{os.getpid()}-def"
    alive.mkdir()
    unrelated = tmp_path / "megadoc-prepare-notes"
    unrelated.mkdir()
    mine = prepare_lib._spill_directory()
    assert not left.exists() and alive.exists() and unrelated.exists()
    assert os.path.basename(mine).startswith(f"megadoc-prepare-{os.getpid()}-")
