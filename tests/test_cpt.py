"""Continued pre-training: `experiments.train --init=<HF dir>` starts from the model's weights
with its architecture; its first loss is the model's own (transformers') loss on that batch."""
import json
import os

import numpy as np
import pytest

from megadoc.analysis import quality
from megadoc.data import prepare as prepare_lib
from megadoc.data import schedule as schedule_lib
from megadoc.data import store as store_lib
from megadoc.models import hf
from megadoc.train import loop
from knowledge_fixtures import make_hf_model
from train_fixtures import train_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cpt")
    model = make_hf_model(str(d / "base"), max_seq_len=256)
    docs = d / "docs.jsonl"
    with open(docs, "w") as f:
        for a in quality.read_quality(quality.FIXTURE):
            for i, para in enumerate(a.text.split("\n\n")):
                f.write(json.dumps({"id": f"{a.id}-{i}", "text": para}) + "\n")
    store = str(d / "store")
    prepare_lib.prepare(prepare_lib.PrepareConfig(docs=str(docs), recipe="real", tokenizer=model,
                                                  seq_len=32, seed=0, output=store))
    return {"model": model, "store": store, "dir": d}


def test_init_takes_the_architecture_and_the_cpt_preset(setup):
    cfg = train_config([f"--init={setup['model']}", f"--workdir={setup['dir'] / 'w'}",
                        f"--real={setup['store']}"])
    want, _ = hf.load(setup["model"])
    assert (cfg.model.hidden, cfg.model.layers, cfg.model.vocab_size, cfg.model.max_seq_len) == \
        (want.hidden, want.layers, want.vocab_size, want.max_seq_len)
    assert cfg.init == setup["model"] and cfg.data.global_batch == 16
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.warmup_frac) == \
        (5e-6, 0.01, 0.05)


def test_first_step_loss_is_the_models_own_and_training_lowers_it(setup):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    workdir = setup["dir"] / "run"
    cfg = train_config([f"--init={setup['model']}", f"--workdir={workdir}",
                        f"--real={setup['store']}", "--global_batch=8", "--epochs=6", "--lr=3e-3",
                        "--warmup=0.1", "--checkpoint_every_minutes=0"])
    summary = loop.train(cfg)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]

    store = store_lib.open(setup["store"])
    sched = schedule_lib.MixSchedule(len(store), 0, 8, 0.0, 6, 0)
    _, windows = sched.batch_indices(0)
    tokens = torch.tensor(store.read(windows)["tokens"], dtype=torch.long)
    reference = transformers.LlamaForCausalLM.from_pretrained(setup["model"],
                                                              torch_dtype=torch.float32)
    with torch.no_grad():
        logits = reference(input_ids=tokens[:, :-1]).logits
        own_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     tokens[:, 1:].reshape(-1)).item()
    assert losses[0] == pytest.approx(own_loss, rel=1e-2)  # bf16 compute against fp32
    assert summary["status"] == "finished" and len(losses) == sched.num_steps
    assert np.mean(losses[-3:]) < losses[0] - 0.3


def test_a_workdir_is_recognised_before_its_run_record_config(setup, tmp_path):
    from megadoc.train import pretrained

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text("{}")
    assert pretrained.kind(str(tmp_path)) == "workdir"
    assert pretrained.kind(setup["model"]) == "hf"
    assert pretrained.kind("x/model.Q4_1.gguf") == "gguf"
    with pytest.raises(FileNotFoundError, match="expected a .gguf file"):
        pretrained.kind(str(tmp_path / "nothing"))
