"""megadoc: data-efficient LLM pre-training with synthetic megadocs, in JAX."""
from setuptools import find_packages, setup

setup(
    name="megadoc",
    version="0.1.0",
    description="Data-efficient pre-training by scaling synthetic megadocs (JAX/Flax).",
    packages=find_packages(include=["megadoc", "megadoc.*", "experiments", "experiments.*"]),
    package_data={"megadoc": ["synth/templates/*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "tensorstore>=0.1.80",
        "grain>=0.2.18",
        "sentencepiece>=0.2",
        "google-cloud-storage>=3.0",
        "gcsfs>=2024.2",  # orbax/etils reach gs:// through fsspec when tensorflow is absent
        "absl-py>=2.0",
        "tokenizers>=0.21",
        "gguf>=0.17",  # GGUF models and vocabularies (llama.cpp's format)
        "jinja2>=3.1",  # models' own chat templates
        "safetensors>=0.5",
        "pyarrow>=18",
        "scipy>=1.13",
        "matplotlib>=3.9",
        "numpy>=2.0",
        "faiss-cpu>=1.9",  # nearest-neighbour document pairs (experiments.pairs, experiments.sbp)
        "bm25s>=0.2",  # BM25 retrieval for the knowledge evaluation (RAG)
    ],
    extras_require={
        # Test-only peers: the reference implementations megadoc is checked against.
        "test": [
            "pytest>=8",
            "torch==2.13.0",
            "transformers>=5.0",
            "accelerate>=1.0",  # transformers loads GGUF files (gguf_file=) through it
            "gcp-storage-emulator>=2024.8",
            "lm_eval==0.4.13",  # the harness the papers' benchmark numbers come from
            # The plan tests compile megadoc's steps for TPU slices: the only check, on a
            # machine without a TPU, that the code fits the hardware it is written for.
            "libtpu",
        ],
        # experiments.synthesize --executor=ray: shards on a Ray cluster's workers.
        "ray": ["ray>=2.40"],
        # Compiling for TPU slices on any machine (experiments.plan); on a TPU VM, jax[tpu].
        "tpu": ["libtpu"],
    },
)
