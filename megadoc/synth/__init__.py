"""Synthetic text from real documents with a generator LLM.

prompts.py + templates/  prompt templates and the model's own chat template (Jinja)
split.py                 latent-thought split points
sampler.py               KV-cache sampler (continuous batching, on-device decode loop)
generator.py             a generator: any model train.pretrained loads, with its stop tokens
job.py                   the sharded, resumable job behind `python -m experiments.synthesize`
"""
