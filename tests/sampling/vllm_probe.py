"""Run our VllmSampler on a model directory and dump its outputs as JSON (vLLM spawns workers, so it needs a
`__main__` guard and its own process). Usage: python vllm_probe.py MODEL_DIR PROMPTS_JSON OUT_JSON [PROBLEMS_JSONL]

With PROBLEMS_JSONL it also runs the `ssd-jax sample` stage on vLLM with non-default `vllm:` options and records
what the engine was built with and how many requests it was handed at once."""

import json
import sys


def main():
    model_dir, prompts_file, out_file = sys.argv[1:4]
    from ssd_jax.sampling.types import SamplingParams
    from ssd_jax.sampling.vllm_sampler import VllmSampler

    prompts = json.load(open(prompts_file))
    sampler = VllmSampler(model_dir, max_model_len=256, dtype="float32")
    greedy = sampler.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    sampled = sampler.generate(prompts, SamplingParams(temperature=1.6, top_k=20, top_p=0.8, max_tokens=16, seed=3,
                                                       logprobs=True), request_ids=[7, 8, 9][: len(prompts)])
    out = {"greedy": [c.token_ids for c in greedy],
           "sampled": [{"tokens": c.token_ids, "logprobs": c.logprobs, "text": c.text} for c in sampled]}
    if len(sys.argv) > 4:
        del sampler
        out["stage"] = run_stage(model_dir, sys.argv[4], out_file + ".samples.jsonl")
    # vLLM sampling, the sample stage and its replicas: none of it may start a JAX backend in this process (it
    # would claim the GPU memory vLLM needs)
    from jax._src import xla_bridge

    out["jax_backend_started"] = xla_bridge.backends_are_initialized()
    json.dump(out, open(out_file, "w"))


def run_stage(model_dir: str, problems: str, samples: str) -> dict:
    """The sample stage with `backend: vllm` and options that differ from every default; the engine it builds is
    kept (by wrapping the real constructor) so its settings can be read back."""
    from ssd_jax.config import SampleConfig, from_dict
    from ssd_jax.sampling import stage, vllm_sampler

    engines = []
    real = vllm_sampler.VllmSampler.__init__

    def keep(self, *a, **kw):
        real(self, *a, **kw)
        engines.append(self)

    vllm_sampler.VllmSampler.__init__ = keep
    cfg = from_dict(SampleConfig, {
        "model": {"path": model_dir}, "problems": {"kind": "jsonl", "path": problems}, "backend": "vllm",
        "vllm": {"max_model_len": 300, "max_num_seqs": 3, "enforce_eager": True},
        "decode": {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "max_tokens": 8, "n": 2},
        "batch_size": 1, "max_prompt_len": 128, "out": samples, "progress": False})
    manifest = stage.run_sample(cfg)
    vc = engines[0].llm.llm_engine.vllm_config
    out = {"manifest": manifest, "max_model_len": vc.model_config.max_model_len,
           "max_num_seqs": vc.scheduler_config.max_num_seqs, "enforce_eager": vc.model_config.enforce_eager,
           "tensor_parallel_size": vc.parallel_config.tensor_parallel_size,
           "lines": len(open(samples).read().splitlines())}
    engines.clear()
    # Two data-parallel engines, each a child process with half of the requests, merged into one file.
    cfg.vllm.replicas, cfg.out = 2, samples + ".replicas.jsonl"
    out["replicas"] = {"manifest": stage.run_sample(cfg), "engines_in_this_process": len(engines),
                       "records": [json.loads(line) for line in open(cfg.out)]}
    return out


if __name__ == "__main__":
    main()
