"""The analysis experiment modules end to end on tiny checkpoints written here."""
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import benchmarks as benchmarks_exp
from experiments import distill as distill_exp
from experiments import ensemble as ensemble_exp
from experiments import search as search_exp
from megadoc.analysis import scaling
from megadoc.pipelines import ensemble
from megadoc.pipelines import search as search_pipeline
from megadoc.data import store as store_lib
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import llama
from megadoc.train import checkpoint
from megadoc.train import config as config_lib
from megadoc.train import loop

SEQ = 16


def parse(module, *argv):
    module.FLAGS.unparse_flags()
    module.FLAGS(["prog", *argv])
    return module.FLAGS


def save_run(workdir, config, params):
    """A checkpoint as the trainer leaves one, as far as load_params reads it."""
    mgr = checkpoint.manager(workdir)
    checkpoint.save(mgr, {"step": jnp.int32(1), "params": params}, {"model": config_lib.to_dict(config)})
    mgr.wait_until_finished()
    mgr.close()
    return workdir


def write_store(path, n, vocab, seed=0):
    rng = np.random.default_rng(seed)
    writer = store_lib.StoreWriter(str(path), SEQ)
    writer.append(rng.integers(0, vocab, (n, SEQ + 1)), np.ones((n, SEQ + 1), np.int32))
    writer.finish({"tokenizer_fingerprint": "test", "vocab_size": vocab, "recipe": "real",
                   "num_tokens": n * SEQ})
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    tok_path = tokenizer_lib.train_sentencepiece(
        ["Plants absorb carbon dioxide.\nWhales are mammals.\nFire is hot; ice is cold."] * 20,
        300, str(root / "tok.model"))
    vocab = tokenizer_lib.load(tok_path).vocab_size
    config = dataclasses.replace(llama.preset("tiny"), vocab_size=vocab, max_seq_len=SEQ, dtype="float32")
    init = jax.jit(llama.init, static_argnums=0)
    workdirs = [save_run(str(root / f"member_{i}"), config, init(config, jax.random.key(i))) for i in range(3)]
    return {"root": root, "workdirs": workdirs, "config": config, "tokenizer": tok_path,
            "val": write_store(root / "val", 8, vocab), "real": write_store(root / "real", 16, vocab, 1)}


def test_ensemble_experiment_writes_the_member_curve_and_its_fit(runs, tmp_path):
    parse(ensemble_exp, f"--workdirs={','.join(runs['workdirs'])}", f"--val=iid={runs['val']}",
              "--curve", f"--output={tmp_path}", "--baseline_loss=9.0")
    result = ensemble.run(ensemble_exp.build_config())
    out = json.loads((tmp_path / "ensemble.json").read_text())["val"]["iid"]
    assert out == json.loads(json.dumps(result.val["iid"]))
    assert [k for k, _ in out["curve"]] == [1, 2, 3]
    assert out["loss"] == out["curve"][-1][1]
    assert set(out["law"]) == {"A", "B", "C", "C_stderr"}
    assert out["data_efficiency"]["loss"] == pytest.approx(scaling.data_efficiency(out["loss"], 9.0))
    assert ensemble.data_efficiencies({"loss": 2.0}, 3.0) == {"loss": None}  # below the law's C
    assert (tmp_path / "ensemble_iid.png").read_bytes()[:4] == b"\x89PNG"
    cfg = ensemble.EnsembleConfig(root="R", members=2, val=(("iid", "V"),))
    assert cfg.member_workdirs() == ["R/member_0", "R/member_1"]
    with pytest.raises(ValueError, match="--train needs --root"):
        parse(ensemble_exp, "--workdirs=A,B", "--output=O", "--train",
              f"--train_flags=--real={runs['real']}")
        ensemble_exp.build_config()


