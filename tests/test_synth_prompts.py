"""Prompt templates, the chat format and latent-thought split points (no model needed)."""
import pytest

from megadoc.data import tokenizer as tokenizer_lib
from megadoc.synth import prompts, split

class ByteTokenizer:
    """One id per UTF-8 byte (like a byte-level BPE, a cut can fall inside a character)."""

    eos_id, bos_id, vocab_size, chat_template = 256, None, 257, None

    def __init__(self, specials=None):
        self.specials = specials or {}

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")

    def special_token_id(self, name):
        return self.specials.get(name)


def test_builtin_templates_load_and_render():
    rephrase = prompts.load_template(prompts.builtin_template("rephrase"), "rephrase")
    system, user = rephrase.render(document="THE DOC {braces} stay")
    assert system and "Wikipedia" in user and user.endswith("THE DOC {braces} stay")
    assert rephrase.name.startswith("rephrase@")

    thought = prompts.load_template(prompts.builtin_template("latent_thoughts"), "latent_thoughts")
    system, user = thought.render(prefix="AAA", suffix="BBB")
    assert user.index("AAA") < user.index("BBB")
    assert "step-by-step reasoning" in user


@pytest.mark.parametrize("body, message", [
    ("[user]\nRewrite {document} and {title}\n", "unknown placeholder(s) ['title']"),
    ("[user]\nRewrite this text.\n", "missing placeholder(s) ['document']"),
    ("[user]\nRewrite {document\n", "malformed placeholder"),
    ("[user]\nRewrite {document!r}\n", "plain {name}"),
    ("[user]\n{document}\n[system]\nBe nice.\n", "optional [system] section then a [user]"),
    ("preamble\n[user]\n{document}\n", "optional [system] section then a [user]"),
    ("[system]\nBe nice.\n[user]\n\n", "[user] section is empty"),
])
def test_broken_template_names_file_and_problem(tmp_path, body, message):
    path = tmp_path / "broken.txt"
    path.write_text(body)
    with pytest.raises(ValueError) as e:
        prompts.load_template(str(path), "rephrase")
    assert str(path) in str(e.value) and message in str(e.value)


def test_template_without_markers_is_all_user_message(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Before {prefix} after {suffix}, with {{literal}} braces.\n")
    t = prompts.load_template(str(path), "latent_thoughts")
    assert t.render(prefix="P", suffix="S") == (None, "Before P after S, with {literal} braces.")
    path.write_text("Before {prefix} after {suffix}.\n")
    assert prompts.load_template(str(path), "latent_thoughts").name != t.name  # content-hashed


def test_plain_format_without_a_chat_template():
    tok = ByteTokenizer()
    assert prompts.encode(tok, "SYS", "USER") == list(b"SYS\n\nUSER\n\n")
    assert prompts.encode(tok, None, "USER") == list(b"USER\n\n")
    assert prompts.stop_tokens(tok) == (256,)


def test_splits_cut_tokens_into_equal_pieces(tmp_path):
    text = "".join(f"Sentence number {i} says something.\n" for i in range(40))
    model = tokenizer_lib.train_sentencepiece([text] * 5, 300, str(tmp_path / "t.model"))
    tok = tokenizer_lib.load(model)
    ids = tok.encode(text)
    offsets = split.split_offsets(tok, text, 3)
    assert offsets == sorted(offsets) and 0 < offsets[0] and offsets[-1] < len(text)
    for i, offset in enumerate(offsets, start=1):
        # The prefix is exactly the first floor(i*n/4) tokens; prefix + suffix is the document.
        assert tok.encode(text[:offset]) == ids[: i * len(ids) // 4]


def test_split_moves_off_the_middle_of_a_character():
    tok = ByteTokenizer()
    text = "ééééé"  # 10 bytes: a cut at byte 5 falls inside the third character
    offsets = split.split_offsets(tok, text, 1)
    assert offsets == [3] or offsets == [2]
    assert text[: offsets[0]] + text[offsets[0]:] == text


def test_split_of_a_tiny_document_gives_every_split():
    tok = ByteTokenizer()
    assert split.split_offsets(tok, "ab", 4) == [0, 0, 1, 1]


def test_chat_template_date_is_the_given_one_not_the_clock():
    """Llama 3.1's template prints "Today Date" with strftime_now: a fixed date (the job's
    chat_date) keeps the prompt, and so the records, the same on any day."""
    class ChatBytes(ByteTokenizer):
        chat_template = "Today {{ strftime_now('%d %b %Y') }}: {{ messages[0]['content'] }}"
        special_tokens, template_tokens = [], {}

        def encode_with_special_tokens(self, text):
            return self.encode(text)

    tok = ChatBytes()
    assert bytes(prompts.encode(tok, None, "hi")) == b"Today 23 Jul 2024: hi"
    assert bytes(prompts.encode(tok, None, "hi", date="2026-12-02")) == b"Today 02 Dec 2026: hi"
