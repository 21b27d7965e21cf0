"""The JAX KV-cache sampler: greedy = HF generate, sampled distribution = the truncated distribution (χ²),
batching does not change a request's output, EOS / stop strings / length limits."""

import numpy as np
import pytest
import torch
import transformers
from scipy import stats

from ssd_jax import bundled, parity
from ssd_jax.models import hf
from ssd_jax.sampling.jax_sampler import JaxSampler, SamplingParams
from ssd_jax.sampling.truncation import truncated_logprobs

PROMPTS = [[5, 17, 99, 3], [200, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [42], [7, 7, 7, 7, 7, 7, 7]]


@pytest.fixture(scope="module")
def tiny_sampler(tiny_dir):
    model = hf.load(tiny_dir("llama3"))
    return model, JaxSampler(model, batch_size=4, max_prompt_len=16, max_new_tokens=24, chunk=8, prompt_bucket=16,
                             eos_token_ids=[])


def test_greedy_equals_hf_generate_on_tiny_model(tiny_sampler, tiny_dir):
    _, sampler = tiny_sampler
    ref = parity.load_hf_reference(tiny_dir("llama3"))
    out = sampler.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=20))
    for p, c in zip(PROMPTS, out):
        want = ref.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(p):].tolist()
        assert c.token_ids == want
        assert c.finish_reason == "length"


def test_batch_composition_does_not_change_outputs(tiny_sampler):
    _, sampler = tiny_sampler
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, max_tokens=12, seed=3)
              for t, k, p in [(0.0, 0, 1.0), (1.0, 20, 0.9), (1.6, 20, 0.8), (0.7, 0, 0.95)]]
    together = sampler.generate(PROMPTS, params, request_ids=[10, 11, 12, 13])
    for i in range(4):
        alone = sampler.generate([PROMPTS[i]], [params[i]], request_ids=[10 + i])[0]
        assert alone.token_ids == together[i].token_ids
    # Another seed or request id gives another sample (the streams are really per request).
    other = sampler.generate([PROMPTS[2]], [params[2]], request_ids=[99])[0]
    assert other.token_ids != together[2].token_ids


def test_next_token_distribution_chi_square(tiny_dir):
    """20k first tokens drawn by the sampler follow the truncated distribution of HF's logits (fixed seed)."""
    d = tiny_dir("qwen3_untied")
    model = hf.load(d)
    prompt = [9, 8, 7, 6, 5]
    with torch.no_grad():
        logits = parity.load_hf_reference(d)(torch.tensor([prompt])).logits[0, -1].numpy()
    t, k, p = 1.3, 20, 0.9
    probs = np.exp(np.asarray(truncated_logprobs(logits[None], t, k, p))[0])
    support = np.flatnonzero(probs > 0)
    assert 3 <= len(support) <= 20
    n = 20_000
    sampler = JaxSampler(model, batch_size=2_000, max_prompt_len=8, max_new_tokens=1, chunk=1, prompt_bucket=8,
                         eos_token_ids=[])
    out = sampler.generate([prompt] * n, SamplingParams(temperature=t, top_k=k, top_p=p, max_tokens=1, seed=1))
    first = np.array([c.token_ids[0] for c in out])
    assert set(first) <= set(support)
    counts = np.array([(first == s).sum() for s in support])
    expected = probs[support].astype(np.float64) / probs[support].astype(np.float64).sum() * n
    chi2, pval = stats.chisquare(counts, expected)
    assert pval > 1e-3, (chi2, pval)


def test_eos_stop_strings_and_limits(tiny_dir):
    model = hf.load(tiny_dir("llama3"))
    greedy = JaxSampler(model, batch_size=2, max_prompt_len=16, max_new_tokens=24, chunk=4, prompt_bucket=16,
                        eos_token_ids=[])
    base = greedy.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=16))[0].token_ids
    eos = base[5]
    first_eos = base.index(eos)
    s = JaxSampler(model, batch_size=2, max_prompt_len=16, max_new_tokens=24, chunk=4, prompt_bucket=16,
                   eos_token_ids=[eos])
    c = s.generate([PROMPTS[0], PROMPTS[1]], SamplingParams(temperature=0.0, max_tokens=16))
    assert c[0].token_ids == base[: first_eos + 1] and c[0].finish_reason == "stop"
    assert len(c[1].token_ids) <= 16
    short = s.generate([PROMPTS[1]], SamplingParams(temperature=0.0, max_tokens=3))[0]
    assert len(short.token_ids) <= 3
    too_long = s.generate([list(range(40))], SamplingParams(max_tokens=3))[0]
    assert too_long.finish_reason == "prompt_too_long" and too_long.token_ids == []