def test_ensemble_experiment_trains_missing_members_in_process_with_their_own_seeds(
        runs, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "train", lambda cfg, objective=None: calls.append(cfg) or {
        "status": "finished"})
    (tmp_path / "member_0").mkdir()
    (tmp_path / "member_0" / "summary.json").write_text("{}")
    parse(ensemble_exp, f"--root={tmp_path}", "--members=3", "--train", "--seed=5",
          f"--train_flags=--preset=tiny --real={runs['real']} --lr=0.01")
    assert ensemble.run(ensemble_exp.build_config()) is None  # no --val: nothing to evaluate
    assert [(c.data.seed, c.workdir) for c in calls] == [(6, f"{tmp_path}/member_1"),
                                                         (7, f"{tmp_path}/member_2")]
    assert calls[0].optimizer.lr == 0.01 and calls[0].data.real == runs["real"]


def test_benchmarks_experiment_scores_a_checkpoint(runs, tmp_path):
    piqa = tmp_path / "piqa.jsonl"
    piqa.write_text(json.dumps({"goal": "Cool tea.", "sol1": "Add ice.", "sol2": "Add fire.", "label": 0}) + "\n")
    parse(benchmarks_exp, f"--workdirs={runs['workdirs'][0]}", f"--tokenizer={runs['tokenizer']}",
          f"--piqa={piqa}", "--batch_size=8")
    single = benchmarks_exp.run()
    assert single["piqa"]["n"] == 1 and single["piqa"]["acc"] in (0.0, 1.0)
    with open(f"{runs['workdirs'][0]}/benchmarks.json") as f:
        written = json.load(f)
    assert written["average"] == single["average"]

    parse(benchmarks_exp, f"--workdirs={','.join(runs['workdirs'][:2])}", f"--tokenizer={runs['tokenizer']}",
          f"--piqa={piqa}", f"--output={tmp_path / 'ens.json'}", "--average=probs")
    pair = benchmarks_exp.run()
    assert json.loads((tmp_path / "ens.json").read_text())["workdirs"] == runs["workdirs"][:2]
    assert pair["piqa"]["n"] == 1
    parse(benchmarks_exp, f"--workdirs={','.join(runs['workdirs'][:2])}", f"--tokenizer={runs['tokenizer']}",
          f"--piqa={piqa}")
    with pytest.raises(Exception, match="takes --output"):
        benchmarks_exp.run()


def test_benchmarks_find_a_runs_tokenizer_without_the_flag(runs, tmp_path):
    """A run's tokenizer is the one its real store was prepared with (train.pretrained)."""
    workdir = save_run(str(tmp_path / "run"), runs["config"],
                       jax.jit(llama.init, static_argnums=0)(runs["config"], jax.random.key(0)))
    real = str(tmp_path / "real")
    writer = store_lib.StoreWriter(real, SEQ)
    writer.append(np.zeros((1, SEQ + 1), np.int32), np.ones((1, SEQ + 1), np.int32))
    writer.finish({"tokenizer_path": runs["tokenizer"], "num_tokens": SEQ, "recipe": "real"})
    checkpoint.save_json(f"{workdir}/config.json", {"data": {"real": real}})
    piqa = tmp_path / "piqa.jsonl"
    piqa.write_text(json.dumps({"goal": "Cool tea.", "sol1": "Add ice.", "sol2": "Add fire.", "label": 0}) + "\n")
    parse(benchmarks_exp, f"--model={workdir}", f"--piqa={piqa}", "--batch_size=8")
    found = benchmarks_exp.run()
    parse(benchmarks_exp, f"--model={workdir}", f"--piqa={piqa}", "--batch_size=8",
          f"--tokenizer={runs['tokenizer']}")
    assert benchmarks_exp.run()["piqa"] == found["piqa"]


