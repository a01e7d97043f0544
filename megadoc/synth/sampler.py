"""KV-cache sampler: bucketed prefill, many decode steps per host sync, continuous batching.

The decode state lives on device: a KV cache of `batch_size` slots plus per-slot counters. The
host only admits work into free slots (one prefill per prompt, its cache rows copied to every
sample of that prompt) and collects finished slots; between those syncs a `lax.while_loop` runs up
to `steps_per_sync` decode steps, leaving early once enough slots are free to be worth refilling.

Randomness: sample `s` of a request with key `r` draws token `t` with
`fold_in(fold_in(fold_in(PRNGKey(seed), r), s), t)`, so its text depends on nothing else (not the
batch size, the slot, the other requests or the host). A request whose prompt and samples do not
fit in one admission is prefilled again for its remaining samples.

Generated token lists never contain the prompt nor the stop token that ended them.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from megadoc.models import llama, matmul
from megadoc.models import sharding

MIN_PREFILL_LEN = 16
# Prompts per prefill call: a fixed count, so each prompt-length bucket compiles once; 8 rows
# amortise the per-call cost without padding a small refill much.
PREFILL_ROWS = 8
CACHE_ALIGN = 64

FINISH_STOP = "eos"              # ended on one of the stop tokens
FINISH_LENGTH = "length"         # max_new_tokens reached (or the end of the model's context)
FINISH_TOO_LONG = "prompt_too_long"  # the prompt leaves no room in the model's context


@dataclasses.dataclass(frozen=True)
class Settings:
    """How tokens are drawn. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_tokens: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
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
    finish_reason: str  # FINISH_STOP | FINISH_LENGTH | FINISH_TOO_LONG


def _pow2_at_least(n: int, floor: int) -> int:
    return max(floor, 1 << max(0, int(n) - 1).bit_length())


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


def _state_specs(config, mesh, batch_size, cache_len, max_new):
    """PartitionSpecs of the decode state: slots on the data axes, kv heads on tensor."""
    cache_shape = (config.layers, batch_size, cache_len, config.kv_heads, config.head_dim)
    cache = sharding.spec(("layers", "batch", "seq", "kv_heads", "head_dim"), cache_shape, mesh)
    row = sharding.spec(("batch",), (batch_size,), mesh)
    row2 = sharding.spec(("batch", None), (batch_size, max_new), mesh)
    return {"cache": {"k": cache, "v": cache}, "last": row, "pos": row, "count": row,
            "budget": row, "active": row, "stopped": row, "key": row2, "out": row2}


def _constrain_state(config, mesh, state):
    if mesh is None:
        return state
    b, s = state["cache"]["k"].shape[1:3]
    specs = _state_specs(config, mesh, b, s, state["out"].shape[1])
    return jax.tree.map(jax.lax.with_sharding_constraint, state, specs)


def _constrain_layer_caches(mesh, caches):
    """The per-layer [B, S, K, Dh] caches of the decode loop, laid out as the stacked cache."""
    if mesh is None:
        return caches
    spec = sharding.spec(("batch", "seq", "kv_heads", "head_dim"), caches["k"][0].shape, mesh)
    return jax.tree.map(lambda c: jax.lax.with_sharding_constraint(c, spec), caches)


def _empty_state(config, batch_size, cache_len, max_new):
    def zeros():  # distinct buffers: the state is donated leaf by leaf
        return jnp.zeros((batch_size,), jnp.int32)

    return {
        "cache": llama.init_cache(config, batch_size, cache_len),
        "last": zeros(), "pos": zeros(), "count": zeros(), "budget": zeros(),
        "active": jnp.zeros((batch_size,), bool), "stopped": jnp.zeros((batch_size,), bool),
        "key": jnp.zeros((batch_size, 2), jnp.uint32),
        "out": jnp.zeros((batch_size, max_new), jnp.int32),
    }


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _grow(config, mesh, cache_len, state):
    """The same state with a longer cache (new slots are zeros, masked until written). Nothing
    is donated: the old cache cannot hold the new one, and the small leaves are copied."""
    pad = [(0, 0), (0, 0), (0, cache_len - state["cache"]["k"].shape[2]), (0, 0), (0, 0)]
    state = dict(state, cache={k: jnp.pad(v, pad) for k, v in state["cache"].items()})
    return _constrain_state(config, mesh, state)


def _prefill(config, params, tokens_PxL, lens_P):
    """KV cache [.., P, L, ..] of P right-padded prompts and the logits after each last token."""
    num_prompts, prefill_len = tokens_PxL.shape
    positions_PxL = jnp.broadcast_to(jnp.arange(prefill_len, dtype=jnp.int32), tokens_PxL.shape)
    cache = llama.init_cache(config, num_prompts, prefill_len)
    hidden_PxLxH, cache = llama.cached_hidden_states(config, params, tokens_PxL, positions_PxL,
                                                     cache)
    last_PxH = hidden_PxLxH[jnp.arange(num_prompts), lens_P - 1]
    return cache, llama.output_logits(config, params, last_PxH[:, None])[:, 0]


