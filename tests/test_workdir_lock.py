"""One training job per workdir: a second one refuses, naming the owner; a dead owner's lock is
taken over; the same on gs://."""
import json
import os
import socket
import subprocess
import sys
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
    assert "taking over the stale lock" in capsys.readouterr().out
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
