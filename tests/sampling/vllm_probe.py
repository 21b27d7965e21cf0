"""Run our VllmSampler on a model directory and dump its outputs as JSON (vLLM spawns workers, so it needs a
`__main__` guard and its own process). Usage: python vllm_probe.py MODEL_DIR PROMPTS_JSON OUT_JSON"""

import json
import sys


def main():
    model_dir, prompts_file, out_file = sys.argv[1:4]
    from ssd_jax.sampling.jax_sampler import SamplingParams
    from ssd_jax.sampling.vllm_sampler import VllmSampler

    prompts = json.load(open(prompts_file))
    sampler = VllmSampler(model_dir, max_model_len=256, dtype="float32")
    greedy = sampler.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16))
    sampled = sampler.generate(prompts, SamplingParams(temperature=1.6, top_k=20, top_p=0.8, max_tokens=16, seed=3,
                                                       logprobs=True), request_ids=[7, 8, 9][: len(prompts)])
    json.dump({"greedy": [c.token_ids for c in greedy],
               "sampled": [{"tokens": c.token_ids, "logprobs": c.logprobs, "text": c.text} for c in sampled]},
              open(out_file, "w"))


if __name__ == "__main__":
    main()
