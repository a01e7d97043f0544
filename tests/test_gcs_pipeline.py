"""gs:// end to end against the loopback emulator: prepare → train → synthesize → prepare →
evaluate with every path in a bucket gives the same bytes as on local disk, through a SIGKILL of
the train job, a SIGKILL of the synthesis job and a server outage mid-checkpoint; a missing or
read-only bucket stops each job at once with an error naming the path.

Train and synthesis run as the subprocesses a TPU VM would run (one persistent compilation
cache: only the local reference compiles); the small steps between them run in this process. Each is stopped at a
chosen point: FaultProxy's request log shows the write of interest, and from then on every request
fails (or the server is down), so the job is stuck there until the SIGKILL.
"""
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.parse

import numpy as np
import pytest

from gcs_server import FaultProxy, GcsServer
from megadoc import fs
from megadoc.data import docs, prepare, store, tokenizer
from megadoc.models import hf
from megadoc.synth import job
from megadoc.train import checkpoint, evaluate, loop
from train_fixtures import train_config

pytestmark = pytest.mark.slow  # every test here runs the pipeline in subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["The river floods every spring and the farmers plant after it recedes.",
             "A prime number has exactly two divisors: one and itself.",
             "Copper conducts heat well, so pans are often made of it.",
             "The committee met on 12 March 1998 and approved the budget.",
             "Owls hunt at night and see well in the dark."]
NUM_DOCS = 12  # three synthesis shards of 4
TEMPLATE = "[system]\nBe clear.\n[user]\nRewrite: {document}\n"
SEQ_LEN = 32
GENERATOR_CONTEXT = 192  # the student's weights, with room for a prompt and its rephrase


def _corpus(n: int, offset: int) -> list[dict]:
    return [{"id": f"doc{offset + i}",
             "text": " ".join(SENTENCES[(offset + i + k) % 5] for k in range(1 + i % 2))}
            for i in range(n)]


def _write_inputs(base: str) -> None:
    docs.write_jsonl(fs.join(base, "corpus", "train.jsonl"), _corpus(NUM_DOCS, 0))
    docs.write_jsonl(fs.join(base, "corpus", "val.jsonl"), _corpus(4, 100))
    fs.write_text(fs.join(base, "short_rephrase.txt"), TEMPLATE)


def _prepare(base: str, name: str, recipe: str, docs_file: str, generations=None) -> dict:
    return prepare.prepare(prepare.PrepareConfig(
        docs=fs.join(base, "corpus", docs_file), generations=generations, recipe=recipe,
        tokenizer=fs.join(base, "tokenizer.model"), seq_len=SEQ_LEN, seed=0,
        output=fs.join(base, "stores", name)))


def _train_argv(base: str, workdir: str) -> list[str]:
    return ["--preset=tiny", f"--workdir={workdir}", f"--real={fs.join(base, 'stores', 'real')}",
            f"--val=iid={fs.join(base, 'stores', 'val')}", "--epochs=5", "--lr=3e-3",
            "--weight_decay=0.1", "--checkpoint_every_steps=4", "--checkpoint_every_minutes=0"]


def _synth_argv(base: str) -> list[str]:
    return ["--method=rephrase", f"--generator={fs.join(base, 'generator')}",
            f"--docs={fs.join(base, 'corpus', 'train.jsonl')}", f"--output={fs.join(base, 'synth')}",
            f"--template={fs.join(base, 'short_rephrase.txt')}", "--generations=1",
            "--max_new_tokens=8", "--batch_size=4", "--shard_size=4"]


def _export_generator(base: str) -> None:
    """The trained student as a Hugging Face generator directory with its tokenizer."""
    config, params = checkpoint.load_params(fs.join(base, "train"))
    out = fs.join(base, "generator")
    hf.save(dataclasses.replace(config, max_seq_len=GENERATOR_CONTEXT), params, out)
    fs.write_bytes(fs.join(out, "tokenizer.model"), fs.read_bytes(fs.join(base, "tokenizer.model")))


def _records(output: str) -> list[dict]:
    rows = []
    for path in fs.glob(fs.join(output, "shard-*.jsonl")):
        rows += [json.loads(line) for line in fs.read_text(path).splitlines()]
    return sorted(rows, key=lambda r: (r["doc_id"], r["sample"]))