class Admission(NamedTuple):
    """Prompts to prefill (P rows) and the B slots their samples start in: sample sample_B[b]
    of prompt rows_B[b] goes to slot slots_B[b] with budget_B[b] new tokens, drawn from the
    stream request_key_B[b]; a slot equal to the batch size marks a padding entry."""
    tokens_PxL: np.ndarray
    lens_P: np.ndarray
    rows_B: np.ndarray
    slots_B: np.ndarray
    budget_B: np.ndarray
    request_key_B: np.ndarray
    sample_B: np.ndarray


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4,))
def _insert(config, settings, mesh, params, state, admission: Admission, seed):
    """Prefill the prompts, then start each admitted sample in its slot (its cache rows copied,
    its first token drawn); padding entries change nothing. One jit for both: one compile per
    admission shape."""
    tokens_PxL, lens_P, rows_B, slots_B, budget_B, request_key_B, sample_B = admission
    prefill_cache, logits_PxV = _prefill(config, params, tokens_PxL, lens_P)
    prefill_len = tokens_PxL.shape[1]
    root = jax.random.wrap_key_data(jax.random.key_data(jax.random.PRNGKey(seed)))
    keys_Bx2 = jax.vmap(lambda r, s: jax.random.key_data(
        jax.random.fold_in(jax.random.fold_in(root, r), s)))(request_key_B, sample_B)
    first_B = _sample(settings, logits_PxV[rows_B], keys_Bx2, jnp.zeros_like(sample_B))
    stopped_B = _is_stop(settings, first_B)

    def put(dst, src):
        return dst.at[slots_B].set(src, mode="drop")

    state = dict(
        cache={n: state["cache"][n].at[:, slots_B, :prefill_len].set(
            prefill_cache[n][:, rows_B], mode="drop") for n in ("k", "v")},
        last=put(state["last"], first_B),
        pos=put(state["pos"], lens_P[rows_B]),
        count=put(state["count"], jnp.ones_like(first_B)),
        budget=put(state["budget"], budget_B),
        active=put(state["active"], ~stopped_B & (budget_B > 1)),
        stopped=put(state["stopped"], stopped_B),
        key=put(state["key"], keys_Bx2),
        out=state["out"].at[slots_B, 0].set(first_B, mode="drop"),
    )
    return _constrain_state(config, mesh, state)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 7), donate_argnums=(4,))
def _decode(config, settings, mesh, params, state, max_steps, refill_at, attend_len):
    """Up to `max_steps` decode steps; stops early when no slot is active or when at least
    `refill_at` slots are free. Every position the loop can reach is below `attend_len`, so it
    carries only those cache slots, one buffer per layer (updated in place, attended whole),
    and writes them back at the end."""
    batch_size, max_new = state["out"].shape
    rows_B = jnp.arange(batch_size)
    params = dict(params, layers=llama.unstack_layers(params["layers"]))
    live = _constrain_layer_caches(mesh, {n: llama.unstack_layers(c[:, :, :attend_len])
                                          for n, c in state["cache"].items()})
    rest = {n: v for n, v in state.items() if n != "cache"}

    def cond(carry):
        step, st, _ = carry
        free = jnp.sum(~st["active"])
        return (step < max_steps) & jnp.any(st["active"]) & (free < refill_at)

    def body(carry):
        step, st, live = carry
        logits_Bx1xV, live = llama.forward(config, params, st["last"][:, None],
                                           positions=st["pos"][:, None], cache=live)
        active_B = st["active"]
        token_B = _sample(settings, logits_Bx1xV[:, 0], st["key"], st["count"])
        stopped_B = _is_stop(settings, token_B) & active_B
        write_at_B = jnp.where(active_B, st["count"], max_new)  # out of range: dropped
        count_B = st["count"] + active_B
        st = dict(
            last=jnp.where(active_B, token_B, st["last"]),
            pos=st["pos"] + active_B,
            count=count_B,
            budget=st["budget"],
            active=active_B & ~stopped_B & (count_B < st["budget"]),
            stopped=st["stopped"] | stopped_B,
            key=st["key"],
            out=st["out"].at[rows_B, write_at_B].set(token_B, mode="drop"),
        )
        return step + 1, st, _constrain_layer_caches(mesh, live)

    _, rest, live = jax.lax.while_loop(cond, body, (jnp.int32(0), rest, live))
    cache = {n: jax.lax.dynamic_update_slice(c, jnp.stack(live[n]), (0,) * c.ndim)
             for n, c in state["cache"].items()}
    return _constrain_state(config, mesh, dict(rest, cache=cache))


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


