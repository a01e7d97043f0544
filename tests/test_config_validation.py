"""Every job config checks its settings when it is built, so no job writes anything (a config.json,
a lock, a spill file) for settings it would later refuse, and a rerun with the corrected value
is never turned away."""
import dataclasses

import pytest

from megadoc.analysis import distill
from megadoc.data import prepare
from megadoc.models import llama
from megadoc.synth import job, unconditional
from megadoc.train import config

MODEL = llama.LlamaConfig(vocab_size=64, hidden=16, ffn=32, layers=1, heads=2, kv_heads=1,
                          max_seq_len=32)
TRAIN = config.TrainConfig(model=MODEL, data=config.DataConfig(real="r", global_batch=8),
                           optimizer=config.OptimizerConfig(lr=1e-3, weight_decay=0.1),
                           workdir="w")
VALID = {
    "job": job.JobConfig(method="rephrase", generator="g", docs="d", output="o"),
    "prepare": prepare.PrepareConfig(docs="d", recipe="stitched", tokenizer="t", seq_len=8,
                                     seed=0, output="o", generations="g"),
    "unconditional": unconditional.UnconditionalConfig(output="o", generator="w",
                                                       num_documents=4),
    "train": TRAIN,
    "distill": distill.DistillConfig(**{f.name: getattr(TRAIN, f.name)
                                        for f in dataclasses.fields(TRAIN)}, teacher=("t",)),
}
BAD = [
    ("job", {"top_p": 1.5}, "top_p"), ("job", {"top_p": 0.0}, "top_p"),
    ("job", {"top_k": -1}, "top_k"), ("job", {"temperature": float("nan")}, "temperature"),
    ("job", {"method": "latent_thought"}, "method"), ("job", {"splits": 0}, "splits"),
    ("job", {"questions": "q"}, "questions"), ("job", {"method": "focal_rewrite"}, "questions"),
    ("job", {"method": "entigraph_relations", "entities": "e"}, "relations"),
    ("prepare", {"real_position": "middle"}, "real_position"),
    ("prepare", {"recipe": "latent", "include_real": False}, "include_real"),
    ("prepare", {"seq_len": 0}, "seq_len"),
    ("unconditional", {"temperature": -1.0}, "temperature"),
    ("train", {"microbatches": 3}, "microbatches"),
    ("train", {"mesh": (-1, -1, 1)}, "mesh"), ("train", {"mesh": (0, 1, 1)}, "mesh"),
    ("train", {"val": (("a", "x"), ("a", "y"))}, "val"),
    ("distill", {"kl_weight": 1.5}, "kl_weight"),
    ("distill", {"teacher_average": "median"}, "teacher_average"),
    ("distill", {"microbatches": 3}, "microbatches"),
]


@pytest.mark.parametrize("name, change, field", BAD)
def test_a_bad_setting_fails_when_the_config_is_built(name, change, field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(VALID[name], **change)


def test_the_valid_configs_build():
    for name, cfg in VALID.items():
        assert dataclasses.replace(cfg) == cfg, name