def _finish_and_evaluate(base: str) -> dict:
    """Store the rephrases as megadocs and score the trained model on them (the train job
    scored it on the validation store)."""
    _prepare(base, "simple", "simple", "train.jsonl", generations=fs.join(base, "synth"))
    config, params = checkpoint.load_params(fs.join(base, "train"))
    stores = {name: store.open(fs.join(base, "stores", name)) for name in ("real", "val", "simple")}
    return {"summary": json.loads(fs.read_text(fs.join(base, "train", "summary.json"))),
            "records": _records(fs.join(base, "synth")),
            "tokens": {name: s.read(np.arange(len(s)))["tokens"] for name, s in stores.items()},
            "simple_loss": evaluate.eval_loss(config, params, stores["simple"], batch_size=8)}


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Disk-backed, so that a test can stop it and start it again with its objects."""
    with GcsServer(data_dir=str(tmp_path_factory.mktemp("gcs_disk"))) as s:
        yield s


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
    tokenizer.train_sentencepiece([d["text"] for d in _corpus(NUM_DOCS, 0)], 300, path)
    return fs.read_bytes(path)


@pytest.fixture(scope="module")
def local(tmp_path_factory, spm_model, jax_cache):
    """The whole pipeline on local disk, uninterrupted."""
    base = str(tmp_path_factory.mktemp("local"))
    _write_inputs(base)
    fs.write_bytes(fs.join(base, "tokenizer.model"), spm_model)
    _prepare(base, "real", "real", "train.jsonl")
    _prepare(base, "val", "real", "val.jsonl")
    _run("experiments.train", _train_argv(base, fs.join(base, "train")), jax_cache,
         fs.join(base, "train.log"))
    _export_generator(base)
    _run("experiments.synthesize", _synth_argv(base), jax_cache, fs.join(base, "synth.log"))
    return {"base": base, **_finish_and_evaluate(base)}


@pytest.fixture(scope="module")
def gcs_base(server, spm_model):
    """Inputs and the prepared real/val stores in the bucket."""
    base = server.fresh_path()
    _write_inputs(base)
    fs.write_bytes(fs.join(base, "tokenizer.model"), spm_model)
    _prepare(base, "real", "real", "train.jsonl")
    _prepare(base, "val", "real", "val.jsonl")
    return base


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def _launch(module: str, argv: list[str], cache: str, log_path) -> subprocess.Popen:
    """A job as a subprocess; the emulator's env (STORAGE_EMULATOR_HOST, ...) is inherited."""
    if module == "experiments.train":
        argv = [*argv, "--verbosity=-1"]  # orbax logs every save at INFO
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def _wait_until(done, proc: subprocess.Popen, log_path, timeout: float = 180, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"job ended early:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no progress after {timeout}s:\n{_tail(log_path)}")
        time.sleep(poll)


def _run(module: str, argv: list[str], cache: str, log_path) -> str:
    proc = _launch(module, argv, cache, log_path)
    try:
        proc.wait(timeout=300)
    finally:
        proc.kill()  # a no-op once it has exited
    assert proc.returncode == 0, _tail(log_path)
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _tail(log_path, n: int = 4000) -> str:
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return f.read()[-n:]


def _seen(proxy: FaultProxy, needle: str, times: int = 1) -> bool:
    """Whether `times` writes naming `needle` went through the proxy."""
    return sum(needle in urllib.parse.unquote(r) for r in list(proxy.requests)
               if r.startswith(("POST", "PUT"))) >= times


def _kill_after_write(proc, proxy: FaultProxy, path: str, log_path) -> None:
    """SIGKILL `proc` as soon as it has written `path`; from then on every request fails."""
    needle = path.split("/", 3)[3]  # the object name
    _wait_until(lambda: _seen(proxy, needle), proc, log_path, poll=0.005)
    _wait_until(lambda: fs.exists(path), proc, log_path, poll=0.005)  # a resumable upload's end
    proxy.inject(*[503] * 100_000)
    proc.kill()
    proc.wait()
    proxy.clear()


def _committed(workdir: str, step: int) -> bool:
    return fs.exists(fs.join(workdir, "checkpoints", str(step), "commit_success.txt"))


# -- tests --------------------------------------------------------------------------------------

