"""KV-cache sampler: one prefill per prompt, many decode steps per host sync, continuous batching.

The decode state lives on device: a KV cache of `batch_size` slots plus per-slot counters, and a
prompt store of `PROMPT_ROWS` prefilled prompts (their KV rows and the logits after their last
token). A prompt is prefilled once, into the store, and stays there until every one of its
samples has a slot: admitting a sample copies the prompt's rows into a free slot and draws its
first token from the stored logits, so prompt positions are computed once however many samples
a prompt has and however late they are admitted. Between host syncs a `lax.while_loop` runs up
to `steps_per_sync` decode steps, leaving early once enough slots are free to be worth refilling.
Prompt lengths and the cache positions a decode call attends to are bucketed (`_bucket`: at most
1/8 and 1/4 padding), so few shapes compile.

Randomness: sample `s` of a request with key `r` draws token `t` with
`fold_in(fold_in(fold_in(PRNGKey(seed), r), s), t)`, so its text depends on nothing else (not the
batch size, the slot, the other requests or the host).

The sampled model is `members` Llamas of one config (params with a leading member axis when
more than one): the next token is drawn from the mean of their logits, each member keeping its
own KV rows (stacked after one another on the cache's layer axis). One member is the generator
of the synthesis job; several are an ensemble drawing unconditional documents.

Generated token lists never contain the prompt nor the stop token that ended them. An optional
repetition guard (`Settings.repetition_ngram`) ends a row inside the decode loop once its
latest n-gram has occurred more than `repetition_limit` times (finish reason "repetition").
The `Cost` of everything run so far is on `Sampler.cost`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from megadoc.models import llama, matmul
from megadoc.models import sharding

PROMPT_ALIGN = 16
CACHE_ALIGN = 64
# Prompts per prefill call at most: a few fixed row counts (powers of two up to this), so each
# prompt-length bucket compiles a few times; 8 rows amortise the per-call cost.
PREFILL_ROWS = 8
# Prefilled prompts kept on device while their samples wait for slots; requests read ahead.
PROMPT_ROWS = 2 * PREFILL_ROWS
LOOKAHEAD = 4 * PREFILL_ROWS

FINISH_STOP = "eos"              # ended on one of the stop tokens
FINISH_LENGTH = "length"         # max_new_tokens reached (or the end of the model's context)
FINISH_TOO_LONG = "prompt_too_long"  # the prompt leaves no room in the model's context
FINISH_REPETITION = "repetition"     # the repetition guard ended it


@dataclasses.dataclass(frozen=True)
class Settings:
    """How tokens are drawn. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters;
    repetition_ngram 0 disables the repetition guard."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_tokens: tuple[int, ...] = ()
    repetition_ngram: int = 0
    repetition_limit: int = 4

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_ngram < 0 or self.repetition_ngram == 1:
            raise ValueError(f"repetition_ngram must be 0 (off) or >= 2, got "
                             f"{self.repetition_ngram}")
        if self.repetition_limit < 1:
            raise ValueError(f"repetition_limit must be >= 1, got {self.repetition_limit}")
        object.__setattr__(self, "stop_tokens", tuple(sorted({int(t) for t in self.stop_tokens})))


@dataclasses.dataclass(frozen=True)
class Request:
    """One prompt to sample as samples first_sample .. first_sample + num_samples - 1. `key` (any
    int, reduced to 32 bits) names its random stream, e.g. a hash of the document id; `tag` is
    returned untouched."""

    prompt: Sequence[int]
    key: int
    num_samples: int = 1
    first_sample: int = 0
    tag: Any = None


@dataclasses.dataclass(frozen=True)
class Completion:
    request: Request
    sample: int
    tokens: list[int]
    finish_reason: str  # FINISH_STOP | FINISH_LENGTH | FINISH_TOO_LONG | FINISH_REPETITION