@pytest.mark.slow
def test_smollm2_greedy_equals_hf_generate_and_stop_strings():
    d = bundled.smollm2_135m()
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    model = hf.load(d)
    msgs = ["Write a Python function that returns the square of a number.",
            "Write a Python function is_even(n) that checks if n is even.",
            "Print hello world in Python."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": m}], add_generation_prompt=True,
                                       tokenize=True)["input_ids"] for m in msgs]
    s = JaxSampler(model, tok, batch_size=4, max_prompt_len=64, max_new_tokens=48, chunk=16)
    out = s.generate(prompts, SamplingParams(temperature=0.0, max_tokens=48))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(d))
    for p, c in zip(prompts, out):
        want = ref.generate(torch.tensor([p]), max_new_tokens=48, do_sample=False)[0, len(p):].tolist()
        assert c.token_ids == want
    assert "def " in out[0].text
    stopped = s.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=48, stop=("return",)))[0]
    assert stopped.finish_reason == "stop" and "return" not in stopped.text and stopped.text in out[0].text


def test_sharded_sampler_matches_single_device(tiny_dir):
    from ssd_jax.sharding import MeshConfig, make_mesh

    d = tiny_dir("qwen3_moe")
    params = [SamplingParams(temperature=0.0, max_tokens=10)] * 4 + [SamplingParams(temperature=1.0, top_k=20,
                                                                                    max_tokens=10, seed=2)] * 4
    prompts = PROMPTS + PROMPTS
    single = JaxSampler(hf.load(d), batch_size=8, max_prompt_len=16, max_new_tokens=12, chunk=4, prompt_bucket=16,
                        eos_token_ids=[]).generate(prompts, params)
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    sharded = JaxSampler(hf.load(d, mesh=mesh), batch_size=8, max_prompt_len=16, max_new_tokens=12, chunk=4,
                         prompt_bucket=16, mesh=mesh, eos_token_ids=[]).generate(prompts, params)
    assert [c.token_ids for c in sharded] == [c.token_ids for c in single]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_chunk_updates_the_kv_cache_in_place(tiny_sampler, tiny_dir, dtype):
    """The compiled decode loop writes each layer's new keys into the donated cache without copying it: no copy
    of a cache-shaped buffer anywhere in the HLO (a copy per layer and token cost more than the model's matmuls at
    32 rows × 704 slots), and no converted one either (XLA:CPU upcasts a bf16 dynamic-update-slice, rewriting the
    whole buffer). Guards the cache layout, its fp32 storage for bf16 on CPU and the write-after-read ordering in
    layers.Attention."""
    import re

    import jax.numpy as jnp

    from ssd_jax.sampling import jax_sampler as js

    model, sampler = tiny_sampler
    if dtype == "bfloat16":
        model = hf.load(tiny_dir("llama3"), dtype=dtype, param_dtype=dtype)
    b, s = sampler.batch_size, sampler.max_prompt_len + sampler.max_new_tokens
    tokens = np.ones((b, sampler.bucket), np.int32)
    logits, cache, pos = js._prefill(model, tokens, tokens, s)
    state = js.DecodeState(logits, cache, pos, jnp.int32(0), jnp.zeros(b, bool), jnp.zeros((b, 24), jnp.int32),
                           jnp.zeros((b, 24), jnp.float32), jnp.zeros(b, jnp.int32))
    params = (jnp.ones(b), jnp.full(b, 20, jnp.int32), jnp.full(b, 0.9), jnp.zeros((b, 2), jnp.uint32),
              jnp.full(b, 24, jnp.int32))
    hlo = js._decode_chunk.lower(model, state, params, sampler.eos, 4, jnp.int32(5)).compile().as_text()
    shapes = {",".join(map(str, x.shape)) for x in cache.k + cache.v}
    shapes = "|".join(shapes)
    copies = [ln for ln in hlo.splitlines() if re.search(r"= \w+\[(%s)\]\{[\d,]*\} copy\(" % shapes, ln)
              or re.search(r"%%[\w.-]*convert[\w.-]* = \w+\[(%s)\]" % shapes, ln)]
    assert "dynamic-update-slice" in hlo
    assert not copies, copies[:3]


def test_samples_of_one_prompt_share_its_prefill(tiny_sampler, monkeypatch):
    """Four requests over two distinct prompts: the batch prefills 2 rows (b/2), not 4, and every request still
    gets exactly the tokens it gets alone (its cache row is copied from its prompt's prefilled row)."""
    from ssd_jax.sampling import jax_sampler as js

    _, sampler = tiny_sampler
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0]]
    params = [SamplingParams(temperature=1.0, top_k=20, top_p=0.9, max_tokens=10, seed=5)] * 4
    rows = []
    real_prefill = js._prefill
    monkeypatch.setattr(js, "_prefill", lambda model, tokens, *a: rows.append(tokens.shape[0])
                        or real_prefill(model, tokens, *a))
    together = sampler.generate(prompts, params, request_ids=[1, 2, 3, 4])
    assert rows == [2]
    for i in range(4):
        alone = sampler.generate([prompts[i]], [params[i]], request_ids=[1 + i])[0]
        assert alone.token_ids == together[i].token_ids
    assert together[0].token_ids != together[2].token_ids  # same prompt, own stream


