"""One training job per workdir: a second one refuses, naming the owner; a dead owner's lock is
taken over; the same on gs://."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from megadoc import fs
from megadoc.train import loop, workdir_lock
from train_fixtures import make_store, train_config


def _write_lock(workdir, **owner):
    os.makedirs(workdir, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "token": "t",
              "started": time.time(), "heartbeat": time.time()} | owner
    with open(os.path.join(workdir, workdir_lock.NAME), "w") as f:
        json.dump(record, f)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_job_refuses_and_names_the_owner(tmp_path):
    workdir = str(tmp_path / "run")
    with workdir_lock.held(workdir):
        with pytest.raises(workdir_lock.WorkdirBusyError,
                           match=rf"run: in use by process {os.getpid()} on host "
                                 rf"{socket.gethostname()}"):
            workdir_lock.acquire(workdir)
    assert not os.path.exists(os.path.join(workdir, workdir_lock.NAME))  # released
    workdir_lock.release(workdir, workdir_lock.acquire(workdir))


def test_a_dead_owner_on_this_host_is_taken_over(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    _write_lock(workdir, pid=_dead_pid())
    owner = workdir_lock.acquire(workdir)
    assert "took over the stale lock" in capsys.readouterr().out
    assert json.loads(fs.read_text(os.path.join(workdir, "LOCK")))["token"] == owner["token"]


def test_an_owner_elsewhere_is_stale_only_when_its_heartbeat_stops(tmp_path):
    workdir = str(tmp_path / "run")
    _write_lock(workdir, host="other-host", pid=1)
    with pytest.raises(workdir_lock.WorkdirBusyError, match="on host other-host"):
        workdir_lock.acquire(workdir)
    _write_lock(workdir, host="other-host", pid=1,
                heartbeat=time.time() - workdir_lock.STALE_AFTER_S - 1)
    workdir_lock.acquire(workdir)


def test_lock_on_gcs(gcs_server):
    workdir = gcs_server.fresh_path() + "/run"
    with workdir_lock.held(workdir):
        assert fs.exists(fs.join(workdir, "LOCK"))
        with pytest.raises(workdir_lock.WorkdirBusyError):
            workdir_lock.acquire(workdir)
    assert not fs.exists(fs.join(workdir, "LOCK"))


def test_training_on_a_workdir_in_use_refuses_before_writing_anything(tmp_path):
    real = make_store(str(tmp_path / "real"), 16, seq_len=16)
    workdir = str(tmp_path / "run")
    cfg = train_config(["--preset=tiny", f"--workdir={workdir}", f"--real={real}"])
    with workdir_lock.held(workdir):
        with pytest.raises(workdir_lock.WorkdirBusyError):
            loop.train(cfg)
    assert os.listdir(workdir) == []


def _race_takeovers(workdir, trials, dead_pid):
    """Winners per trial of two jobs taking over one dead job's lock at the same moment."""
    winners = []
    for trial in range(trials):
        fs.write_text(fs.join(workdir, workdir_lock.NAME), json.dumps(
            {"host": socket.gethostname(), "pid": dead_pid, "token": f"dead-{trial}",
             "started": 0.0, "heartbeat": 0.0}))
        start, won = threading.Barrier(2), []

        def job():
            start.wait()
            try:
                won.append(workdir_lock.acquire(workdir)["token"])
            except workdir_lock.WorkdirBusyError:
                pass

        threads = [threading.Thread(target=job) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        held = json.loads(fs.read_text(fs.join(workdir, workdir_lock.NAME)))["token"]
        winners.append((len(won), won == [held]))
    return winners


def test_two_simultaneous_takeovers_have_exactly_one_winner(tmp_path, capsys):
    winners = _race_takeovers(str(tmp_path / "run"), 200, _dead_pid())
    assert winners == [(1, True)] * 200
    assert os.listdir(tmp_path / "run") == [workdir_lock.NAME]  # no takeover token left


def test_two_simultaneous_takeovers_on_gcs_have_exactly_one_winner(gcs_server):
    """The emulator honours ifGenerationMatch (tests/gcs_server.py), as GCS does."""
    workdir = gcs_server.fresh_path() + "/run"
    winners = _race_takeovers(workdir, 200, _dead_pid())
    assert winners == [(1, True)] * 200
    assert fs.listdir(workdir) == [workdir_lock.NAME]


def test_the_gcs_emulator_refuses_a_failed_generation_precondition(gcs_server):
    """What the takeover's atomicity on gs:// rests on, past create_exclusive's existence check."""
    from megadoc import gcs

    path = gcs_server.fresh_path() + "/x"
    fs.write_text(path, "first")
    with pytest.raises(fs.StorageError, match="precondition failed"):
        gcs.retrying(path, lambda: gcs.blob(path).upload_from_string(
            b"second", if_generation_match=0, retry=None))
    assert fs.read_text(path) == "first"


def test_a_takeover_that_died_midway_is_named(tmp_path):
    workdir = str(tmp_path / "run")
    _write_lock(workdir, pid=_dead_pid())
    raw = fs.read_bytes(os.path.join(workdir, "LOCK"))
    token = workdir_lock._swap_token(os.path.join(workdir, "LOCK"), raw)
    fs.write_text(token, "")
    with pytest.raises(workdir_lock.WorkdirBusyError, match=r"another job is taking over this "
                                                            r"stale lock .*died midway: remove"):
        workdir_lock.acquire(workdir)
    os.remove(token)
    workdir_lock.acquire(workdir)
