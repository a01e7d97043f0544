"""HF import/export: golden parity with transformers' Llama, round trip, clear errors."""
import dataclasses
import json

import jax
import ml_dtypes
import numpy as np
import pytest

from megadoc.models import hf, llama, sharding

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOKENS = np.random.default_rng(0).integers(0, 128, size=(2, 48)).astype(np.int32)

CASES = {
    "mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "gqa": dict(num_key_value_heads=2),
    "gqa_llama3": dict(num_key_value_heads=2, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
}


def _hf_model(directory, max_shard_size="1GB", **overrides):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{
        **dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=False),
        **overrides})
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm scales, so a misplaced norm weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    return model


def _hf_logits(model):
    with torch.no_grad():
        return model(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()


def _our_logits(config, params):
    config = dataclasses.replace(config, dtype="float32", attention="xla")
    return np.asarray(llama.forward(config, params, TOKENS))


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_matches_transformers_and_export_round_trips(tmp_path, case):
    model = _hf_model(tmp_path / "hf", **CASES[case])
    if CASES[case].get("tie_word_embeddings"):  # the checkpoint has no lm_head of its own
        from safetensors import safe_open
        with safe_open(str(tmp_path / "hf" / "model.safetensors"), "np") as f:
            assert "lm_head.weight" not in f.keys()
    config, params = hf.load(str(tmp_path / "hf"))
    assert config.kv_heads == CASES[case]["num_key_value_heads"]
    assert (config.rope_scaling is not None) == ("rope_scaling" in CASES[case])
    expected = _hf_logits(model)
    np.testing.assert_allclose(_our_logits(config, params), expected, atol=1e-4, rtol=0)

    hf.save(config, params, str(tmp_path / "out"))
    reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    np.testing.assert_allclose(_hf_logits(reloaded), expected, atol=1e-4, rtol=0)


def test_bf16_checkpoint_loads_as_fp32(tmp_path):
    model = _hf_model(tmp_path / "fp32", num_key_value_heads=2)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    _, params = hf.load(str(tmp_path / "bf16"))
    _, reference = hf.load(str(tmp_path / "fp32"))
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.asarray(want).astype(ml_dtypes.bfloat16))


def test_llama3_scaling_changes_logits(tmp_path):
    """The scaled parity case would pass vacuously if scaling had no effect at these lengths:
    the difference must dwarf the 1e-4 parity tolerance."""
    _hf_model(tmp_path / "hf", **CASES["gqa_llama3"])
    config, params = hf.load(str(tmp_path / "hf"))
    unscaled = dataclasses.replace(config, rope_scaling=None)
    assert np.abs(_our_logits(config, params) - _our_logits(unscaled, params)).max() > 1e-3


def test_load_shards_into_mesh(tmp_path):
    """A sharded checkpoint (index + several files) loads straight into the rules' placement."""
    model = _hf_model(tmp_path / "hf", max_shard_size="20KB", num_key_value_heads=2)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    mesh = sharding.make_mesh(2, 2, 2)
    config, params = hf.load(str(tmp_path / "hf"), mesh=mesh)
    want = llama.param_shardings(config, mesh)
    for got, expected in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        assert got.sharding.is_equivalent_to(expected, got.ndim)
    assert params["layers"]["q"].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor", None)
    np.testing.assert_allclose(_our_logits(config, params), _hf_logits(model), atol=1e-4, rtol=0)


def test_rope_parameters_config(tmp_path):
    """transformers 5 style: rope_theta inside rope_parameters."""
    hf_config = hf.config_to_hf(dataclasses.replace(llama.preset("tiny"), rope_theta=1.0))
    del hf_config["rope_theta"], hf_config["rope_scaling"]
    hf_config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192}
    config = hf.config_from_hf(hf_config, "config.json")
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == llama.RopeScaling(8.0, 1.0, 4.0, 8192)


def _write_tiny(directory):
    config = llama.preset("tiny")
    hf.save(config, jax.jit(llama.init, static_argnums=0)(config, jax.random.key(0)),
            str(directory))
    return config


def test_not_a_llama_config_is_rejected(tmp_path):
    _write_tiny(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json.*not a Llama.*gpt2"):
        hf.load(str(tmp_path))


def test_missing_and_mismatched_tensors_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    _write_tiny(tmp_path)
    weights = str(tmp_path / "model.safetensors")
    tensors = load_file(weights)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        hf.load(str(tmp_path))

    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((192, 32), np.float32)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"model\.safetensors.*up_proj.*\(192, 32\).*\(192, 64\)"):
        hf.load(str(tmp_path))


def test_save_and_load_on_gcs(gcs_server):
    path = gcs_server.fresh_path() + "/tiny"
    config = llama.preset("tiny")
    params = jax.jit(llama.init, static_argnums=0)(config, jax.random.key(1))
    hf.save(config, params, path)
    loaded_config, loaded = hf.load(path)
    assert loaded_config == config
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(got, want)
