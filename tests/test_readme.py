"""README.md's "Using the ops" snippet runs as pasted (on a GPU when one is visible, else on the
CPU) and computes what the pure-PyTorch reference computes."""

import itertools
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(section: str) -> str:
    """The first ```python block of README section `section` (a "## " heading)."""
    body = README.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", body, re.S)
    assert match, f"README section {section!r} has no python block"
    return match.group(1)


def test_using_the_ops_snippet_runs(capsys):
    scope: dict = {}
    exec(compile(snippet("Using the ops in your own model"), "README.md", "exec"), scope)
    assert capsys.readouterr().out.strip() == "torch.Size([8, 32, 128])"
    k, k_cache, v, v_cache, slots = (scope[n] for n in ("k", "k_cache", "v", "v_cache", "slots"))
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    assert torch.equal(flat_k[slots], k) and torch.equal(v_cache.view_as(flat_k)[slots], v)
    assert int((flat_k.abs().sum((1, 2)) != 0).sum()) == len(slots)  # nothing else written
    # Causal attention of each sequence over its own new tokens, from q, k, v directly.
    q, out, bounds = scope["q"].float(), scope["out"].float(), scope["q_indptr"].tolist()
    group = q.shape[1] // k.shape[1]
    for start, end in itertools.pairwise(bounds):
        kb, vb = (t[start:end].float().repeat_interleave(group, dim=1) for t in (k, v))
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[start:end].transpose(0, 1), kb.transpose(0, 1), vb.transpose(0, 1), is_causal=True
        ).transpose(0, 1)
        torch.testing.assert_close(out[start:end], expected, atol=2e-2, rtol=2e-2)
