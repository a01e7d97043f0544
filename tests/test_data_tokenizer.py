import json

import pytest

from data_fixtures import corpus, train_tokenizer
from megadoc import fs
from megadoc.data import tokenizer

HARD_TEXTS = [
    "  two leading spaces, three   inside, trailing  ",
    "line one\nline two\n\n\nafter blank lines\n",
    "\ttab\t\tindented\r\nwindows line end",
    "digits 0123456789 and 3.14159 and 1,000,000",
    "ünïcødé: 日本語のテキスト, emoji 😀🚀, Ελληνικά, العربية",
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "spm.model")
    return train_tokenizer(path, [d["text"] for d in corpus(200)])


def test_sentencepiece_round_trips_text_exactly(spm):
    for text in HARD_TEXTS:
        ids = spm.encode(text)
        assert spm.decode(ids) == text, repr(text)
        assert spm.eos_id not in ids and (spm.bos_id is None or spm.bos_id not in ids)
    assert len(spm.encode("2024")) == 4  # digits are split


def test_sentencepiece_load_fingerprint_and_specials(spm, tmp_path):
    again = tokenizer.load(spm.path)
    assert again.fingerprint == spm.fingerprint and again.vocab_size == spm.vocab_size
    fs.write_bytes(str(tmp_path / "d" / "tok.model"), fs.read_bytes(spm.path))
    assert tokenizer.load(str(tmp_path / "d")).fingerprint == spm.fingerprint  # a dir holding one
    other = train_tokenizer(str(tmp_path / "other.model"), [d["text"] for d in corpus(200, seed=5)], 350)
    assert other.fingerprint != spm.fingerprint
    assert spm.special_token_id("</s>") == spm.eos_id
    assert spm.special_token_id("\n") is not None
    assert spm.special_token_id("<|no such token|>") is None


def write_llama3_style(directory, eos_in_config=None):
    """A tiny byte-level BPE tokenizer.json carrying Llama 3's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([d["text"] for d in corpus(100)], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    fs.write_text(fs.join(directory, "tokenizer.json"), tok.to_str())
    if eos_in_config:
        fs.write_text(fs.join(directory, "tokenizer_config.json"), json.dumps({"eos_token": eos_in_config}))


def test_hf_tokenizer_json_with_llama3_specials(tmp_path):
    write_llama3_style(str(tmp_path))
    tok = tokenizer.load(str(tmp_path))
    assert tok.eos_id == tok.special_token_id("<|end_of_text|>") == 1
    assert tok.bos_id == 0 and tok.special_token_id("<|eot_id|>") == 2
    assert tok.special_token_id("<|nope|>") is None
    for text in HARD_TEXTS:
        ids = tok.encode(text)
        assert tok.bos_id not in ids  # no BOS even though the post-processor would add one
        assert tok.decode(ids) == text
    spelled = "a page that says <|end_of_text|> and <|eot_id|> in its text"
    assert not {0, 1, 2} & set(tok.encode(spelled)) and tok.decode(tok.encode(spelled)) == spelled
    assert tokenizer.load(str(tmp_path / "tokenizer.json")).fingerprint == tok.fingerprint
    instruct = tmp_path / "instruct"
    write_llama3_style(str(instruct), eos_in_config="<|eot_id|>")
    assert tokenizer.load(str(instruct)).eos_id == 2


def test_unusable_tokenizer_path_is_a_clear_error(tmp_path):
    (tmp_path / "README").write_text("x")
    with pytest.raises(ValueError, match="tokenizer.json"):
        tokenizer.load(str(tmp_path))


def test_encode_as_hf_adds_bos_and_reads_special_spellings(spm, tmp_path):
    """The Hugging Face convention lm-eval scores with, for both tokenizer kinds."""
    text = "the cat <s> sat </s> on"
    ids = spm.encode_as_hf(text)
    assert ids[0] == spm.bos_id and ids.count(spm.bos_id) == 2 and spm.eos_id in ids
    assert ids == [spm.bos_id] + spm.encode("the cat ") + [spm.bos_id] + spm.encode(" sat ") + \
        [spm.eos_id] + spm.encode(" on")
    write_llama3_style(str(tmp_path))
    hf = tokenizer.load(str(tmp_path))
    ids = hf.encode_as_hf("a page that says <|end_of_text|> here")
    assert ids[0] == hf.bos_id and ids.count(hf.eos_id) == 1
    assert hf.encode("a page") == hf.encode_as_hf("a page")[1:]
