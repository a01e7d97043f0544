"""Figure 7's pipeline at toy scale: ensembles of two methods, K = 3, trained in process, scored,
fitted, tabulated and plotted; and what a rerun after an interrupted member does."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from megadoc.analysis import ensemble_scaling as rules
from megadoc.pipelines import ensemble_scaling as lib
from megadoc.train import published
from train_fixtures import make_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rules_give_the_papers_member_points():
    b3 = {m: rules.member_point("b3", m, "300m", 32) for m in ("real", "simple", "stitched",
                                                               "latent", "self_distillation")}
    simple32 = published.point("simple", 32, "300m")
    # B.3: the best simple-rephrasing point with doubled epochs, shared by the megadoc methods
    assert b3["simple"] == b3["stitched"] == b3["latent"] == b3["self_distillation"] == \
        published.Point(epochs=2 * simple32.epochs, lr=simple32.lr,
                        weight_decay=simple32.weight_decay, mix=simple32.mix)
    # real data: Kim et al.'s rule, epochs doubled and weight decay halved (16, 3e-3, 1.6)
    assert b3["real"] == published.Point(epochs=32, lr=3e-3, weight_decay=0.8)
    stitched32 = published.point("stitched", 32, "300m")
    assert rules.member_point("kim", "stitched", "300m", 32) == published.Point(
        epochs=64, lr=stitched32.lr, weight_decay=0.2, mix=stitched32.mix)
    with pytest.raises(ValueError, match="self-distillation has no published"):
        rules.member_point("kim", "self_distillation", "300m", 32)
    explicit = published.Point(epochs=3, lr=1e-2, weight_decay=0.1, mix=0.5)
    assert rules.member_point("explicit", "real", "tiny", 32, explicit).mix == 0.0
    assert rules.member_point("explicit", "latent", "tiny", 32, explicit) == explicit


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("ens_scaling_data")
    return {"real": make_store(str(d / "real"), 32),
            "simple": make_store(str(d / "simple"), 32, seed=2, recipe="simple"),
            "val": make_store(str(d / "val"), 8, seed=1)}


def config(stores, workdir, epochs=1, **kw):
    return lib.EnsembleScalingConfig(
        workdir=workdir, real=stores["real"], synthetic=(("simple", stores["simple"]),),
        val=(("iid", stores["val"]),), members=3, rule="explicit", preset="tiny",
        epochs=epochs, lr=3e-3, weight_decay=0.1, mix=0.5, checkpoint_every_steps=2, **kw)


def mtimes(paths):
    return [os.stat(p).st_mtime_ns for p in paths]


def test_two_methods_table_fit_plot_and_a_rerun_that_retrains_only_the_lost_member(
        stores, tmp_path):
    workdir = str(tmp_path / "ens")
    first = lib.run(config(stores, workdir))
    assert first.new_members == 6 and [a.method for a in first.arms] == ["real", "simple"]
    for arm in first.arms:
        losses = arm.losses["iid"]
        assert len(losses) == 3 and losses[-1] < losses[0]  # averaging members helps
        assert arm.laws["iid"] is not None  # 3 points: A / k^B + C fitted
    written = json.loads(open(os.path.join(workdir, "ensemble_scaling.json")).read())
    assert [a["method"] for a in written["arms"]] == ["real", "simple"]
    assert written["arms"][1]["point"] == {"epochs": 1, "lr": 3e-3, "weight_decay": 0.1,
                                           "mix": 0.5}
    table = open(os.path.join(workdir, "ensemble_scaling.md")).read()
    assert "| real |" in table and "| simple |" in table
    assert os.path.getsize(os.path.join(workdir, "ensemble_scaling_iid.png")) > 0

    real = first.arms[0].workdirs
    kept = [os.path.join(w, "summary.json") for w in real[:2]]
    before = mtimes(kept)
    shutil.rmtree(real[2])  # member 3 lost before it finished
    again = lib.run(config(stores, workdir))
    assert again.new_members == 1  # members 1-2 and the other method are not retrained
    assert mtimes(kept) == before
    assert again.arms == first.arms  # the same params (checksums) and so the same scores
    assert lib.run(config(stores, workdir)).new_members == 0
    with pytest.raises(ValueError, match="finished with other settings.*data.seed"):
        lib.run(config(stores, workdir, seed=1))  # the same member dirs, other seeds


@pytest.mark.slow
def test_kill_9_during_member_3_then_rerun_matches_an_uninterrupted_run(stores, tmp_path):
    epochs = 8  # 32 steps for a real-only member: time to kill it mid-run
    reference = lib.run(config(stores, str(tmp_path / "reference"), epochs=epochs))
    workdir = str(tmp_path / "killed")
    argv = [sys.executable, "-m", "experiments.ensemble_scaling", f"--workdir={workdir}",
            f"--real={stores['real']}", f"--synthetic=simple={stores['simple']}",
            f"--val=iid={stores['val']}", "--members=3", "--rule=explicit", "--preset=tiny",
            f"--epochs={epochs}", "--lr=3e-3", "--weight_decay=0.1", "--mix=0.5",
            "--checkpoint_every_steps=2"]
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    third = os.path.join(os.path.dirname(reference.arms[0].workdirs[2]).replace(
        str(tmp_path / "reference"), workdir), "member_2", "checkpoints")
    deadline = time.time() + 300
    while not (os.path.isdir(third) and os.listdir(third)):  # member 3 has saved a checkpoint
        assert proc.poll() is None and time.time() < deadline, "run ended before member 3"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(os.path.dirname(third), "summary.json"))
    first_two = [os.path.join(os.path.dirname(os.path.dirname(third)), f"member_{i}",
                              "summary.json") for i in range(2)]
    before = mtimes(first_two)
    resumed = lib.run(config(stores, workdir, epochs=epochs))
    assert resumed.new_members == 4  # member 3 of real-only, then the three simple members
    assert mtimes(first_two) == before
    for a, b in zip(resumed.arms, reference.arms):
        assert (a.method, a.point, a.losses) == (b.method, b.point, b.losses)