@dataclasses.dataclass
class Cost:
    """What the sampler has spent so far. Device-seconds are wall seconds of the calls (the host
    waits for each) times the devices of the mesh. A row-step is one slot in one decode step;
    it is useful when the slot is decoding. Attended positions are the cache positions the
    decode steps read (every slot reads the call's whole attended length), needed positions
    those the decoding slots had written. Steady-state counts leave out the decode calls made
    while too few samples were left to refill the free slots (the end of the input)."""

    devices: int = 1
    prompts: int = 0
    prompt_tokens: int = 0
    prefill_positions: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    row_steps: int = 0
    useful_row_steps: int = 0
    steady_row_steps: int = 0
    steady_useful_row_steps: int = 0
    attended_positions: int = 0
    needed_positions: int = 0
    generated_tokens: int = 0

    def summary(self) -> dict:
        """The counts, device-seconds and the rates derived from them."""
        device_s = (self.prefill_s + self.decode_s) * self.devices
        return {
            "prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
            "prefill_device_s": round(self.prefill_s * self.devices, 3),
            "decode_device_s": round(self.decode_s * self.devices, 3),
            "generated_tokens_per_device_s": round(self.generated_tokens / device_s, 2)
            if device_s else None,
            "prefill_positions_per_prompt_token": _ratio(self.prefill_positions,
                                                         self.prompt_tokens),
            "useful_row_step_fraction": _ratio(self.useful_row_steps, self.row_steps),
            "steady_useful_row_step_fraction": _ratio(self.steady_useful_row_steps,
                                                      self.steady_row_steps),
            "attended_position_fraction": _ratio(self.needed_positions, self.attended_positions),
        }


def _ratio(a, b):
    return round(a / b, 4) if b else None


