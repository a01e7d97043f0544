import collections
import json
import math
import threading
import time

import pytest

from megadoc.analysis import search

GRID = search.grid_preset("synthetic")
START = {"lr": 1e-3, "weight_decay": 0.1, "epochs": 1, "mix": 0.5}
OPTIMUM = {"lr": 3e-3, "weight_decay": 0.8, "epochs": 16, "mix": 0.9}


def bowl(point):
    """A convex objective in grid-index space with its minimum at OPTIMUM."""
    i, j = GRID.index(point), GRID.index(OPTIMUM)
    return 3.0 + sum((a - b) ** 2 * (k + 1) * 0.01 for k, (a, b) in enumerate(zip(i, j)))


class Counting:
    def __init__(self, objective, fail_after=None):
        self.objective, self.fail_after = objective, fail_after
        self.calls = collections.Counter()

    def __call__(self, point):
        if self.fail_after is not None and sum(self.calls.values()) >= self.fail_after:
            raise KeyboardInterrupt("preempted")
        self.calls[tuple(sorted(point.items()))] += 1
        return self.objective(point)


def assert_certified(result):
    by_index = {GRID.index(p): loss for p, loss in result.results}
    best = GRID.index(result.best)
    for n in GRID.neighbours(best):
        assert n in by_index and by_index[n] >= result.best_loss


def test_search_finds_the_known_optimum_running_each_point_once(tmp_path):
    run = Counting(bowl)
    result = search.search(GRID, START, run, str(tmp_path / "results.jsonl"))
    assert result.best == OPTIMUM
    assert result.best_loss == pytest.approx(3.0)
    assert max(run.calls.values()) == 1
    assert result.new_runs == sum(run.calls.values()) == len(result.results)
    assert len(result.results) < 3 * 4 * 6 * 3 // 2  # far from exhaustive
    assert_certified(result)


def test_an_interior_optimum_is_certified_and_one_on_the_grids_edge_is_not(tmp_path):
    interior = dict(OPTIMUM, mix=0.75)
    result = search.search(GRID, START, _bowl_at(interior), str(tmp_path / "a.jsonl"))
    assert result.best == interior and result.certified and result.at_bound == ()

    edge = search.search(GRID, START, bowl, str(tmp_path / "b.jsonl"))  # OPTIMUM has mix=0.9
    assert edge.best == OPTIMUM and edge.at_bound == ("mix",) and not edge.certified
    assert_certified(edge)  # every neighbour run and none better: only the bound is missing

    corner = search.search(GRID, START, _bowl_at(START), str(tmp_path / "c.jsonl"))
    assert corner.at_bound == ("lr", "weight_decay", "epochs", "mix") and not corner.certified
    assert corner.new_runs == 5  # the start and its one neighbour on each axis


def _bowl_at(optimum):
    j = GRID.index(optimum)
    return lambda p: 3.0 + sum((a - b) ** 2 for a, b in zip(GRID.index(p), j))


def test_parallel_search_runs_neighbours_together_and_ends_at_the_same_point(tmp_path):
    lock, running, peak = threading.Lock(), [0], [0]
    run = Counting(bowl)

    def slow(point):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        loss = run(point)
        with lock:
            running[0] -= 1
        return loss

    result = search.search(GRID, START, slow, str(tmp_path / "r.jsonl"), parallel=4)
    sequential = search.search(GRID, START, bowl, str(tmp_path / "s.jsonl"))
    assert result.best == sequential.best == OPTIMUM
    assert max(run.calls.values()) == 1 and len(run.calls) == len(sequential.results)
    assert peak[0] > 1
    assert len(search.load_results(str(tmp_path / "r.jsonl"))) == len(run.calls)


def test_search_stops_at_a_local_optimum_not_the_global_one(tmp_path):
    # Two basins: lr=1e-3 is a local optimum reachable from the start; lr=1e-2 with epochs=32 is
    # better but separated by a ridge at lr=3e-3.
    def two_basins(p):
        if p["lr"] == 1e-2 and p["epochs"] == 32:
            return 1.0
        return {1e-3: 2.0, 3e-3: 5.0, 1e-2: 4.0}[p["lr"]] + 0.01 * GRID.index(p)[1]

    result = search.search(GRID, START, Counting(two_basins), str(tmp_path / "r.jsonl"))
    assert result.best["lr"] == 1e-3 and result.best["weight_decay"] == 0.1
    assert_certified(result)


