"""experiments.generations_sweep (megadoc.pipelines.sweep) on CPU: prepare, certified searches per count, table, figure,
and a rerun that trains nothing."""
import json
import math

import pytest

from data_fixtures import corpus, train_tokenizer
from experiments import generations_sweep as sweep_exp
from megadoc.analysis import search, sweep
from megadoc.pipelines import sweep as sweep_pipeline
from megadoc.data import docs, store
from megadoc.train import loop

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep_inputs")
    source = corpus(48, seed=1)
    docs.write_jsonl(str(d / "docs.jsonl"), source)
    docs.write_jsonl(str(d / "val.jsonl"), corpus(12, seed=2))
    gens = [{"doc_id": x["id"], "method": "rephrase", "sample": s, "offset": None,
             "text": f"Rephrase {s}: {x['text'][::-1]}", "finish_reason": "eos"}
            for x in source for s in range(3)]
    docs.write_jsonl(str(d / "gens.jsonl"), gens)
    tok = train_tokenizer(str(d / "tok.model"), [x["text"] for x in source] + [g["text"] for g in gens])
    return {"dir": d, "tok": tok}


def flags(inputs, workdir, *extra):
    d = inputs["dir"]
    sweep_exp.FLAGS.unparse_flags()
    sweep_exp.FLAGS(["prog", "--recipe=stitched", f"--docs={d / 'docs.jsonl'}",
                     f"--generations={d / 'gens.jsonl'}", f"--tokenizer={inputs['tok'].path}",
                     "--seq_len=32", f"--val=iid={d / 'val.jsonl'}", "--counts=0,1,2", "--preset=tiny",
                     "--grid=toy", f"--workdir={workdir}", *extra])
    return sweep_exp.build_config()


@pytest.mark.slow
def test_toy_sweep_writes_one_row_per_count_and_a_rerun_trains_nothing(inputs, tmp_path, monkeypatch):
    cfg = flags(inputs, tmp_path / "sweep")
    assert cfg.counts == (0, 1, 2) and cfg.grid == "toy" and cfg.preset == "tiny"
    table = sweep_pipeline.run(cfg)
    rows = list(table.rows)
    assert [(r["recipe"], r["generations"]) for r in rows] == [("real", 0), ("stitched", 1),
                                                                ("stitched", 2)]
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["data_efficiency"]), r
        assert r["data_law"] == "published" and r["runs"] >= 4
        assert not r["certified"] and r["at_bound"]  # two values an axis: every point is an edge
    assert rows[0]["data_efficiency"] == pytest.approx(1.0)
    assert set(rows[1]["best"]) == {"lr", "weight_decay", "epochs", "mix"}
    on_disk = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert on_disk == json.loads(json.dumps(table.as_dict()))
    assert "| stitched | 2 |" in (tmp_path / "sweep" / "sweep.md").read_text()
    assert (tmp_path / "sweep" / "sweep.png").read_bytes().startswith(PNG_MAGIC)
    for n in (1, 2):
        meta = store.open(str(tmp_path / "sweep" / "stores" / f"stitched-n{n}")).metadata
        assert meta["max_generations"] == n
    # Count 2's search started from count 1's optimum.
    first = search.load_results(str(tmp_path / "sweep" / "searches" / "stitched-n2" / "results.jsonl"))
    assert first[0][0] == rows[1]["best"]

    def no_training(cfg, objective=None):
        raise AssertionError(f"a finished sweep trained again: {cfg.workdir}")

    monkeypatch.setattr(loop, "train", no_training)
    again = sweep_pipeline.run(flags(inputs, tmp_path / "sweep"))
    assert list(again.rows) == rows


def test_the_table_uses_a_fitted_law_when_there_are_fraction_baselines(tmp_path):
    def found(name, **facts):
        path = tmp_path / "searches" / name
        path.mkdir(parents=True)
        (path / "search.json").write_text(json.dumps(dict(
            {"best": {"lr": 3e-3}, "certified": True, "at_bound": [], "runs": 7}, **facts)))

    law = sweep.data_law([])
    assert law.source == "published"
    for fraction, tokens in ((0.25, 0.05e9), (0.5, 0.1e9), (1.0, 0.2e9)):
        loss = float(law.law(tokens / 1e9))
        found(f"real-f{fraction}" if fraction < 1 else "real", recipe="real", fraction=fraction,
              tokens=tokens, best_loss=loss, **({"generations": 0} if fraction == 1.0 else {}))
    found("stitched-n4", recipe="stitched", generations=4, best_loss=float(law.law(0.5)),
          certified=False, at_bound=["mix"])
    table = sweep_pipeline.write_table(str(tmp_path))
    assert table.data_law["source"] == "fitted" and len(table.data_law["points"]) == 3
    stitched = table.rows[1]
    assert stitched["data_efficiency"] == pytest.approx(2.5, rel=1e-2)  # 0.5B tokens / 0.2B
    assert "fitted on real-only baselines" in (tmp_path / "sweep.md").read_text()
    assert "no (at bound: mix)" in (tmp_path / "sweep.md").read_text()


def test_a_start_point_moves_onto_the_next_grid():
    grid = search.grid_preset("synthetic")
    assert sweep.start_point(grid, {"lr": 3e-4, "weight_decay": 3.2, "epochs": 64}) == {
        "lr": 1e-3, "weight_decay": 1.6, "epochs": 32, "mix": 0.75}
    assert sweep.start_point(search.grid_preset("real"), {"lr": 3e-3, "weight_decay": 0.0,
                                                          "epochs": 16, "mix": 0.9}) == {
        "lr": 3e-3, "weight_decay": 0.0, "epochs": 16}


def test_bad_flags_are_usage_errors(inputs, tmp_path):
    with pytest.raises(Exception, match="expected NAME=PATH"):
        flags(inputs, tmp_path, "--val=nope")
    with pytest.raises(Exception, match="each in"):
        flags(inputs, tmp_path, "--data_fractions=1.5")