def _bucket(n: int, align: int, bits: int) -> int:
    """The smallest multiple of `align` (a power of two) >= n that has at most `bits`
    significant binary digits above it: padding under 2**(1 - bits) of n, and few values."""
    step = max(align, 1 << max(0, int(n).bit_length() - bits))
    return -(-int(n) // step) * step


# ----------------------------------------------------------------------------- device functions

def _filter_logits(settings: Settings, logits_BxV):
    logits_BxV = logits_BxV / settings.temperature
    if settings.top_k:
        kth_Bx1 = jax.lax.top_k(logits_BxV, settings.top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if settings.top_p < 1.0:
        keys_BxV = _order_keys(logits_BxV)
        logits_BxV = jnp.where(keys_BxV < _nucleus_cutoff(logits_BxV, keys_BxV, settings.top_p),
                               -jnp.inf, logits_BxV)
    return logits_BxV


def _order_keys(x):
    """uint32 keys of float32 values in the same order (the usual sign-bit flip)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _nucleus_cutoff(logits_BxV, keys_BxV, top_p: float):
    """Per row [B, 1], the key of the nucleus's smallest logit: the nucleus is the shortest run
    of tokens by descending logit whose probability reaches top_p, ties at its edge included.

    With M(t) the probability of the tokens whose key exceeds t (non-increasing in t, constant
    between tokens' keys), the cutoff is the smallest t with M(t) < top_p, always some token's
    key. It is found by bisection over the 32-bit keys: 32 masked sums over the vocabulary.
    Sorting the vocabulary instead cost ~1 s per decode step at batch 32, vocabulary 49152, on
    XLA:CPU (this ~20x less)."""
    probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)

    def mass_above(t_Bx1):
        return jnp.sum(jnp.where(keys_BxV > t_Bx1, probs_BxV, 0.0), axis=-1, keepdims=True)

    def halve(_, bounds):  # invariant: M(lo) >= top_p > M(hi)
        lo_Bx1, hi_Bx1 = bounds
        mid_Bx1 = lo_Bx1 + (hi_Bx1 - lo_Bx1) // 2
        below = mass_above(mid_Bx1) < top_p
        return jnp.where(below, lo_Bx1, mid_Bx1), jnp.where(below, mid_Bx1, hi_Bx1)

    lo_Bx1 = jnp.min(keys_BxV, axis=-1, keepdims=True) - 1  # M = 1: every token is above it
    hi_Bx1 = jnp.max(keys_BxV, axis=-1, keepdims=True)  # M = 0
    return jax.lax.fori_loop(0, 32, halve, (lo_Bx1, hi_Bx1))[1]


def _argmax(x_BxV):
    """First index of each row's maximum, as jnp.argmax, but two plain reductions: XLA:CPU runs
    argmax's (value, index) reduction several times slower."""
    iota_V = jnp.arange(x_BxV.shape[-1], dtype=jnp.int32)
    is_max_BxV = x_BxV == jnp.max(x_BxV, axis=-1, keepdims=True)
    return jnp.min(jnp.where(is_max_BxV, iota_V, x_BxV.shape[-1]), axis=-1)


def _sample(settings: Settings, logits_BxV, keys_Bx2, step_B):
    """One token per row; row b uses only its own key folded with its own step. The draw is
    `jax.random.categorical`'s (Gumbel noise from the row's key, then the argmax)."""
    if settings.temperature == 0:
        return _argmax(logits_BxV)
    logits_BxV = _filter_logits(settings, logits_BxV)
    keys = jax.random.wrap_key_data(keys_Bx2, impl="threefry2x32")
    keys = jax.vmap(jax.random.fold_in)(keys, step_B)
    gumbel_BxV = jax.vmap(lambda k: jax.random.gumbel(k, logits_BxV.shape[-1:]))(keys)
    return _argmax(gumbel_BxV + logits_BxV)


def _is_stop(settings: Settings, tokens_B):
    if not settings.stop_tokens:
        return jnp.zeros(tokens_B.shape, bool)
    return jnp.isin(tokens_B, jnp.asarray(settings.stop_tokens, jnp.int32))


def _state_specs(config, mesh, state_shapes):
    """PartitionSpecs of the decode state: slots on the data axes, kv heads on tensor; the
    prompt store's rows are replicated."""
    cache_axes = ("layers", "batch", "seq", "kv_heads", "head_dim")
    store_axes = ("layers", None, "seq", "kv_heads", "head_dim")
    axes = {"cache": cache_axes, "prompts": store_axes, "prompt_logits": (None, None),
            "key": ("batch", None), "out": ("batch", None)}

    def spec(path, shape):
        return sharding.spec(axes.get(path[0].key, ("batch",)), shape.shape, mesh)

    return jax.tree_util.tree_map_with_path(spec, state_shapes)


def _constrain_state(config, mesh, state):
    if mesh is None:
        return state
    return jax.tree.map(jax.lax.with_sharding_constraint, state,
                        _state_specs(config, mesh, state))


def _constrain_layer_caches(mesh, caches):
    """The per-layer [B, S, K, Dh] caches of the decode loop, laid out as the stacked cache."""
    if mesh is None:
        return caches
    spec = sharding.spec(("batch", "seq", "kv_heads", "head_dim"), caches["k"][0].shape, mesh)
    return jax.tree.map(lambda c: jax.lax.with_sharding_constraint(c, spec), caches)


def _zeros_cache(config, members, rows, length):
    """KV rows of `members` models, their layers one after another on the leading axis."""
    cache = llama.init_cache(config, rows, length)
    if members == 1:
        return cache
    return {n: jnp.concatenate([c] * members) for n, c in cache.items()}


def _empty_state(config, members, batch_size, cache_len, prompt_len, max_new):
    def zeros(dtype=jnp.int32):  # distinct buffers: the state is donated leaf by leaf
        return jnp.zeros((batch_size,), dtype)

    return {
        "cache": _zeros_cache(config, members, batch_size, cache_len),
        "prompts": _zeros_cache(config, members, PROMPT_ROWS, prompt_len),
        "prompt_logits": jnp.zeros((PROMPT_ROWS, config.vocab_size), jnp.float32),
        "last": zeros(), "pos": zeros(), "count": zeros(), "budget": zeros(),
        "active": zeros(bool), "stopped": zeros(bool), "repeated": zeros(bool),
        "key": jnp.zeros((batch_size, 2), jnp.uint32),
        "out": jnp.zeros((batch_size, max_new), jnp.int32),
    }


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _grow(config, mesh, cache_len, prompt_len, state):
    """The same state with a longer cache and prompt store (new positions are zeros, masked
    until written). Nothing is donated: the old buffers cannot hold the new ones."""
    def pad(c, length):
        return jnp.pad(c, [(0, 0), (0, 0), (0, length - c.shape[2]), (0, 0), (0, 0)])

    state = dict(state, cache={n: pad(c, cache_len) for n, c in state["cache"].items()},
                 prompts={n: pad(c, prompt_len) for n, c in state["prompts"].items()})
    return _constrain_state(config, mesh, state)


def _member_params(members, params) -> tuple:
    if members == 1:
        return (params,)
    return tuple(jax.tree.map(lambda x, m=m: x[m], params) for m in range(members))


def _prefill_logits(config, members, params, tokens_PxL, lens_P):
    """KV rows [.., P, L, ..] of P right-padded prompts and the (members' mean) logits after
    each one's last token. Members run one at a time (a scan): one member's activations."""
    num_prompts, prefill_len = tokens_PxL.shape
    positions_PxL = jnp.broadcast_to(jnp.arange(prefill_len, dtype=jnp.int32), tokens_PxL.shape)

    def one(p, cache):
        hidden_PxLxH, cache = llama.cached_hidden_states(config, p, tokens_PxL, positions_PxL,
                                                         cache)
        last_PxH = hidden_PxLxH[jnp.arange(num_prompts), lens_P - 1]
        return llama.output_logits(config, p, last_PxH[:, None])[:, 0], cache

    if members == 1:
        return one(params, llama.init_cache(config, num_prompts, prefill_len))

    def member(total_PxV, p):
        logits_PxV, cache = one(p, llama.init_cache(config, num_prompts, prefill_len))
        return total_PxV + logits_PxV.astype(jnp.float32), cache

    total_PxV, cache = jax.lax.scan(
        member, jnp.zeros((num_prompts, config.vocab_size), jnp.float32), params)
    return total_PxV / members, {n: c.reshape(-1, *c.shape[2:]) for n, c in cache.items()}


def _step_logits(config, members, member_params, tokens_Bx1, positions_Bx1, live):
    """(members' mean) logits [B, V] of one decode step and the per-layer caches."""
    per = len(live["k"]) // members
    logits, caches = [], {"k": (), "v": ()}
    for m, p in enumerate(member_params):
        mine = {n: c[m * per:(m + 1) * per] for n, c in live.items()}
        logits_Bx1xV, mine = llama.forward(config, p, tokens_Bx1, positions=positions_Bx1,
                                           cache=mine)
        logits.append(logits_Bx1xV[:, 0])
        caches = {n: caches[n] + tuple(mine[n]) for n in caches}
    if members == 1:
        return logits[0], caches
    return jnp.mean(jnp.stack(logits).astype(jnp.float32), axis=0), caches


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4,))
def _prefill(config, members, mesh, params, state, tokens_PxL, lens_P, rows_P):
    """Prefill P prompts into rows rows_P of the prompt store (a row equal to PROMPT_ROWS marks
    a padding prompt, whose rows are dropped)."""
    logits_PxV, rows_LxPxSxKxDh = _prefill_logits(config, members, params, tokens_PxL, lens_P)
    prefill_len = tokens_PxL.shape[1]
    state = dict(state, prompts={
        n: state["prompts"][n].at[:, rows_P, :prefill_len].set(rows_LxPxSxKxDh[n], mode="drop")
        for n in ("k", "v")},
        prompt_logits=state["prompt_logits"].at[rows_P].set(logits_PxV, mode="drop"))
    return _constrain_state(config, mesh, state)


class Admission(NamedTuple):
    """A samples starting in slots: sample sample_A[a] of the prompt in store row rows_A[a]
    (lens_A[a] tokens) starts in slot slots_A[a] with budget_A[a] new tokens, drawn from the
    stream request_key_A[a]; a slot equal to the batch size marks a padding entry."""
    rows_A: np.ndarray
    slots_A: np.ndarray
    lens_A: np.ndarray
    budget_A: np.ndarray
    request_key_A: np.ndarray
    sample_A: np.ndarray


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3,))
def _insert(config, settings, mesh, state, admission: Admission, seed):
    """Start each admitted sample in its slot: its prompt's stored rows copied there, its first
    token drawn from the prompt's stored logits; padding entries change nothing."""
    rows_A, slots_A, lens_A, budget_A, request_key_A, sample_A = admission
    root = jax.random.wrap_key_data(jax.random.key_data(jax.random.PRNGKey(seed)))
    keys_Ax2 = jax.vmap(lambda r, s: jax.random.key_data(
        jax.random.fold_in(jax.random.fold_in(root, r), s)))(request_key_A, sample_A)
    first_A = _sample(settings, state["prompt_logits"][rows_A], keys_Ax2,
                      jnp.zeros_like(sample_A))
    stopped_A = _is_stop(settings, first_A)
    copied = min(state["prompts"]["k"].shape[2], state["cache"]["k"].shape[2])

    def put(dst, src):
        return dst.at[slots_A].set(src, mode="drop")

    state = dict(
        state,
        cache={n: state["cache"][n].at[:, slots_A, :copied].set(
            state["prompts"][n][:, rows_A, :copied], mode="drop") for n in ("k", "v")},
        last=put(state["last"], first_A),
        pos=put(state["pos"], lens_A),
        count=put(state["count"], jnp.ones_like(first_A)),
        budget=put(state["budget"], budget_A),
        active=put(state["active"], ~stopped_A & (budget_A > 1)),
        stopped=put(state["stopped"], stopped_A),
        repeated=put(state["repeated"], jnp.zeros_like(stopped_A)),
        key=put(state["key"], keys_Ax2),
        out=state["out"].at[slots_A, 0].set(first_A, mode="drop"),
    )
    return _constrain_state(config, mesh, state)


