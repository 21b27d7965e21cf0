"""SFT data: chat/raw tokenisation with prompt masking, packing with segment isolation, determinism, errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from ssd_jax.config import SFTDataConfig
from ssd_jax.data import sft
from ssd_jax.errors import UserError
from ssd_jax.models import hf
from tests import tiny
from tests.train.test_step_parity import synthetic_examples


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return transformers.AutoTokenizer.from_pretrained(str(tiny.save_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


MSGS = [{"role": "user", "content": "Write f."}, {"role": "assistant", "content": "def f():\n    return 1"}]


def test_chat_mask_covers_exactly_the_assistant_turn(tok):
    ids, mask, prefix_ok = sft.tokenize_example(tok, MSGS, "chat", mask_prompt=True)
    assert prefix_ok
    text_all = tok.decode(ids)
    assert text_all == "<|im_start|>user\nWrite f.<|im_end|>\n<|im_start|>assistant\ndef f():\n    return 1<|im_end|>\n"
    assert tok.decode(ids[mask]) == "def f():\n    return 1<|im_end|>\n"
    assert tok.decode(ids[~mask]) == "<|im_start|>user\nWrite f.<|im_end|>\n<|im_start|>assistant\n"
    ids2, mask2, _ = sft.tokenize_example(tok, MSGS, "chat", mask_prompt=False)
    assert (ids2 == ids).all() and mask2.all()


def test_raw_mode_is_prompt_text_then_response_then_eos(tok):
    ids, mask, _ = sft.tokenize_example(tok, MSGS, "raw", mask_prompt=True)
    assert tok.decode(ids) == "Write f.def f():\n    return 1<|im_end|>"
    assert tok.decode(ids[mask]) == "def f():\n    return 1<|im_end|>"


def test_too_long_examples_are_truncated_or_dropped_and_counted(tok):
    long = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "word " * 200}]
    recs = [{"messages": MSGS}, {"messages": long}]
    ex, stats = sft.tokenize_dataset(recs, tok, SFTDataConfig(seq_len=32, too_long="truncate"))
    assert stats.truncated == 1 and stats.kept == 2 and max(len(e["inputs"]) for e in ex) == 32
    ex, stats = sft.tokenize_dataset(recs, tok, SFTDataConfig(seq_len=32, too_long="drop"))
    assert stats.dropped_too_long == 1 and stats.kept == 1
    with pytest.raises(UserError, match="no SFT example is usable"):
        sft.tokenize_dataset([{"messages": long}], tok, SFTDataConfig(seq_len=32, too_long="drop"))


def test_packed_attention_never_crosses_segments(tiny_dir):
    """Each segment of a packed row gets the logits it gets alone; ignoring segment ids would change them."""
    model = hf.load(tiny_dir("qwen3_tied"))
    row = next(iter(sft.rows_dataset(synthetic_examples(), SFTDataConfig(seq_len=64, packing_bins=2), epochs=1)))
    seg, pos = row["segment_ids"], row["positions"]
    assert len(set(seg[seg > 0])) >= 2
    packed = np.asarray(model(jnp.asarray(row["inputs"][None]), positions=jnp.asarray(pos[None]),
                              segment_ids=jnp.asarray(seg[None])).logits[0])
    leaky = np.asarray(model(jnp.asarray(row["inputs"][None]), positions=jnp.asarray(pos[None]),
                             segment_ids=jnp.asarray((seg[None] > 0).astype(np.int32))).logits[0])
    worst_leak = 0.0
    for sid in set(seg[seg > 0]):
        sel = seg == sid
        alone = np.asarray(model(jnp.asarray(row["inputs"][sel][None])).logits[0])
        np.testing.assert_allclose(packed[sel], alone, atol=1e-5)
        assert (pos[sel] == np.arange(sel.sum())).all()
        worst_leak = max(worst_leak, np.abs(leaky[sel] - alone).max())
    assert worst_leak > 1e-2


def test_packing_efficiency_on_realistic_lengths():
    """Response lengths of code samples are roughly log-normal (median ~600 tokens, long tail)."""
    rng = np.random.RandomState(0)
    lens = np.clip(rng.lognormal(np.log(600), 0.8, 1500).astype(int), 20, 4096)
    ex = [{"inputs": np.zeros(n, np.int32), "targets": np.zeros(n, np.int32), "weights": np.ones(n, np.float32)}
          for n in lens]
    assert sft.packing_efficiency(ex, SFTDataConfig(seq_len=4096, packing_bins=64)) >= 0.95


def test_stream_is_deterministic_and_resumable():
    ex = synthetic_examples()
    cfg = SFTDataConfig(seq_len=64, packing_bins=4, seed=7)
    a = iter(sft.batches_dataset(ex, cfg, 4))
    first = [next(a)["inputs"] for _ in range(5)]
    state = a.get_state()
    rest = [next(a)["inputs"] for _ in range(5)]
    b = iter(sft.batches_dataset(ex, cfg, 4))
    assert all((x == next(b)["inputs"]).all() for x in first)
    c = iter(sft.batches_dataset(ex, cfg, 4))
    c.set_state(json.loads(json.dumps(state)))  # the state survives JSON (how checkpoints store it)
    assert all((x == next(c)["inputs"]).all() for x in rest)
    other = iter(sft.batches_dataset(ex, SFTDataConfig(seq_len=64, packing_bins=4, seed=8), 4))
    assert not (next(other)["inputs"] == first[0]).all()


def test_every_example_is_seen_once_per_epoch():
    ex = synthetic_examples(n=30)
    for i, e in enumerate(ex):
        e["inputs"] = np.full_like(e["inputs"], i + 1)
    rows = list(sft.rows_dataset(ex, SFTDataConfig(seq_len=64, packing_bins=4), epochs=1))
    seen = sorted({int(v) for r in rows for s in set(r["segment_ids"][r["segment_ids"] > 0])
                   for v in r["inputs"][r["segment_ids"] == s][:1]})
    assert seen == list(range(1, 31))


@pytest.mark.parametrize("content,message", [
    ("{not json\n", ":1: not valid JSON"),
    ('{"messages": []}\n', ":1: expected an object with a non-empty list 'messages'"),
    ('{"messages": [{"role": "user", "content": "q"}]}\n', ":1: the last message must have role 'assistant'"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n\n{"x": 1}\n',
     ":3: expected an object"),
    ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}\n', ":1: messages[0] must be"),
    ("", "no SFT examples"),
])
def test_bad_jsonl_names_the_line(tmp_path, content, message):
    p = tmp_path / "d.jsonl"
    p.write_text(content)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sft.read_sft_jsonl(p)


def test_passes_over_the_data_count_packed_rows():
    """global_batch counts rows: packed, each row holds several examples, so the same steps make more passes."""
    ex = synthetic_examples(n=48)  # 4–39 tokens each
    unpacked = sft.data_passes(ex, SFTDataConfig(seq_len=64, packing=False), global_batch=4, total_steps=24)
    assert (unpacked["rows_per_pass"], unpacked["rows_trained"], unpacked["passes"]) == (48, 96, 2.0)
    cfg = SFTDataConfig(seq_len=64, packing_bins=4)
    packed = sft.data_passes(ex, cfg, global_batch=4, total_steps=24)
    rows = sum(1 for _ in sft.rows_dataset(ex, cfg, epochs=1))  # the trainer's packer over one epoch
    tokens = sum(len(e["inputs"]) for e in ex)
    assert packed["rows_per_pass"] == rows and -(-tokens // 64) <= rows < 48
    assert packed["passes"] == pytest.approx(96 / rows) and packed["passes"] > unpacked["passes"]
    assert packed["examples_per_row"] == pytest.approx(48 / rows)
    line = sft.describe_passes(packed)
    assert f"48 examples fill {rows} rows of 64 tokens per pass" in line and f"= {96 / rows:.2f} passes" in line
    assert "one example per row" in sft.describe_passes(unpacked)
