"""The data path, one module per step: docs → megadocs → windows → store → schedule → loader.

tokenizer  sentencepiece / HF tokenizer.json / GGUF vocabulary behind one interface
gguf_vocab the tokenizer a GGUF file describes, rebuilt with `tokenizers`
docs       source documents and generation records (JSONL, gzip, Parquet; local or gs://)
methods    the synthesis methods: one name each, template, record parsing, recipes that take them
megadocs   the recipes: real, simple, stitched, latent
windows    concat-and-chunk into seq_len+1 windows with segment ids
prepare    the job that streams, permutes, tokenizes and writes a window store
store      the window store (tensorstore zarr3) and its checks
schedule   which windows make up the global batch at each step
loader     global jax.Arrays on the mesh, each process reading only its rows
"""
