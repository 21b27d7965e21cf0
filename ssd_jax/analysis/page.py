"""A static HTML page of the fork/lock analysis: the label summary, the four panels, and a few responses with every
token coloured by its label (hover for survivors and both models' probability of that token).

The page is one self-contained file (panels referenced beside it, data inline): it opens from disk, offline.
A small script fills the summary counts from the inline data, so a browser that renders the page also proves
the data and the markup agree (the tests check it in headless Chromium).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from ssd_jax.io_utils import atomic_write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 70em; }
.tok { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 13px; }
.lock { background: #9ecae1; } .fork { background: #fdae6b; } .other { background: #e5e5e5; }
.response { border: 1px solid #ccc; padding: .6em; margin: .8em 0; line-height: 1.6; }
img { max-width: 48%; margin: .3em; } table { border-collapse: collapse; } td, th { padding: .2em .6em; }
"""

SCRIPT = """
const data = JSON.parse(document.getElementById('forklock-data').textContent);
const spans = document.querySelectorAll('span.tok');
const n = {lock: 0, fork: 0, other: 0};
spans.forEach(s => { n[s.dataset.label] += 1; });
document.getElementById('shown-counts').textContent =
  `${spans.length} tokens shown: ${n.lock} lock, ${n.fork} fork, ${n.other} other ` +
  `(of ${data.positions} scored positions: ${data.lock} locks, ${data.fork} forks)`;
document.body.dataset.ready = 'yes';
"""


def _token_span(t: dict) -> str:
    tip = f"survivors {t['survivors']}; p_base {t['p_base']:.3f}; p_student {t['p_student']:.3f}"
    return (f'<span class="tok {t["label"]}" data-label="{t["label"]}" title="{html.escape(tip)}">'
            f"{html.escape(t['text'])}</span>")


def _summary_table(result: dict) -> str:
    lab = result["labels"]
    rows = [("positions scored", lab["positions"], "", ""),
            ("locks (≤ %d survivors)" % result["config"]["lock_max"], lab["lock"]["count"],
             f"{lab['lock']['tail_mass']['base']:.4f}", f"{lab['lock']['tail_mass']['student']:.4f}"),
            ("forks (≥ %d survivors)" % result["config"]["fork_min"], lab["fork"]["count"],
             f"{lab['fork']['head_entropy']['base']:.4f}", f"{lab['fork']['head_entropy']['student']:.4f}")]
    body = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td><td>{d}</td></tr>" for a, b, c, d in rows)
    return ("<table border=1><tr><th></th><th>count</th><th>base</th><th>student</th></tr>" + body +
            "</table><p>Locks: tail mass outside the base model's training-time kept set. Forks: entropy (nats) "
            "of each model restricted to that set.</p>")


def write_page(result: dict, panels: dict[str, str], path: Path) -> None:
    lab = result["labels"]
    data = {"positions": lab["positions"], "lock": lab["lock"]["count"], "fork": lab["fork"]["count"]}
    imgs = "".join(f'<img src="{html.escape(Path(p).name)}" alt="panel {k}">' for k, p in sorted(panels.items()))
    responses = "".join(
        f'<h3>{html.escape(r["id"])}</h3><div class="response">{"".join(_token_span(t) for t in r["tokens"])}</div>'
        for r in result["tokens"])
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Fork/lock analysis</title><style>{STYLE}</style></head>
<body>
<h1>Fork/lock analysis</h1>
<p>base: <code>{html.escape(result['base'])}</code><br>student: <code>{html.escape(result['student'])}</code><br>
responses: <code>{html.escape(result['samples'])}</code> ({result['responses']} scored)</p>
{_summary_table(result)}
<p id="shown-counts"></p>
<p><span class="legend lock">lock</span> <span class="legend fork">fork</span> <span class="legend other">other</span></p>
{imgs}
{responses}
<script type="application/json" id="forklock-data">{json.dumps(data)}</script>
<script>{SCRIPT}</script>
</body></html>
"""
    atomic_write_text(path, doc)
