"""Batched generation on the JAX model with a preallocated KV cache.

Shapes are fixed per sampler (batch rows, prompt bucket, cache length), so the prefill and the decode loop compile
once and are reused for every batch. Prompts are left-padded into a bucket; each row carries its own truncation
setting and its own PRNG stream (`fold_in(seed, request index)`, then the step), so a request's tokens do not
depend on which other requests share its batch. The n samples of one prompt share one prefill (pass@k evaluation
prefills each problem once, not n times). The decode loop runs `chunk` tokens per jitted call inside a
`lax.while_loop` that stops early once every row has hit EOS; stop strings are checked on the host between chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssd_jax.models.transformer import KVCache, padded_positions
from ssd_jax.sampling.truncation import sample
from ssd_jax.sampling.types import Completion, SamplingParams, collect

__all__ = ["JaxSampler", "Completion", "SamplingParams", "collect"]


class DecodeState(NamedTuple):
    """What the decode loop carries from one token to the next (donated to each chunk: updated in place)."""

    logits: jax.Array  # (B, V) logits of the next token
    cache: KVCache
    pos: jax.Array  # (B,) position of the next token
    step: jax.Array  # () tokens generated so far by the batch (the column written next)
    done: jax.Array  # (B,) bool: row finished (EOS, its max_tokens, a stop string, or a padding row)
    tokens: jax.Array  # (B, max_new) generated ids
    logprobs: jax.Array  # (B, max_new) their log-probs under the truncated distribution
    n_generated: jax.Array  # (B,) tokens generated per row


# graph_updates=False on every jitted function that only reads the model: with graph updates, nnx.jit returns every
# parameter as an output, and XLA copies each one (a second model in memory and a full copy per call).
@functools.partial(nnx.jit, static_argnames=("cache_len",), graph_updates=False)
def _prefill(model, tokens, segment_ids, cache_len):
    b, p = tokens.shape
    positions = padded_positions(segment_ids)
    cache = model.init_cache(b, cache_len)
    # Only the last position's logits are needed: (B, P, V) in fp32 would be the prefill's largest buffer.
    out = model(tokens, positions=positions, segment_ids=segment_ids, cache=cache, return_hidden=True)
    next_pos = jnp.sum(segment_ids, axis=1).astype(jnp.int32)
    return model.logits(out.last_hidden[:, -1:])[:, 0], out.cache, next_pos


@jax.jit
def _spread(logits, cache: KVCache, pos, source):
    """Rows `source` (B,) of a prefill's outputs: each decode row starts from its prompt's prefilled row."""
    rows = lambda x, axis: jnp.take(x, source, axis=axis)  # noqa: E731
    cache = KVCache(tuple(rows(k, 1) for k in cache.k), tuple(rows(v, 1) for v in cache.v),
                    rows(cache.segment_ids, 0), cache.end)
    return rows(logits, 0), cache, rows(pos, 0)


@functools.partial(jax.jit, static_argnames=("length",))
def _grow(cache: KVCache, length: int) -> KVCache:
    """`cache` with its slot axis extended to `length` (empty slots: segment id 0). Keys are (…, hd, S), values
    (…, S, hd), segment ids (B, S)."""
    def pad(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, widths)

    return KVCache(tuple(pad(k, k.ndim - 1) for k in cache.k), tuple(pad(v, v.ndim - 2) for v in cache.v),
                   pad(cache.segment_ids, 1), cache.end)


@functools.partial(nnx.jit, static_argnames=("chunk",), donate_argnums=(1,), graph_updates=False)
def _decode_chunk(model, state: DecodeState, params, eos_ids, chunk) -> DecodeState:
    """Run up to `chunk` steps, fewer once every row is done.

    The state is donated: the KV cache is updated in place instead of living twice across each call."""
    temperature, top_k, top_p, keys, max_tokens = params

    def cond(carry):
        i, st = carry
        return (i < chunk) & ~jnp.all(st.done)

    def body(carry):
        i, (logits, cache, pos, step, done, toks, lps, n) = carry
        step_keys = jax.vmap(jax.random.fold_in)(keys, jnp.broadcast_to(step, keys.shape[:1]))
        tok, tok_lp = sample(logits, temperature, top_k, top_p, step_keys)
        active = ~done
        toks = toks.at[:, step].set(jnp.where(active, tok, 0))
        lps = lps.at[:, step].set(jnp.where(active, tok_lp, 0.0))
        n = n + active.astype(jnp.int32)
        hit_eos = jnp.any(tok[:, None] == eos_ids[None, :], axis=-1)
        done = done | (active & hit_eos) | (n >= max_tokens)
        out = model(tok[:, None], positions=pos[:, None], segment_ids=jnp.ones_like(tok)[:, None], cache=cache)
        return i + 1, DecodeState(out.logits[:, -1], out.cache, pos + 1, step + 1, done, toks, lps, n)

    _, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
    return state


class JaxSampler:
    """Generate completions for token-id prompts (or strings, with a tokenizer) from an NNX CausalLM."""

    def __init__(self, model, tokenizer=None, *, batch_size: int = 8, max_prompt_len: int = 512,
                 max_new_tokens: int = 256, chunk: int = 32, prompt_bucket: int = 64, mesh=None,
                 eos_token_ids: Sequence[int] | None = None, cache_lengths: int = 4):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.chunk = batch_size, chunk
        self.max_prompt_len = -(-max_prompt_len // prompt_bucket) * prompt_bucket
        self.max_new_tokens = max_new_tokens
        self.bucket = prompt_bucket
        self.full_cache = self.max_prompt_len + max_new_tokens
        self.cache_granule = -(-self.full_cache // max(1, cache_lengths) // prompt_bucket) * prompt_bucket
        self.mesh = mesh
        if eos_token_ids is None:
            eos_token_ids = _eos_ids(model, tokenizer)
        self.eos = jnp.asarray(sorted(set(eos_token_ids)) or [-1], jnp.int32)

    def cache_len(self, need: int) -> int:
        """The cache length for `need` slots: a multiple of 1/`cache_lengths` of the full length (whole prompt
        buckets), at most the full length. The cache grows through these lengths as the batch decodes (each is one
        compiled decode chunk): a decode step's attention reads every slot it is given, so it reads about the
        filled part instead of all max_prompt_len + max_new_tokens slots."""
        return min(self.full_cache, -(-need // self.cache_granule) * self.cache_granule)

    def _place(self, x):
        if self.mesh is None:
            return jnp.asarray(x)
        from jax.sharding import NamedSharding

        from ssd_jax.sharding import batch_spec

        return jax.device_put(x, NamedSharding(self.mesh, batch_spec(self.mesh, np.shape(x))))

    def generate(self, prompts: Sequence[Sequence[int] | str], params: Sequence[SamplingParams] | SamplingParams,
                 request_ids: Sequence[int] | None = None, progress=None) -> list[Completion]:
        """One completion per prompt. `request_ids` (default 0..n-1) seed each request's PRNG stream."""
        return collect(self.stream(prompts, params, request_ids), len(prompts), progress)

    def stream(self, prompts: Sequence[Sequence[int] | str], params: Sequence[SamplingParams] | SamplingParams,
               request_ids: Sequence[int] | None = None) -> Iterator[list[tuple[int, Completion]]]:
        """(prompt index, completion) pairs, a batch at a time as each finishes (the Sampler interface that lets
        a stage append results as they come)."""
        n = len(prompts)
        params = [params] * n if isinstance(params, SamplingParams) else list(params)
        request_ids = list(range(n)) if request_ids is None else list(request_ids)
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
               for p in prompts]
        todo, too_long = [], []
        for i, t in enumerate(ids):
            if len(t) > self.max_prompt_len or not t:
                too_long.append((i, Completion([], "", "prompt_too_long", prompt_tokens=len(t))))
            else:
                todo.append(i)
        if too_long:
            yield too_long
        # Group by prompt bucket so short prompts do not pay for long ones, and the samples of one prompt together
        # so that a batch prefills each distinct prompt once.
        todo.sort(key=lambda i: (-(-len(ids[i]) // self.bucket), ids[i], i))
        for start in range(0, len(todo), self.batch_size):
            group = todo[start : start + self.batch_size]
            outs = self._generate_batch([ids[i] for i in group], [params[i] for i in group],
                                        [request_ids[i] for i in group])
            yield list(zip(group, outs))

    def _generate_batch(self, prompts, params, request_ids) -> list[Completion]:
        b = self.batch_size
        real = len(prompts)
        plen = -(-max(len(p) for p in prompts) // self.bucket) * self.bucket
        max_new = max(p.max_tokens for p in params)
        if max_new > self.max_new_tokens:
            raise ValueError(f"max_tokens={max_new} exceeds this sampler's max_new_tokens={self.max_new_tokens}")
        # Each distinct prompt is prefilled once (n samples of a problem share it), in the smallest of b/4, b/2, b
        # rows that holds them; its cache row is then copied to every row that samples from it.
        distinct: dict[tuple, int] = {}  # prompt → its prefill row
        for p in prompts:
            distinct.setdefault(tuple(p), len(distinct))
        rows = next(n for n in (max(1, b // 4), max(1, b // 2), b) if n >= len(distinct))
        source = [distinct[tuple(p)] for p in prompts] + [0] * (b - real)
        tokens = np.zeros((rows, plen), np.int32)
        seg = np.zeros((rows, plen), np.int32)
        for r, p in enumerate(distinct):
            tokens[r, plen - len(p) :] = p
            seg[r, plen - len(p) :] = 1
        seg[len(distinct) :, -1] = 1  # dummy rows: one token so nothing is fully masked
        pad = [params[0]] * (b - real)
        allp = list(params) + pad
        temperature = np.asarray([p.temperature for p in allp], np.float32)
        top_k = np.asarray([p.top_k for p in allp], np.int32)
        top_p = np.asarray([p.top_p for p in allp], np.float32)
        max_tokens = np.asarray([p.max_tokens for p in allp], np.int32)
        keys = self._place(np.stack([np.asarray(jax.random.fold_in(jax.random.PRNGKey(p.seed), rid))
                                     for p, rid in zip(allp, list(request_ids) + [0] * (b - real))]))

        logits, cache, pos = _prefill(self.model, self._place(tokens), self._place(seg),
                                      self.cache_len(plen + self.chunk))
        if rows != b or source != list(range(b)):
            logits, cache, pos = _spread(logits, cache, pos, self._place(np.asarray(source, np.int32)))
        done = np.zeros(b, bool)
        done[real:] = True
        state = DecodeState(logits, cache, pos, jnp.int32(0), self._place(done),
                            self._place(np.zeros((b, self.max_new_tokens), np.int32)),
                            self._place(np.zeros((b, self.max_new_tokens), np.float32)),
                            self._place(np.zeros(b, np.int32)))
        sp = tuple(self._place(x) for x in (temperature, top_k, top_p)) + (keys, self._place(max_tokens))
        step = 0
        while True:
            length = self.cache_len(plen + step + self.chunk)
            if length > state.cache.segment_ids.shape[1]:
                state = state._replace(cache=_grow(state.cache, length))
            state = _decode_chunk(self.model, state, sp, self.eos, self.chunk)
            step = int(state.step)
            done = np.asarray(state.done).copy()
            n_gen = np.asarray(state.n_generated)
            if any(p.stop for p in params):
                toks = np.asarray(state.tokens)
                for r in range(real):
                    if not done[r] and params[r].stop and self.tokenizer is not None:
                        text = self.tokenizer.decode(toks[r, : n_gen[r]], skip_special_tokens=True)
                        if any(s in text for s in params[r].stop):
                            done[r] = True
                state = state._replace(done=self._place(done))
            if done.all() or step >= self.max_new_tokens:
                break
        toks, lps, n_gen = np.asarray(state.tokens), np.asarray(state.logprobs), np.asarray(state.n_generated)
        eos = set(np.asarray(self.eos).tolist())
        out = []
        for r in range(real):
            t = toks[r, : n_gen[r]].tolist()
            reason = "length"
            if t and t[-1] in eos:
                reason = "stop"
            text = self.tokenizer.decode(t, skip_special_tokens=True) if self.tokenizer is not None else ""
            if params[r].stop:
                cut = min((text.find(s) for s in params[r].stop if s in text), default=-1)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
            out.append(Completion(t, text, reason, lps[r, : n_gen[r]].tolist() if params[r].logprobs else None,
                                  prompt_tokens=len(prompts[r])))
        return out


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    gen = model.cfg.hf_config.get("eos_token_id")
    if model.cfg.source_dir:
        import json
        from pathlib import Path

        g = Path(model.cfg.source_dir) / "generation_config.json"
        if g.exists():
            gen = json.loads(g.read_text()).get("eos_token_id", gen)
    if isinstance(gen, int):
        ids.append(gen)
    elif isinstance(gen, list):
        ids.extend(int(x) for x in gen)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids
