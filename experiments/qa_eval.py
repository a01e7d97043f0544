"""Closed-book or retrieval-augmented accuracy on QuALITY-format questions.

    python -m experiments.qa_eval --model=SmolLM2-135M-Instruct.gguf --quality=QUALITY.jsonl \\
        --mode=closed_book --output=closed_book.json
    python -m experiments.qa_eval --model=gs://b/runs/cpt --quality=QUALITY.jsonl --mode=rag \\
        --rag_chunks=8 --output=gs://b/runs/cpt/rag.json

--model is a .gguf file, a Hugging Face Llama directory or a megadoc workdir (newest
checkpoint); its tokenizer comes with it (a workdir's: the one its stores were prepared with)
unless --tokenizer says otherwise. --scoring=loglikelihood (default) scores each option by its
log-likelihood; --scoring=generate parses the answer letter from a chain-of-thought generation
after worked examples (EntiGraph's protocol, temperature 0.1), the examples as earlier turns of
the model's chat template (megadoc.analysis.quality.cot_messages). Every prompt names the
article (title, author, year where the file has them). RAG retrieves from the whole file's
articles (--scope=corpus) or, as an oracle, the question's own (--scope=article). --split=dev
(tune on it) or test evaluates a fixed part of the articles. Writes {"accuracy", "n",
"attempt_rate", "questions": [{"prompt", "predicted_label", ...}], ...} to --output.
"""
from megadoc import cli
from megadoc.pipelines import qa_eval

FLAGS = cli.command_flags(qa_eval.QaEvalConfig, aliases={"rag_chunks": "top_k"},
                          choices={"mode": qa_eval.MODES, "scoring": qa_eval.SCORINGS,
                                   "scope": qa_eval.SCOPES, "split": qa_eval.SPLITS})


def run(f=FLAGS) -> dict:
    return qa_eval.run(cli.build(qa_eval.QaEvalConfig, f))


if __name__ == "__main__":
    cli.run_flags(run, FLAGS)
