"""Small GGUF files written with the `gguf` package: a random Llama (two layers, several
quantization types) with a byte-level BPE or a SentencePiece-style vocabulary and a ChatML
chat template, so no test needs a downloaded model."""
import gguf
import numpy as np

from tests.data_fixtures import corpus

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SHAPE = dict(hidden=64, ffn=128, layers=2, heads=4, kv_heads=2)
Q = gguf.GGMLQuantizationType
# One quantization type per tensor kind, so every supported decoder is exercised.
TENSOR_TYPES = {"token_embd": Q.F16, "output": Q.Q8_0, "attn_norm": Q.F32, "ffn_norm": Q.F32,
                "output_norm": Q.F32, "attn_q": Q.Q8_0, "attn_k": Q.Q4_0, "attn_v": Q.Q4_1,
                "attn_output": Q.BF16, "ffn_gate": Q.Q5_0, "ffn_up": Q.Q8_0, "ffn_down": Q.F32}


def byte_level_vocab(vocab_size=400):
    """(tokens, token types, merges) of a byte-level BPE trained on the test corpus."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([d["text"] + " “quotes” café ñ 0123456789\t" for d in corpus(100)],
                            trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    types = [3 if t in SPECIALS else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, types, merges


def sentencepiece_vocab(tmp_dir):
    """(tokens, token types, scores) of a sentencepiece BPE with byte fallback, spelled as a
    llama.cpp 'llama' vocabulary (control <s> </s>, byte pieces <0xNN>)."""
    import sentencepiece as spm

    from megadoc.data import tokenizer as tokenizer_lib

    path = tokenizer_lib.train_sentencepiece([d["text"] for d in corpus(100)], 500,
                                             f"{tmp_dir}/spm.model")
    sp = spm.SentencePieceProcessor(model_file=path)
    tokens, types, scores = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     6 if sp.is_byte(i) else 1)
    return tokens, types, scores


def write(path, *, tied=False, vocab="gpt2", tmp_dir=None, seed=0, architecture="llama",
          extra=None):
    """A random two-layer Llama GGUF at `path`, plus the `extra` metadata {key: str or bool};
    returns the number of tokens."""
    rng = np.random.default_rng(seed)
    h, f, n, k = SHAPE["hidden"], SHAPE["ffn"], SHAPE["heads"], SHAPE["kv_heads"]
    dh = h // n
    w = gguf.GGUFWriter(str(path), architecture)
    if vocab == "gpt2":
        tokens, types, merges = byte_level_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_merges(merges)
        eos, bos = tokens.index("<|im_end|>"), tokens.index("<|im_start|>")
        w.add_chat_template(CHATML)
    else:
        tokens, types, scores = sentencepiece_vocab(tmp_dir)
        w.add_tokenizer_model("llama")
        w.add_token_scores(scores)
        eos, bos = tokens.index("</s>"), tokens.index("<s>")
        w.add_unk_token_id(tokens.index("<unk>"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    v = len(tokens)
    w.add_block_count(SHAPE["layers"])
    w.add_context_length(1024)
    w.add_embedding_length(h)
    w.add_feed_forward_length(f)
    w.add_head_count(n)
    w.add_head_count_kv(k)
    w.add_rope_dimension_count(dh)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(v)
    for key, value in (extra or {}).items():
        (w.add_bool if isinstance(value, bool) else w.add_string)(key, value)

    def add(name, shape, scale=0.2):
        kind = name.split(".")[-2]
        if kind.endswith("norm"):
            array = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            array = (scale * rng.standard_normal(shape)).astype(np.float32)
        qtype = TENSOR_TYPES[kind]
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, array.astype(np.float16 if qtype == Q.F16 else np.float32))
        else:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)

    add("token_embd.weight", (v, h), 1.0)
    for i in range(SHAPE["layers"]):
        add(f"blk.{i}.attn_norm.weight", (h,))
        add(f"blk.{i}.attn_q.weight", (n * dh, h))
        add(f"blk.{i}.attn_k.weight", (k * dh, h))
        add(f"blk.{i}.attn_v.weight", (k * dh, h))
        add(f"blk.{i}.attn_output.weight", (h, n * dh))
        add(f"blk.{i}.ffn_norm.weight", (h,))
        add(f"blk.{i}.ffn_gate.weight", (f, h))
        add(f"blk.{i}.ffn_up.weight", (f, h))
        add(f"blk.{i}.ffn_down.weight", (h, f))
    add("output_norm.weight", (h,))
    if not tied:
        add("output.weight", (v, h))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return v