def _repeats(settings: Settings, out_BxT, written_B):
    """Whether each row's latest n-gram (ending at index written_B of out) has occurred more
    than repetition_limit times in the row so far."""
    n = settings.repetition_ngram
    starts_T = jnp.arange(out_BxT.shape[1])
    tail_BxN = jnp.take_along_axis(
        out_BxT, jnp.clip(written_B[:, None] - (n - 1) + jnp.arange(n), 0, None), axis=1)
    match_BxT = starts_T[None, :] <= written_B[:, None] - (n - 1)
    for i in range(n):
        match_BxT &= jnp.roll(out_BxT, -i, axis=1) == tail_BxN[:, i:i + 1]
    return jnp.sum(match_BxT, axis=1) > settings.repetition_limit


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 8), donate_argnums=(5,))
def _decode(config, settings, members, mesh, params, state, max_steps, refill_at, attend_len):
    """Up to `max_steps` decode steps; stops early when no slot is active or when at least
    `refill_at` slots are free. Every position the loop can reach is below `attend_len`, so it
    carries only those cache slots, one buffer per layer (updated in place, attended whole),
    and writes them back at the end. Also returns [steps, useful row-steps, needed positions]."""
    batch_size, max_new = state["out"].shape
    rows_B = jnp.arange(batch_size)
    member_params = [dict(p, layers=llama.unstack_layers(p["layers"]))
                     for p in _member_params(members, params)]
    live = _constrain_layer_caches(mesh, {n: llama.unstack_layers(c[:, :, :attend_len])
                                          for n, c in state["cache"].items()})
    rest = {n: v for n, v in state.items() if n not in ("cache", "prompts", "prompt_logits")}

    def cond(carry):
        step, st, _, _ = carry
        free = jnp.sum(~st["active"])
        return (step < max_steps) & jnp.any(st["active"]) & (free < refill_at)

    def body(carry):
        step, st, live, stats_3 = carry
        logits_BxV, live = _step_logits(config, members, member_params, st["last"][:, None],
                                        st["pos"][:, None], live)
        active_B = st["active"]
        token_B = _sample(settings, logits_BxV, st["key"], st["count"])
        stopped_B = _is_stop(settings, token_B) & active_B
        write_at_B = jnp.where(active_B, st["count"], max_new)  # out of range: dropped
        out_BxT = st["out"].at[rows_B, write_at_B].set(token_B, mode="drop")
        repeated_B = jnp.zeros_like(active_B)
        if settings.repetition_ngram:
            repeated_B = _repeats(settings, out_BxT, st["count"]) & active_B & ~stopped_B
        count_B = st["count"] + active_B
        st = dict(
            last=jnp.where(active_B, token_B, st["last"]),
            pos=st["pos"] + active_B,
            count=count_B,
            budget=st["budget"],
            active=active_B & ~stopped_B & ~repeated_B & (count_B < st["budget"]),
            stopped=st["stopped"] | stopped_B,
            repeated=st["repeated"] | repeated_B,
            key=st["key"],
            out=out_BxT,
        )
        stats_3 = stats_3 + jnp.stack([1, jnp.sum(active_B),
                                       jnp.sum(jnp.where(active_B, st["pos"], 0))])
        return step + 1, st, _constrain_layer_caches(mesh, live), stats_3

    _, rest, live, stats_3 = jax.lax.while_loop(
        cond, body, (jnp.int32(0), rest, live, jnp.zeros((3,), jnp.int32)))
    cache = {n: jax.lax.dynamic_update_slice(c, jnp.stack(live[n]), (0,) * c.ndim)
             for n, c in state["cache"].items()}
    state = dict(state, **rest, cache=cache)
    return _constrain_state(config, mesh, state), stats_3


