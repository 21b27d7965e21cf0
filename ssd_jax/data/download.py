"""`ssd-jax data download`: the datasets the paper configs read, fetched from the Hugging Face hub when the user asks
(the one command here that uses the network), into the layout the loaders expect.

Nothing else in ssd-jax downloads data: a run whose problem path is missing is refused before its first stage with
the dataset id and this command (`sampling.stage.check_problem_source`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ssd_jax.errors import UserError


@dataclass(frozen=True)
class Dataset:
    name: str  # as `ssd-jax data download` names it
    repo: str  # Hugging Face dataset id
    what: str
    patterns: tuple[str, ...]  # the files the loaders read
    default_dir: str  # where the paper configs look

    def command(self, to: str | os.PathLike | None = None) -> str:
        return f"ssd-jax data download {self.name} --to {to or self.default_dir}"

    def folder_for(self, path: str | os.PathLike) -> Path:
        """Where to download so that a loader's `path` (rStar: its seed_sft folder) is there."""
        p = Path(path)
        return p.parent if self.name == "rstar-coder" and p.name == "seed_sft" else p


DATASETS = {
    "rstar-coder": Dataset("rstar-coder", "microsoft/rStar-Coder", "rStar-Coder's seed_sft subset (the SSD prompt pool)",
                           ("seed_sft/*",), "data/rStar-Coder"),
    "livecodebench": Dataset("livecodebench", "livecodebench/code_generation_lite",
                             "LiveCodeBench code_generation_lite (its test*.jsonl files)", ("test*.jsonl",),
                             "data/code_generation_lite"),
}
KIND_DATASET = {"rstar": "rstar-coder", "lcb": "livecodebench"}  # problems.kind → dataset


def check_layout(name: str, folder: str | os.PathLike) -> Path:
    """The folder a loader reads for dataset `name` (rStar: its seed_sft folder), refused unless it holds the
    files the loader needs."""
    d = Path(folder)
    if name == "rstar-coder":
        seed = d / "seed_sft" if (d / "seed_sft").is_dir() else d
        if not any(seed.glob("*.parquet")) and not any(seed.glob("*.jsonl")):
            raise UserError(f"{seed}: no parquet or JSONL files of rStar-Coder's seed_sft")
        return seed
    if not any(d.glob("test*.jsonl")):
        raise UserError(f"{d}: no test*.jsonl files of LiveCodeBench code_generation_lite")
    return d


def download(name: str, to: str | None = None) -> Path:
    """Fetch dataset `name` into `to` (default: where the paper configs look); returns the loaders' folder."""
    if name not in DATASETS:
        raise UserError(f"dataset {name!r}: expected one of {', '.join(DATASETS)}")
    ds = DATASETS[name]
    out = Path(to or ds.default_dir)
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise UserError(f"cannot download {ds.repo} ({ds.what}): HF_HUB_OFFLINE is set; unset it, or copy the "
                        f"files into {out} by hand")
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(ds.repo, repo_type="dataset", allow_patterns=list(ds.patterns), local_dir=str(out))
    except Exception as e:  # no network, no such repo: one line
        raise UserError(f"could not download {ds.repo} ({ds.what}) into {out}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return check_layout(name, out)