def test_pipeline_on_gcs_survives_sigkills_and_matches_local_disk(local, gcs_base, server,
                                                                   jax_cache, tmp_path):
    base, workdir = gcs_base, fs.join(gcs_base, "train")
    argv = _train_argv(base, workdir)
    synth = _synth_argv(base)
    with FaultProxy(server) as proxy:
        first = _launch("experiments.train", argv, jax_cache, tmp_path / "train1.log")
        _kill_after_write(first, proxy, fs.join(workdir, "checkpoints", "4", "commit_success.txt"),
                          tmp_path / "train1.log")
    assert _committed(workdir, 4) and not fs.exists(fs.join(workdir, "summary.json"))
    out = _run("experiments.train", argv, jax_cache, tmp_path / "train2.log")
    assert f"resumed from {fs.join(workdir, 'checkpoints')} at step 4\n" in out

    _export_generator(base)
    marker = fs.join(base, "synth", "_job", "shard-00000.done")
    with FaultProxy(server) as proxy:
        first = _launch("experiments.synthesize", synth, jax_cache, tmp_path / "synth1.log")
        _kill_after_write(first, proxy, marker, tmp_path / "synth1.log")
    assert fs.glob(fs.join(base, "synth", "_job", "*.done")) == [marker]
    out = _run("experiments.synthesize", synth, jax_cache, tmp_path / "synth2.log")
    assert "1 already done" in out

    got = _finish_and_evaluate(base)
    assert got["summary"]["params_sha256"] == local["summary"]["params_sha256"]
    assert got["summary"]["eval"] == local["summary"]["eval"]
    assert got["records"] == local["records"] and len(got["records"]) == NUM_DOCS
    for name in ("real", "val", "simple"):
        np.testing.assert_array_equal(got["tokens"][name], local["tokens"][name])
    assert got["simple_loss"] == local["simple_loss"]


def test_server_down_mid_checkpoint_then_resume_from_the_last_complete_one(
        local, gcs_base, server, jax_cache, tmp_path):
    workdir = fs.join(gcs_base, "outage")
    argv = _train_argv(gcs_base, workdir)
    with FaultProxy(server) as proxy:
        proc = _launch("experiments.train", argv, jax_cache, tmp_path / "train1.log")
        _wait_until(lambda: _seen(proxy, "/outage/checkpoints/8/", times=8), proc,
                    tmp_path / "train1.log", poll=0.005)  # the save of step 8 is under way
        server.stop()
        proc.kill()  # the job dies while storage is down
        proc.wait()
    server.start()
    assert _committed(workdir, 4) and not _committed(workdir, 8)
    assert fs.listdir(fs.join(workdir, "checkpoints", "8")), "no half-written step to ignore"

    out = _run("experiments.train", argv, jax_cache, tmp_path / "train2.log")
    assert f"resumed from {fs.join(workdir, 'checkpoints')} at step 4\n" in out
    summary = json.loads(fs.read_text(fs.join(workdir, "summary.json")))
    assert summary["params_sha256"] == local["summary"]["params_sha256"]


@pytest.mark.parametrize("bucket", ["missing", "read_only"])
def test_jobs_refuse_a_missing_or_read_only_bucket_naming_the_path(bucket, local, gcs_base, server):
    base = local["base"]
    target = "gs://megadoc-no-such-bucket/run" if bucket == "missing" else server.fresh_path()
    expected = "bucket does not exist" if bucket == "missing" else "permission denied"
    train_cfg = train_config(_train_argv(gcs_base, fs.join(target, "train")))
    synth_cfg = job.JobConfig(method="rephrase", generator=fs.join(base, "generator"),
                              docs=fs.join(base, "corpus", "train.jsonl"),
                              output=fs.join(target, "synth"))
    prepare_cfg = prepare.PrepareConfig(
        docs=fs.join(gcs_base, "corpus", "train.jsonl"), recipe="real",
        tokenizer=fs.join(gcs_base, "tokenizer.model"), seq_len=SEQ_LEN, seed=0,
        output=fs.join(target, "store"))
    with FaultProxy(server) as proxy:
        proxy.read_only = bucket == "read_only"
        for name, run in (("train", lambda: loop.train(train_cfg)),
                          ("synth", lambda: job.run(synth_cfg)),
                          ("store", lambda: prepare.prepare(prepare_cfg))):
            with pytest.raises(OSError) as e:
                run()
            assert fs.join(target, name) in str(e.value) and expected in str(e.value)