def test_moved_and_grown_cache_gives_the_full_cache_outputs(tiny_sampler, monkeypatch):
    """The cache moves through its lengths as the batch decodes (attention reads about the filled part): at slot 32
    the rows move left by the earliest prompt's start (4) into 48 slots, and every request gets the tokens and
    log-probs it gets with one full-length cache that never moves."""
    from ssd_jax.sampling import jax_sampler as js

    model, grown = tiny_sampler
    full = JaxSampler(model, batch_size=4, max_prompt_len=16, max_new_tokens=24, chunk=8, prompt_bucket=16,
                      eos_token_ids=[], cache_lengths=1)
    moves = []
    resize = js._resize
    monkeypatch.setattr(js, "_resize", lambda cache, shift, length: moves.append((int(shift), length))
                        or resize(cache, shift, length))
    params = [SamplingParams(temperature=t, top_k=20, top_p=0.9, max_tokens=24, seed=5, logprobs=True)
              for t in (0.0, 1.0, 1.3, 0.8)]
    a = grown.generate(PROMPTS, params)
    assert moves == [(4, 48)]  # the longest prompt (12 tokens) starts at slot 16 - 12
    b = full.generate(PROMPTS, params)
    assert moves == [(4, 48)] and [full.cache_len(n) for n in (24, 48)] == [48, 48]
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids and len(x.token_ids) == 24
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-5)


def test_a_finished_row_takes_the_next_request(tiny_dir, monkeypatch):
    """Continuous batching: 2 rows, 7 requests of 2–20 tokens. Rows are refilled as they finish (a request joins
    while the other row decodes), the batch runs about as many steps as the tokens need (a static batch waits for
    its longest row), a longer prompt than the write slot moves the rows right, and every request gets exactly the
    tokens it gets alone."""
    from ssd_jax.sampling import jax_sampler as js

    model = hf.load(tiny_dir("llama3"))
    sampler = JaxSampler(model, batch_size=2, max_prompt_len=16, max_new_tokens=20, chunk=8, prompt_bucket=8,
                         eos_token_ids=[])
    prompts = [[3, 1], [9], [4, 4, 4], [8, 6, 5, 4, 3, 2, 1, 9, 8, 7, 6, 5], [2, 7, 1, 8], [6], [5, 5]]
    lengths = [2, 3, 20, 6, 9, 17, 4]
    params = [SamplingParams(temperature=1.0, top_k=20, top_p=0.9, max_tokens=n, seed=7, logprobs=True)
              for n in lengths]
    joins, moves, steps = [], [], []
    splice, resize, chunk = js._splice, js._resize, js._decode_chunk
    monkeypatch.setattr(js, "_splice", lambda state, *a: joins.append(int((~np.asarray(state.done)).sum()))
                        or splice(state, *a))
    monkeypatch.setattr(js, "_resize", lambda cache, shift, length: moves.append(int(shift))
                        or resize(cache, shift, length))
    monkeypatch.setattr(js, "_decode_chunk", lambda *a: (lambda st: steps.append(int(st.step)) or st)(chunk(*a)))
    together = sampler.generate(prompts, params, request_ids=list(range(7)))
    assert [len(c.token_ids) for c in together] == lengths
    assert sum(1 for live in joins if live > 0) >= 3  # requests joined a batch that was decoding
    static = 9 + 20 + 17 + 6  # rows in join order (buckets, then ids): (9, 2), (20, 4), (17, 3), (6)
    assert steps[-1] <= -(-sum(lengths) // 2) + 4 < static
    # Two 1-token prompts finish after 2 tokens at write slot 10; the 12-token prompt (bucket 16) moves them right.
    short = [prompts[1], prompts[5], prompts[3]]
    short_params = [SamplingParams(temperature=1.0, top_k=20, top_p=0.9, max_tokens=n, seed=7, logprobs=True)
                    for n in (2, 2, 5)]
    moves.clear()
    mixed = sampler.generate(short, short_params, request_ids=[1, 5, 3])
    assert moves == [-6]
    monkeypatch.undo()
    for ps, ss, rid, out in [(prompts, params, range(7), together), (short, short_params, [1, 5, 3], mixed)]:
        for p, sp, r, c in zip(ps, ss, rid, out):
            alone = sampler.generate([p], [sp], request_ids=[r])[0]
            assert alone.token_ids == c.token_ids
            np.testing.assert_allclose(alone.logprobs, c.logprobs, atol=1e-5)
