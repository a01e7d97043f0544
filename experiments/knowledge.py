"""Knowledge acquisition end to end (Synthetic Mixed Training / EntiGraph): synthesize from a
small corpus, continue pre-training the base model on it, evaluate closed-book and with RAG,
and plot accuracy against synthetic tokens (megadoc.pipelines.knowledge).

    python -m experiments.knowledge --generator=SmolLM2-135M-Instruct.gguf \\
        --quality=quality_dev.jsonl --workdir=/tmp/knowledge --methods=qa,focal_rewrite \\
        --volumes=1,2,4 --seq_len=512 --epochs=2 --lr=1e-4

The corpus is the QuALITY file's articles (default: the fixture megadoc ships). Volume v trains
on the QA pairs with sample < v and the rewrites of their questions (the first 3·v entity groups
for EntiGraph: every pair, then triples), so smaller volumes are exact subsets of larger ones. Each volume gets a `simple`
store and a CPT run from --base (default: the generator); --replay=STORE mixes generic text at
--replay_mix (10% in both papers). Rerunning resumes every stage. Writes
<workdir>/results.json (per mode, for the base model and each volume: accuracy and n; each
stage's wall seconds) and accuracy.png. RAG retrieves from every article; --split=dev (tune on
it) or test evaluates a fixed part of the articles' questions.
"""
from megadoc import cli
from megadoc.analysis import quality
from megadoc.pipelines import knowledge

FLAGS = cli.command_flags(knowledge.KnowledgeConfig, aliases={"rag_chunks": "top_k"},
                          choices={"split": quality.SPLITS})


def build_config(f=FLAGS) -> knowledge.KnowledgeConfig:
    return cli.build(knowledge.KnowledgeConfig, f)


if __name__ == "__main__":
    cli.run_flags(lambda: knowledge.run(build_config()), FLAGS)
