import gzip
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megadoc import fs
from megadoc.data import docs, megadocs

GOOD = [{"id": "a", "text": "alpha"}, {"id": 7, "text": "seven"}]


def test_jsonl_plain_gzip_and_parquet_read_the_same(tmp_path):
    docs.write_jsonl(str(tmp_path / "d.jsonl"), GOOD)
    docs.write_jsonl(str(tmp_path / "d.jsonl.gz"), GOOD)
    pq.write_table(pa.Table.from_pylist([{"id": "a", "text": "alpha"}, {"id": "7", "text": "seven"}]),
                   str(tmp_path / "d.parquet"))
    want = [("a", "alpha"), ("7", "seven")]
    for name in ("d.jsonl", "d.jsonl.gz", "d.parquet"):
        assert [(d["id"], d["text"]) for d in docs.read_docs(str(tmp_path / name))] == want
    assert len(list(docs.read_docs(str(tmp_path)))) == 6  # a directory: all three files
    assert len(list(docs.read_docs(str(tmp_path / "d.json*")))) == 4


def test_gcs_paths(gcs_server):
    base = gcs_server.fresh_path()
    docs.write_jsonl(base + "/docs.jsonl.gz", GOOD)
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([{"id": "p", "text": "parquet"}]), buffer)
    fs.write_bytes(base + "/more.parquet", buffer.getvalue().to_pybytes())
    assert [d["text"] for d in docs.read_docs(base + "/docs.jsonl.gz")] == ["alpha", "seven"]
    assert [d["text"] for d in docs.read_docs(base)] == ["alpha", "seven", "parquet"]


def test_bad_records_are_counted_with_file_and_line(tmp_path):
    path = str(tmp_path / "bad.jsonl")
    fs.write_bytes(path, b'{"id": "a", "text": "ok"}\n'
                         b'{"id": "b", "text": "caf\xe9"}\n'  # latin-1, not UTF-8
                         b'{"id": "c", "text": \n'
                         b'\n'
                         b'{"id": "d"}\n'
                         b'[1, 2]\n'
                         b'{"id": "e", "text": "ok too"}\n')
    bad = docs.BadRecords()
    assert [d["id"] for d in docs.read_docs(path, bad)] == ["a", "e"]
    assert bad.counts == {"invalid_utf8": 1, "malformed_json": 2, "missing_field": 1}
    assert bad.examples["invalid_utf8"][0].startswith(f"{path}:2: ")
    assert bad.examples["missing_field"][0].startswith(f"{path}:5: ")


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path):
    path = str(tmp_path / "t.jsonl.gz")
    data = gzip.compress("".join(f'{{"id": "{i}", "text": "x{i * i}"}}\n' for i in range(2000)).encode())
    fs.write_bytes(path, data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.jsonl.gz: unreadable"):
        list(docs.read_docs(path))


def test_generation_schema_is_checked(tmp_path):
    path = str(tmp_path / "g.jsonl")
    docs.write_jsonl(path, [
        {"doc_id": "a", "method": "rephrase", "sample": 0, "offset": None, "text": "r"},
        {"doc_id": "a", "method": "latent_thoughts", "sample": 0, "offset": None, "text": "t"},
        {"doc_id": "a", "method": "summary", "sample": 0, "text": "s"},
        {"doc_id": "a", "method": "latent_thought", "sample": 0, "offset": 3, "text": "t"},
    ])  # the last in the spelling records had before methods got one name: read as the name
    bad = docs.BadRecords()
    got = list(docs.read_generations(path, bad))
    assert [(g["method"], g["offset"]) for g in got] == [("rephrase", None), ("latent_thoughts", 3)]
    assert bad.counts == {"missing_field": 2}


def gen(method, sample, text, offset=None):
    return {"doc_id": "d", "method": method, "sample": sample, "offset": offset, "text": text}


DOC = {"id": "d", "text": "First sentence. Second one.\nThird line with 42 digits."}
REPHRASES = [gen("rephrase", 1, "Rephrase one."), gen("rephrase", 0, "Rephrase zero.")]


def test_recipes():
    D = megadocs.StreamDocument
    real = D("", (DOC["text"],))
    assert megadocs.build_documents("real", DOC, REPHRASES) == [real]
    simple = [D("rephrase 0", ("Rephrase zero.",)), D("rephrase 1", ("Rephrase one.",))]
    assert megadocs.build_documents("simple", DOC, REPHRASES) == simple + [real]
    assert megadocs.build_documents("simple", DOC, REPHRASES, include_real=False) == simple
    assert megadocs.build_documents("stitched", DOC, REPHRASES) == [
        D("", ("Rephrase zero.", "Rephrase one.", DOC["text"]))]
    assert megadocs.build_documents("stitched", DOC, REPHRASES, real_position="first") == [
        D("", (DOC["text"], "Rephrase zero.", "Rephrase one."))]
    assert megadocs.build_documents("stitched", DOC, REPHRASES, real_position="none") == [
        D("rephrases", ("Rephrase zero.", "Rephrase one.")), real]
    assert megadocs.build_documents("stitched", DOC, REPHRASES, real_position="none", include_real=False) == [
        D("rephrases", ("Rephrase zero.", "Rephrase one."))]
    with pytest.raises(ValueError, match="real_position='none'"):
        megadocs.build_documents("stitched", DOC, REPHRASES, include_real=False)
    with pytest.raises(ValueError, match="recipe"):
        megadocs.build_documents("shuffled", DOC, REPHRASES)


def test_latent_thoughts_sit_at_offsets_and_removing_them_restores_the_text():
    text = DOC["text"]
    thoughts = [gen("latent_thoughts", 0, "why B", 16), gen("latent_thoughts", 0, "why C", 28),
                gen("latent_thoughts", 1, "why B again", 16), gen("latent_thoughts", 0, "at end", len(text)),
                gen("rephrase", 0, "ignored")]
    [stream_doc] = megadocs.build_documents("latent", DOC, thoughts)
    [megadoc] = stream_doc.pieces
    assert megadoc.startswith("First sentence. <think>why B</think><think>why B again</think>Second one.\n")
    assert megadoc.endswith("digits.<think>at end</think>")
    assert re.sub(r"<think>.*?</think>", "", megadoc, flags=re.S) == text
    with pytest.raises(ValueError, match="doc d: thought offset 999"):
        megadocs.build_documents("latent", DOC, [gen("latent_thoughts", 0, "x", 999)])