class Sampler:
    """Continuous-batching sampler over `batch_size` slots; see the module docstring.

    With a mesh, params must already be laid out by `llama.param_shardings`, and batch_size
    should be a multiple of the data x fsdp size.
    """

    def __init__(self, config: llama.LlamaConfig, params, settings: Settings, *, batch_size: int,
                 seed: int = 0, mesh: jax.sharding.Mesh | None = None, steps_per_sync: int = 32):
        self.config, self.settings = config, settings
        self.params = _compute_dtype_weights(config, params)
        self.batch_size, self.seed, self.mesh = batch_size, seed, mesh
        self.steps_per_sync = steps_per_sync
        self.refill_at = max(1, batch_size // 8)
        self.prefill_rows = min(batch_size, PREFILL_ROWS)
        self._state = None
        self._pos = np.zeros(batch_size, np.int64)  # each slot's position as of the last sync
        self.generated_tokens = 0  # tokens of the completions returned so far
        self.tokens_in_flight = 0  # tokens of the sequences still decoding, as of the last sync

    def _call(self, fn, *args):
        if self.mesh is None:
            return fn(*args)
        with jax.set_mesh(self.mesh):
            return fn(*args)

    def _ensure_cache(self, needed_len: int):
        """A cache of at least `needed_len` slots: sized to the first work (memory), then grown
        geometrically so a long job recompiles only a few times."""
        current = 0 if self._state is None else self._state["cache"]["k"].shape[2]
        if needed_len <= current:
            return
        aligned = -(-needed_len // CACHE_ALIGN) * CACHE_ALIGN
        cache_len = min(self.config.max_seq_len, max(aligned, 2 * current))
        max_new = self.settings.max_new_tokens
        if self._state is None:
            state = _empty_state(self.config, self.batch_size, cache_len, max_new)
            if self.mesh is not None:
                specs = _state_specs(self.config, self.mesh, self.batch_size, cache_len, max_new)
                shardings = jax.tree.map(lambda s: NamedSharding(self.mesh, s), specs,
                                         is_leaf=lambda x: isinstance(x, P))
                state = jax.device_put(state, shardings)
            self._state = state
        else:
            self._state = self._call(_grow, self.config, self.mesh, cache_len, self._state)

    def run(self, requests: Iterable[Request]) -> Iterator[Completion]:
        """Completions in the order they finish (not the request order)."""
        requests = iter(requests)
        pending: collections.deque = collections.deque()  # [request, next sample, samples left]
        pending_samples = 0
        occupant: list = [None] * self.batch_size  # slot -> (request, sample)
        exhausted = False
        max_ctx = self.config.max_seq_len
        while True:
            free = [i for i, o in enumerate(occupant) if o is None]
            while not exhausted and pending_samples < len(free):
                req = next(requests, None)
                if req is None:
                    exhausted = True
                elif len(req.prompt) == 0:
                    raise ValueError(f"request {req.tag!r}: empty prompt")
                elif len(req.prompt) >= max_ctx:
                    for s in range(req.num_samples):
                        yield Completion(req, req.first_sample + s, [], FINISH_TOO_LONG)
                elif req.num_samples > 0:
                    pending.append([req, req.first_sample, req.num_samples])
                    pending_samples += req.num_samples
            if free and pending:
                pending_samples -= self._admit(free, pending, occupant)
            if all(o is None for o in occupant):
                if exhausted and not pending:
                    return
                continue
            # Leave the decode loop to refill once enough slots are free for the work left.
            if not exhausted:
                refill_at = self.refill_at
            else:
                refill_at = min(self.refill_at, pending_samples) or self.batch_size + 1
            self._state = self._call(_decode, self.config, self.settings, self.mesh, self.params,
                                     self._state, self.steps_per_sync, refill_at,
                                     self._attend_len(occupant))
            yield from self._harvest(occupant)

    def _attend_len(self, occupant: list) -> int:
        """Cache slots the next decode call attends to: a power of two (few compiles) past every
        position an occupied slot can reach in it; rows beyond are never read or written."""
        reach = max(self._pos[i] for i, o in enumerate(occupant) if o is not None)
        cache_len = self._state["cache"]["k"].shape[2]
        return min(cache_len, _pow2_at_least(reach + self.steps_per_sync, CACHE_ALIGN))

    def _admit(self, free: list[int], pending: collections.deque, occupant: list) -> int:
        """Fill free slots from the pending queue, prefilled by prompt-length bucket."""
        groups: dict[int, list] = collections.defaultdict(list)  # bucket -> [(req, [(slot, s)])]
        needed_len = 0
        taken = 0
        free = list(free)
        while free and pending:
            entry = pending[0]
            req, first, left = entry
            n = min(left, len(free))
            budget = min(self.settings.max_new_tokens, self.config.max_seq_len - len(req.prompt))
            needed_len = max(needed_len, len(req.prompt) + budget)
            assigned = [(free.pop(0), first + i) for i in range(n)]
            bucket = _pow2_at_least(len(req.prompt), MIN_PREFILL_LEN)
            groups[bucket].append((req, assigned, budget))
            entry[1], entry[2] = first + n, left - n
            taken += n
            if entry[2] == 0:
                pending.popleft()
        self._ensure_cache(needed_len)
        cache_len = self._state["cache"]["k"].shape[2]
        for bucket, items in sorted(groups.items()):
            for i in range(0, len(items), self.prefill_rows):
                self._prefill_group(min(bucket, cache_len), items[i:i + self.prefill_rows],
                                    occupant)
        return taken

    def _prefill_group(self, prefill_len: int, items: list, occupant: list):
        tokens = np.zeros((self.prefill_rows, prefill_len), np.int32)
        lens = np.ones((self.prefill_rows,), np.int32)
        B = self.batch_size
        rows, slots, budgets = np.zeros(B, np.int32), np.full(B, B, np.int32), np.ones(B, np.int32)
        request_keys, samples = np.zeros(B, np.uint32), np.zeros(B, np.int32)
        j = 0
        for row, (req, assigned, budget) in enumerate(items):
            tokens[row, :len(req.prompt)] = req.prompt
            lens[row] = len(req.prompt)
            for slot, sample in assigned:
                rows[j], slots[j], budgets[j], samples[j] = row, slot, budget, sample
                request_keys[j] = int(req.key) & 0xFFFFFFFF
                occupant[slot] = (req, sample)
                self._pos[slot] = len(req.prompt)
                j += 1
        admission = Admission(tokens, lens, rows, slots, budgets, request_keys, samples)
        self._state = self._call(_insert, self.config, self.settings, self.mesh, self.params,
                                 self._state, admission, np.uint32(self.seed & 0xFFFFFFFF))

    def _harvest(self, occupant: list) -> Iterator[Completion]:
        active, count, self._pos[:] = jax.device_get(
            (self._state["active"], self._state["count"], self._state["pos"]))
        done = [i for i, o in enumerate(occupant) if o is not None and not active[i]]
        self.tokens_in_flight = int(sum(count[i] for i, o in enumerate(occupant)
                                        if o is not None and active[i]))
        if not done:
            return
        out, stopped = jax.device_get((self._state["out"], self._state["stopped"]))
        for slot in done:
            req, sample = occupant[slot]
            occupant[slot] = None
            n = int(count[slot])
            self.generated_tokens += n
            tokens = out[slot, : n - 1 if stopped[slot] else n].tolist()
            yield Completion(req, sample, tokens, FINISH_STOP if stopped[slot] else FINISH_LENGTH)


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
    """{"prefill": the admission of PREFILL_ROWS prompts of `prompt_len` tokens, "decode": the
    decode loop}, traced as a `Sampler` of `batch_size` slots on `mesh` runs them, from
    abstract params and state (no arrays): a plan compiles them for a slice (synth/plan.py).
    The cache holds the prompt and every new token; decode attends to all of it."""
    rows = min(batch_size, PREFILL_ROWS)
    prefill_len = _pow2_at_least(prompt_len, MIN_PREFILL_LEN)
    cache_len = -(-(prompt_len + settings.max_new_tokens) // CACHE_ALIGN) * CACHE_ALIGN
    cache_len = min(config.max_seq_len, cache_len)

    def placed(shapes, shardings):
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, shardings)

    params = placed(jax.eval_shape(lambda: _compute_dtype_weights(
        config, llama.init(config, jax.random.key(0)))), llama.param_shardings(config, mesh))
    specs = _state_specs(config, mesh, batch_size, cache_len, settings.max_new_tokens)
    state = placed(jax.eval_shape(lambda: _empty_state(config, batch_size, cache_len,
                                                       settings.max_new_tokens)),
                   jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                                is_leaf=lambda x: isinstance(x, P)))

    def ints(*shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct(shape, dtype)

    admission = Admission(ints(rows, prefill_len), ints(rows), ints(batch_size),
                          ints(batch_size), ints(batch_size), ints(batch_size, dtype=jnp.uint32),
                          ints(batch_size))
    with jax.set_mesh(mesh):
        return {"prefill": _insert.trace(config, settings, mesh, params, state, admission,
                                         ints(dtype=jnp.uint32)),
                "decode": _decode.trace(config, settings, mesh, params, state, ints(), ints(),
                                        cache_len),
                "params": params, "cache": state["cache"]}