def test_search_resumes_after_interruption_without_rerunning(tmp_path):
    path = str(tmp_path / "results.jsonl")
    first = Counting(bowl, fail_after=7)
    with pytest.raises(KeyboardInterrupt):
        search.search(GRID, START, first, path)
    assert sum(first.calls.values()) == 7
    assert len(search.load_results(path)) == 7

    second = Counting(bowl)
    result = search.search(GRID, START, second, path)
    assert not set(first.calls) & set(second.calls)  # nothing finished was run again
    assert result.new_runs == sum(second.calls.values())
    assert result.best == OPTIMUM

    fresh = search.search(GRID, START, Counting(bowl), str(tmp_path / "fresh.jsonl"))
    assert [p for p, _ in result.results] == [p for p, _ in fresh.results]

    third = Counting(bowl)
    again = search.search(GRID, START, third, path)
    assert not third.calls and again.best == OPTIMUM and again.new_runs == 0


def test_a_diverged_run_counts_as_worst_and_is_stored_as_null(tmp_path):
    path = str(tmp_path / "results.jsonl")
    grid = search.Grid.of(lr=(1e-3, 3e-3, 1e-2))
    losses = {1e-3: 3.0, 3e-3: 2.5, 1e-2: math.nan}
    result = search.search(grid, {"lr": 1e-3}, lambda p: losses[p["lr"]], path)
    assert result.best == {"lr": 3e-3}
    rows = [json.loads(line) for line in open(path)]
    assert {r["point"]["lr"]: r["loss"] for r in rows}[1e-2] is None


def test_bad_start_points_and_results_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="lr=0.5 is not on the grid"):
        search.search(GRID, dict(START, lr=0.5), bowl, str(tmp_path / "a.jsonl"))
    with pytest.raises(ValueError, match="exactly the axes"):
        search.search(GRID, {"lr": 1e-3}, bowl, str(tmp_path / "a.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"point": START, "loss": 3.0}) + "\n{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        search.load_results(str(bad))
    with pytest.raises(ValueError, match="unknown grid preset 'nope'"):
        search.grid_preset("nope")


def test_the_launcher_trains_each_point_in_process_and_a_divergence_is_nan(tmp_path, monkeypatch):
    from megadoc.pipelines import runs
    from megadoc.pipelines import search as search_pipeline
    from megadoc.train import config, loop

    seen = []

    def fake_train(cfg, objective=None):
        seen.append(cfg)
        if cfg.optimizer.lr == 1e-2:
            raise loop.Diverged(3, "loss is nan at step 3")
        if cfg.optimizer.lr == 3e-3:
            raise OSError("disk full")
        if cfg.data.epochs == 2:
            return {"status": "preempted", "step": 5}
        return {"status": "finished", "eval": {"val": 4.0 + cfg.optimizer.lr}}

    monkeypatch.setattr(loop, "train", fake_train)
    base = config.TrainConfig(model=config.llama.preset("tiny"),
                              data=config.DataConfig(real="R", synthetic="S", mix=0.75),
                              optimizer=config.OptimizerConfig(lr=1.0, weight_decay=0.0),
                              workdir="unused")
    launch = search_pipeline.launcher(base, str(tmp_path), "val")
    assert launch(START) == pytest.approx(4.001)
    cfg = seen[0]
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.data.epochs, cfg.data.mix) == (
        1e-3, 0.1, 1, 0.5)
    assert (cfg.data.real, cfg.data.synthetic) == ("R", "S")
    assert cfg.workdir == str(tmp_path / search.point_name(START))
    assert math.isnan(launch(dict(START, lr=1e-2)))
    with pytest.raises(OSError, match="disk full"):
        launch(dict(START, lr=3e-3))
    with pytest.raises(runs.Preempted, match="rerun to resume"):
        launch(dict(START, epochs=2))
    with pytest.raises(KeyError, match="no final eval loss for 'iid'"):
        search_pipeline.launcher(base, str(tmp_path), "iid")(START)