# ----------------------------------------------------------------------------- host loop

def _compute_dtype_weights(config, params):
    """Params with every weight matrix (not the norm scales) already rounded to the compute
    dtype and held in the dtype the dots read (`matmul.dot_dtype`: bf16, or fp32 on
    XLA:CPU without bf16 dot units).
    The model rounds each weight before use anyway, so outputs are bit-identical, but a decode
    step then reads the weights as they are: no cast per step (on XLA:CPU the rounding of
    loop-invariant fp32 weights is hoisted out of the decode loop)."""
    def cast(path, x):
        if path[-1].key.endswith("norm"):
            return x
        return matmul.operand(x, config.compute_dtype)

    return jax.tree_util.tree_map_with_path(cast, params)


class _Entry:
    """A request's samples still to start: the next sample, how many are left, its store row."""

    def __init__(self, request: Request):
        self.request, self.next, self.left, self.row = request, request.first_sample, \
            request.num_samples, None


class Sampler:
    """Continuous-batching sampler over `batch_size` slots; see the module docstring.

    With a mesh, params must already be laid out by `llama.param_shardings`, and batch_size
    should be a multiple of the data x fsdp size. With `members` > 1, every params leaf carries
    a leading member axis.
    """

    def __init__(self, config: llama.LlamaConfig, params, settings: Settings, *, batch_size: int,
                 seed: int = 0, mesh: jax.sharding.Mesh | None = None, steps_per_sync: int = 32,
                 members: int = 1):
        self.config, self.settings, self.members = config, settings, members
        self.params = _compute_dtype_weights(config, params)
        self.batch_size, self.seed, self.mesh = batch_size, seed, mesh
        self.steps_per_sync = steps_per_sync
        self.refill_at = max(1, batch_size // 8)
        self._state = None
        self._pos = np.zeros(batch_size, np.int64)  # each slot's position as of the last sync
        self.cost = Cost(devices=1 if mesh is None else mesh.size)
        self.tokens_in_flight = 0  # tokens of the sequences still decoding, as of the last sync

    @property
    def generated_tokens(self) -> int:
        """Tokens of the completions returned so far."""
        return self.cost.generated_tokens

    def _call(self, fn, *args):
        if self.mesh is None:
            return fn(*args)
        with jax.set_mesh(self.mesh):
            return fn(*args)

    def _timed(self, fn, *args) -> float:
        """Runs a state update and waits for it; returns its wall seconds."""
        start = time.perf_counter()
        self._state = self._call(fn, *args)
        jax.block_until_ready(self._state)
        return time.perf_counter() - start

    def _ensure_state(self, cache_len: int, prompt_len: int):
        """A cache of at least `cache_len` positions and a prompt store of at least `prompt_len`:
        sized to the first work (memory), then grown geometrically so a long job recompiles only
        a few times."""
        have = (0, 0) if self._state is None else (self._state["cache"]["k"].shape[2],
                                                    self._state["prompts"]["k"].shape[2])
        if cache_len <= have[0] and prompt_len <= have[1]:
            return

        def grown(needed, current):
            if needed <= current:
                return current
            aligned = -(-needed // CACHE_ALIGN) * CACHE_ALIGN
            return min(self.config.max_seq_len, max(aligned, 2 * current))

        cache_len, prompt_len = grown(cache_len, have[0]), grown(prompt_len, have[1])
        if self._state is not None:
            self._state = self._call(_grow, self.config, self.mesh, cache_len, prompt_len,
                                     self._state)
            return
        state = _empty_state(self.config, self.members, self.batch_size, cache_len, prompt_len,
                             self.settings.max_new_tokens)
        if self.mesh is not None:
            shardings = jax.tree.map(lambda s: NamedSharding(self.mesh, s),
                                     _state_specs(self.config, self.mesh, state),
                                     is_leaf=lambda x: isinstance(x, P))
            state = jax.device_put(state, shardings)
        self._state = state

    def run(self, requests: Iterable[Request]) -> Iterator[Completion]:
        """Completions in the order they finish (not the request order)."""
        self._requests, self._exhausted = iter(requests), False
        self._queue: collections.deque = collections.deque()  # entries waiting for a prefill
        self._ready: collections.deque = collections.deque()  # prefilled entries
        self._free_rows = list(range(PROMPT_ROWS))
        occupant: list = [None] * self.batch_size  # slot -> (request, sample)
        while True:
            free = [i for i, o in enumerate(occupant) if o is None]
            while free:
                yield from self._fill(len(free))
                if not self._ready:
                    break
                self._admit(free, occupant)
            if all(o is None for o in occupant):
                if self._exhausted and not self._queue and not self._ready:
                    return
                continue
            # Leave the decode loop to refill once enough slots are free for the work left.
            waiting = sum(e.left for e in self._ready) + sum(e.left for e in self._queue)
            if not self._exhausted:
                refill_at = self.refill_at
            else:
                refill_at = min(self.refill_at, waiting) or self.batch_size + 1
            steady = not self._exhausted or waiting >= self.refill_at
            attend_len = self._attend_len(occupant)
            start = time.perf_counter()
            self._state, stats_3 = self._call(
                _decode, self.config, self.settings, self.members, self.mesh, self.params,
                self._state, self.steps_per_sync, refill_at, attend_len)
            yield from self._harvest(occupant, stats_3, attend_len, steady, start)

    def _fill(self, free_slots: int) -> Iterator[Completion]:
        """Prefill queued prompts into the store until its samples cover `free_slots` (or the
        store is full, or nothing is left); prompts that cannot be sampled end here."""
        while sum(e.left for e in self._ready) < free_slots and self._free_rows:
            while not self._exhausted and len(self._queue) < LOOKAHEAD:
                req = next(self._requests, None)
                if req is None:
                    self._exhausted = True
                elif len(req.prompt) == 0:
                    raise ValueError(f"request {req.tag!r}: empty prompt")
                elif len(req.prompt) >= self.config.max_seq_len:
                    for s in range(req.num_samples):
                        yield Completion(req, req.first_sample + s, [], FINISH_TOO_LONG)
                elif req.num_samples > 0:
                    self._queue.append(_Entry(req))
            if not self._queue:
                return
            self._prefill_group()

    def _prefill_group(self):
        """Prefill up to PREFILL_ROWS queued prompts of the first one's length bucket (rows: a
        power of two) into free store rows."""
        bucket = _bucket(len(self._queue[0].request.prompt), PROMPT_ALIGN, 4)
        room = min(PREFILL_ROWS, len(self._free_rows))
        group = [e for e in self._queue
                 if _bucket(len(e.request.prompt), PROMPT_ALIGN, 4) == bucket][:room]
        for e in group:
            self._queue.remove(e)
        self._ensure_state(bucket, bucket)
        prefill_len = min(bucket, self._state["prompts"]["k"].shape[2])
        num_rows = 1 << (len(group) - 1).bit_length()
        tokens = np.zeros((num_rows, prefill_len), np.int32)
        lens = np.ones((num_rows,), np.int32)
        rows = np.full((num_rows,), PROMPT_ROWS, np.int32)
        for i, e in enumerate(group):
            e.row = self._free_rows.pop(0)
            tokens[i, :len(e.request.prompt)] = e.request.prompt
            lens[i], rows[i] = len(e.request.prompt), e.row
            self._ready.append(e)
        self.cost.prompts += len(group)
        self.cost.prompt_tokens += int(lens[:len(group)].sum())
        self.cost.prefill_positions += num_rows * prefill_len
        self.cost.prefill_s += self._timed(_prefill, self.config, self.members, self.mesh,
                                           self.params, self._state, tokens, lens, rows)

    def _admit(self, free: list[int], occupant: list):
        """Start prefilled samples in free slots (taken from `free`); an entry whose samples
        all started gives its store row back."""
        starts = []  # (slot, entry, sample)
        while free and self._ready:
            e = self._ready[0]
            n = min(e.left, len(free))
            starts += [(free.pop(0), e, e.next + i) for i in range(n)]
            e.next, e.left = e.next + n, e.left - n
            if not e.left:
                self._free_rows.append(self._ready.popleft().row)
        budget = {id(e): min(self.settings.max_new_tokens,
                             self.config.max_seq_len - len(e.request.prompt)) for _, e, _ in starts}
        self._ensure_state(max(len(e.request.prompt) + budget[id(e)] for _, e, _ in starts), 0)
        width = 1 << (len(starts) - 1).bit_length()
        B = self.batch_size
        rows, slots = np.zeros(width, np.int32), np.full(width, B, np.int32)
        lens, budgets = np.ones(width, np.int32), np.ones(width, np.int32)
        request_keys, samples = np.zeros(width, np.uint32), np.zeros(width, np.int32)
        for j, (slot, e, sample) in enumerate(starts):
            rows[j], slots[j], lens[j], budgets[j] = e.row, slot, len(e.request.prompt), \
                budget[id(e)]
            request_keys[j], samples[j] = int(e.request.key) & 0xFFFFFFFF, sample
            occupant[slot] = (e.request, sample)
            self._pos[slot] = len(e.request.prompt)
        admission = Admission(rows, slots, lens, budgets, request_keys, samples)
        self.cost.prefill_s += self._timed(_insert, self.config, self.settings, self.mesh,
                                           self._state, admission,
                                           np.uint32(self.seed & 0xFFFFFFFF))

    def _attend_len(self, occupant: list) -> int:
        """Cache positions the next decode call attends to: a bucket (few compiles) past every
        position an occupied slot can reach in it; positions beyond are never read or written."""
        reach = max(self._pos[i] for i, o in enumerate(occupant) if o is not None)
        cache_len = self._state["cache"]["k"].shape[2]
        return min(cache_len, _bucket(reach + self.steps_per_sync, CACHE_ALIGN, 3))

    def _harvest(self, occupant: list, stats_3, attend_len: int, steady: bool,
                 start: float) -> Iterator[Completion]:
        active, count, self._pos[:], stats_3 = jax.device_get(
            (self._state["active"], self._state["count"], self._state["pos"], stats_3))
        steps, useful, needed = (int(x) for x in stats_3)
        cost = self.cost
        cost.decode_s += time.perf_counter() - start
        cost.decode_steps += steps
        cost.row_steps += steps * self.batch_size
        cost.useful_row_steps += useful
        cost.attended_positions += steps * self.batch_size * attend_len
        cost.needed_positions += needed
        if steady:
            cost.steady_row_steps += steps * self.batch_size
            cost.steady_useful_row_steps += useful
        done = [i for i, o in enumerate(occupant) if o is not None and not active[i]]
        self.tokens_in_flight = int(sum(count[i] for i, o in enumerate(occupant)
                                        if o is not None and active[i]))
        if not done:
            return
        out, stopped, repeated = jax.device_get(
            (self._state["out"], self._state["stopped"], self._state["repeated"]))
        for slot in done:
            req, sample = occupant[slot]
            occupant[slot] = None
            n = int(count[slot])
            cost.generated_tokens += n
            tokens = out[slot, : n - 1 if stopped[slot] else n].tolist()
            reason = (FINISH_STOP if stopped[slot] else
                      FINISH_REPETITION if repeated[slot] else FINISH_LENGTH)
            yield Completion(req, sample, tokens, reason)


def generate(config: llama.LlamaConfig, params, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             seed: int = 0, stop_tokens: Iterable[int] = (), batch_size: int | None = None,
             mesh: jax.sharding.Mesh | None = None) -> list[list[int]]:
    """Generated ids for each prompt (without the prompt and without the stop token that ended
    it); greedy when temperature == 0. Prompt i draws from the stream of request key i. A prompt
    that fills the model's context raises ValueError (never truncated)."""
    settings = Settings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        top_k=top_k, stop_tokens=tuple(stop_tokens))
    sampler = Sampler(config, params, settings, batch_size=batch_size or min(len(prompts), 64),
                      seed=seed, mesh=mesh)
    results: list = [None] * len(prompts)
    for c in sampler.run(Request(list(p), key=i, tag=i) for i, p in enumerate(prompts)):
        if c.finish_reason == FINISH_TOO_LONG:
            raise ValueError(f"prompt {c.request.tag} has {len(c.request.prompt)} tokens; the "
                             f"model's context is {config.max_seq_len}")
        results[c.request.tag] = c.tokens
    return results


def traced_steps(config: llama.LlamaConfig, settings: Settings, mesh: jax.sharding.Mesh, *,
                 batch_size: int, prompt_len: int) -> dict:
    """{"prefill": PREFILL_ROWS prompts of `prompt_len` tokens prefilled into the prompt store,
    "insert": a whole batch of samples started from the store, "decode": the decode loop},
    traced as a `Sampler` of `batch_size` slots on `mesh` runs them, from abstract params and
    state (no arrays): a plan compiles them for a slice (synth/plan.py). The slots' cache holds
    the prompt and every new token; decode attends to all of it."""
    prefill_len = _bucket(prompt_len, PROMPT_ALIGN, 4)

    def aligned(n):
        return min(config.max_seq_len, -(-n // CACHE_ALIGN) * CACHE_ALIGN)

    cache_len, store_len = aligned(prompt_len + settings.max_new_tokens), aligned(prefill_len)
    prefill_len = min(prefill_len, store_len)

    def placed(shapes, shardings):
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, shardings)

    params = placed(jax.eval_shape(lambda: _compute_dtype_weights(
        config, llama.init(config, jax.random.key(0)))), llama.param_shardings(config, mesh))
    shapes = jax.eval_shape(lambda: _empty_state(config, 1, batch_size, cache_len, store_len,
                                                 settings.max_new_tokens))
    state = placed(shapes, jax.tree.map(lambda s: NamedSharding(mesh, s),
                                        _state_specs(config, mesh, shapes),
                                        is_leaf=lambda x: isinstance(x, P)))

    def ints(*shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct(shape, dtype)

    admission = Admission(*(ints(batch_size) for _ in range(4)),
                          ints(batch_size, dtype=jnp.uint32), ints(batch_size))
    with jax.set_mesh(mesh):
        return {"prefill": _prefill.trace(config, 1, mesh, params, state,
                                          ints(PREFILL_ROWS, prefill_len), ints(PREFILL_ROWS),
                                          ints(PREFILL_ROWS)),
                "insert": _insert.trace(config, settings, mesh, state, admission,
                                        ints(dtype=jnp.uint32)),
                "decode": _decode.trace(config, settings, 1, mesh, params, state, ints(), ints(),
                                        cache_len),
                "params": params, "cache": state["cache"], "prompt_store": state["prompts"]}