def test_distill_experiment_builds_the_student_from_the_flags(runs, tmp_path):
    parse(distill_exp, f"--teachers={','.join(runs['workdirs'][:2])}", "--preset=tiny",
          f"--workdir={tmp_path}", f"--real={runs['real']}", f"--val=iid={runs['val']}", "--mesh=8,1,1",
          "--kl_weight=0.5", "--teacher_average=probs", "--epochs=3", "--lr=0.01", "--weight_decay=0.2",
          "--global_batch=4", "--microbatches=2", "--seed=3", "--checkpoint_every_steps=5", "--log_every=2")
    cfg = distill_exp.build_config()
    assert (cfg.kl_weight, cfg.teacher_average, cfg.teacher) == (0.5, "probs", tuple(runs["workdirs"][:2]))
    assert (cfg.mesh, cfg.microbatches, cfg.checkpoint_every_steps, cfg.log_every) == ((8, 1, 1), 2, 5, 2)
    assert (cfg.data.epochs, cfg.data.global_batch, cfg.data.seed, cfg.data.real) == (3, 4, 3, runs["real"])
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (0.01, 0.2)
    assert cfg.val == (("iid", runs["val"]),)
    assert cfg.model.vocab_size == runs["config"].vocab_size and cfg.model.max_seq_len == SEQ
    assert cfg.model.hidden == llama.preset("tiny").hidden


def test_search_experiment_parses_the_grid_and_writes_its_summary(runs, tmp_path):
    parse(search_exp, "--grid=real", "--axis=epochs=1,2,4,8", f"--root={tmp_path}",
          "--start=lr=3e-3,weight_decay=0.4,epochs=2", f"--train_flags=--real={runs['real']}")
    cfg = search_exp.build_config()
    grid = cfg.search_grid()
    assert dict(grid.axes)["epochs"] == (1, 2, 4, 8)
    assert dict(grid.axes)["lr"] == (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    assert dict(grid.axes)["weight_decay"][-2:] == (3.2, 6.4)  # Marin's 600M/1.5B sit at 3.2
    start = cfg.start_point()
    assert start == {"lr": 0.003, "weight_decay": 0.4, "epochs": 2} and isinstance(start["epochs"], int)
    assert (cfg.train.optimizer.lr, cfg.train.data.epochs, cfg.train.data.real) == (3e-3, 2, runs["real"])

    def objective(p):  # best at lr=1e-3, wd=0.8, epochs=4
        return abs(math.log10(p["lr"]) + 3) + abs(p["weight_decay"] - 0.8) + abs(p["epochs"] - 4)

    summary = search_pipeline.run_search(grid, start, str(tmp_path), objective)
    assert summary.best == {"lr": 1e-3, "weight_decay": 0.8, "epochs": 4}
    assert summary.certified and summary.at_bound == ()
    assert (tmp_path / "search.png").exists() and (tmp_path / "results.jsonl").exists()
    edge_grid = dataclasses.replace(cfg, axis=(("epochs", "1,2,4"),)).search_grid()
    edge = search_pipeline.run_search(edge_grid, start, str(tmp_path / "edge"), objective)
    assert edge.best["epochs"] == 4 and not edge.certified and edge.at_bound == ("epochs",)
    on_disk = json.loads((tmp_path / "edge" / "search.json").read_text())
    assert on_disk["at_bound"] == ["epochs"] and on_disk["certified"] is False
    with pytest.raises(ValueError, match="NAME=V1"):
        dataclasses.replace(cfg, axis=(("momentum", "1,2"),)).search_grid()


def test_benchmarks_refuse_a_tokenizer_other_than_the_runs(runs, tmp_path):
    workdir = str(tmp_path / "run")
    mgr = checkpoint.manager(workdir)
    params = jax.jit(llama.init, static_argnums=0)(runs["config"], jax.random.key(0))
    record = {"model": config_lib.to_dict(runs["config"]),
              "stores": {"real": {"tokenizer_fingerprint": "spm:0123456789abcdef"}}}
    checkpoint.save(mgr, {"step": jnp.int32(1), "params": params}, record)
    mgr.wait_until_finished()
    mgr.close()
    piqa = tmp_path / "piqa.jsonl"
    piqa.write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}) + "\n")
    parse(benchmarks_exp, f"--workdirs={workdir}", f"--tokenizer={runs['tokenizer']}",
          f"--piqa={piqa}")
    with pytest.raises(ValueError, match=r"tok.model: fingerprint spm:\w+, but .*run was trained "
                                         r"on data tokenized with spm:0123456789abcdef"):
        benchmarks_exp.run()
    assert not (tmp_path / "run" / "benchmarks.json").exists()
