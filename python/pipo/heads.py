"""Draft heads on a frozen AR backbone, for verified speculative decoding (mode "spec").

Two kinds, both reading the verifier's own final hidden states (``ARModel.forward``'s output,
after the final norm) and scoring tokens with the backbone's LM head (tied or not), so they add
only a few parameters and share the verifier's vocabulary:

- ``mtp`` (EAGLE / DeepSeek-MTP style): ``MTPHead`` of pipo.model (embedding norm, hidden norm,
  fc on [embedding(token); hidden], one decoder layer, final norm) with a paged KV cache of its
  own, one entry per position. Entry j reads (token t_{j+1}, verifier hidden h_j) and predicts
  t_{j+2}; chained drafting feeds its own output in place of h for the next position.
- ``medusa``: K residual heads (``ResBlock``s, zero-initialised) on the verifier's hidden state
  h_j; head k (1-based) predicts t_{j+1+k}. No state of its own.

Training is dense (no cache) on the frozen backbone: ``mtp_loss`` / ``medusa_loss`` compute the
backbone's hidden states under no_grad and train only the head (pipo.train_heads), distilled from
the backbone's own next-token distributions (soft cross-entropy against p_AR). The MTP loss
runs the chain ``depth`` steps deep with the head's own features, attending as the paged drafter
does at inference (``dense_mtp``), so the head learns to consume its own outputs.

A head checkpoint is a folder like a model's: ``config.json`` (kind "mtp" | "medusa", the
backbone's config, the head's shape) and ``model.safetensors`` with the head's weights only.

Example::

    ar = load_builtin("ar", preset("tiny"), 1)
    head = load_head("python/pipo/checkpoints/mtp", ar)        # MTPHead
    cache = new_head_cache(head, ar, num_pages=64, page_size=16)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import BUILTIN_DIR
from .config import ModelConfig
from .kv_cache import PagedKVCache
from .model import (
    ARModel,
    DecoderLayer,
    MTPHead,
    apply_rope,
    dense_hidden,
    rope_cos_sin,
)

__all__ = [
    "HEAD_KINDS",
    "MedusaHeads",
    "ResBlock",
    "builtin_head",
    "dense_mtp",
    "init_mtp_head",
    "load_head",
    "medusa_loss",
    "mtp_loss",
    "new_head",
    "new_head_cache",
    "save_head",
]

HEAD_KINDS = ("mtp", "medusa")
FORMAT_VERSION = 1


class ResBlock(nn.Module):
    """x + silu(W x + b), W and b zero at initialisation (the block starts as the identity)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.Module):
    """K heads of ``num_layers`` ResBlocks each; head k's output goes to the backbone's LM head.

    Example::

        heads = MedusaHeads(ar.config, num_heads=4)
        logits = heads.logits(hidden, ar.lm_head_weight)      # float32 [N, 4, V]
    """

    def __init__(self, config: ModelConfig, num_heads: int = 4, num_layers: int = 1) -> None:
        super().__init__()
        if num_heads < 1 or num_layers < 1:
            raise ValueError(f"num_heads, num_layers: expected >= 1, got {num_heads}, {num_layers}")
        self.config, self.num_heads, self.num_layers = config, num_heads, num_layers
        h = config.hidden_size
        self.heads = nn.ModuleList(
            nn.Sequential(*(ResBlock(h) for _ in range(num_layers))) for _ in range(num_heads)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> [..., K, H]: each head's state (before the LM head)."""
        return torch.stack([head(hidden) for head in self.heads], dim=-2)

    def logits(self, hidden: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
        """hidden [..., H], lm_head [V, H] -> float32 [..., K, V]."""
        return self(hidden).float() @ lm_head.float().t()


def init_mtp_head(head: MTPHead, backbone: ARModel) -> None:
    """The MTP head's starting point on a backbone: fc = [I | I] (sum of the normed embedding and
    hidden state), unit norms, layer and final norm copied from the backbone's last layer and
    final norm (PIPOModel.init_heads does the same for PIPO's head)."""
    h = backbone.config.hidden_size
    with torch.no_grad():
        eye = torch.eye(h, dtype=head.fc.weight.dtype, device=head.fc.weight.device)
        head.fc.weight.copy_(torch.cat([eye, eye], 1))
        head.embed_norm.weight.fill_(1.0)
        head.hidden_norm.weight.fill_(1.0)
        head.layer.load_state_dict(backbone.layers[-1].state_dict())
        head.norm.load_state_dict(backbone.norm.state_dict())


def new_head(kind: str, backbone: ARModel, **shape) -> MTPHead | MedusaHeads:
    """A fresh head of ``kind`` for ``backbone`` at its documented initialisation, in the
    backbone's dtype and device. ``shape``: medusa's num_heads / num_layers."""
    w = backbone.embed_tokens.weight
    if kind == "mtp":
        if shape:
            raise ValueError(f"shape: the mtp head takes no shape options, got {sorted(shape)}")
        head = MTPHead(backbone.config).to(device=w.device, dtype=w.dtype)
        head.config = backbone.config  # what the drafter checks its verifier against
        init_mtp_head(head, backbone)
        return head
    if kind == "medusa":
        return MedusaHeads(backbone.config, **shape).to(device=w.device, dtype=w.dtype)
    raise ValueError(f"kind: expected one of {HEAD_KINDS}, got {kind!r}")


def head_kind(head: nn.Module) -> str:
    if isinstance(head, MTPHead):
        return "mtp"
    if isinstance(head, MedusaHeads):
        return "medusa"
    raise ValueError(f"head: expected an MTPHead or MedusaHeads, got {type(head).__name__}")


def new_head_cache(
    head: MTPHead, backbone: ARModel, num_pages: int, page_size: int
) -> PagedKVCache:
    """The MTP head's paged KV cache: one layer, the backbone's KV shapes, dtype and device."""
    c, w = backbone.config, backbone.embed_tokens.weight
    return PagedKVCache(1, num_pages, page_size, c.num_kv_heads, c.head_dim, w.dtype, w.device)


# ---------------------------------------------------------------------------- checkpoints


def save_head(head: MTPHead | MedusaHeads, backbone_config: ModelConfig, path) -> Path:
    """Write ``config.json`` (kind, backbone config, head shape) and ``model.safetensors`` (the
    head's weights only) into folder ``path``."""
    import safetensors.torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    kind = head_kind(head)
    shape = {"num_heads": head.num_heads, "num_layers": head.num_layers} if kind == "medusa" else {}
    meta = {
        "pipo_checkpoint": FORMAT_VERSION,
        "kind": kind,
        "config": backbone_config.to_dict(),
        "head": shape,
    }
    (path / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    safetensors.torch.save_file(tensors, str(path / "model.safetensors"), metadata={"kind": kind})
    return path


def load_head(path, backbone: ARModel, kind: str | None = None) -> MTPHead | MedusaHeads:
    """The head saved in folder ``path`` for ``backbone`` (its dtype and device). Raises
    FileNotFoundError / ValueError naming the file when the folder is not a head checkpoint, is
    of another ``kind`` than asked, or was trained on a backbone of other shapes."""
    import safetensors.torch

    path = Path(path)
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing (a head checkpoint folder needs a config.json)")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from exc
    got = meta.get("kind")
    if got not in HEAD_KINDS or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{file}: not a draft-head checkpoint (kind {got!r}, expected mtp|medusa)")
    if kind is not None and got != kind:
        raise ValueError(f"{file}: a {got} head, expected {kind}")
    trained_on = ModelConfig.from_dict(meta["config"])
    if trained_on != backbone.config:
        diff = [
            f"{k}: {v} vs {getattr(backbone.config, k)}"
            for k, v in trained_on.to_dict().items()
            if getattr(backbone.config, k) != v
        ]
        raise ValueError(
            f"{file}: the head was trained on another backbone ({'; '.join(diff[:4])})"
        )
    w = backbone.embed_tokens.weight
    with torch.device("meta"):
        head = MTPHead(trained_on) if got == "mtp" else MedusaHeads(trained_on, **meta["head"])
    head = head.to(dtype=w.dtype).to_empty(device=w.device)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing weights file")
    tensors = safetensors.torch.load_file(str(weights))
    expected = head.state_dict()
    bad = sorted(set(expected) ^ set(tensors)) or [
        k for k in expected if expected[k].shape != tensors[k].shape
    ]
    if bad:
        raise ValueError(f"{weights}: weights do not match the head's shape ({bad[:4]})")
    head.load_state_dict(tensors)
    head.config = trained_on
    return head.eval().requires_grad_(False)


def builtin_head(kind: str, backbone: ARModel) -> MTPHead | MedusaHeads | None:
    """The head shipped under ``checkpoints/<kind>`` when it was trained on ``backbone``'s shapes
    (the built-in AR model), else None."""
    folder = BUILTIN_DIR / kind
    if not (folder / "config.json").is_file():
        return None
    shipped = json.loads((folder / "config.json").read_text())["config"]
    if ModelConfig.from_dict(shipped) != backbone.config:
        return None
    return load_head(folder, backbone, kind)


# ---------------------------------------------------------------------------- dense training


def _project(layer: DecoderLayer, x: torch.Tensor, rope):
    """q [B, T, heads, D] (normed, rotated), k, v [B, T, kv_heads, D] of x [B, T, H]."""
    attn = layer.self_attn
    b, t, _ = x.shape
    h = layer.input_layernorm(x)
    q = attn.q_norm(attn.q_proj(h).view(b, t, attn.heads, attn.head_dim))
    k = attn.k_norm(attn.k_proj(h).view(b, t, attn.kv_heads, attn.head_dim))
    v = attn.v_proj(h).view(b, t, attn.kv_heads, attn.head_dim)
    return apply_rope(q, *rope), apply_rope(k, *rope), v


def _finish(layer: DecoderLayer, x, q, keys, values, mask) -> torch.Tensor:
    """The layer's output over x [B, T, H] given its queries and the keys / values it attends to
    ([B, M, kv_heads, D]) under mask bool [T, M]."""
    attn = layer.self_attn
    b, t, _ = x.shape
    rep = attn.heads // attn.kv_heads
    k, v = keys.repeat_interleave(rep, 2), values.repeat_interleave(rep, 2)
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, attn.heads * attn.head_dim))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _mtp_input(head: MTPHead, tokens, hidden, embedding):
    e = head.embed_norm(F.embedding(tokens, embedding))
    return head.fc(torch.cat([e, head.hidden_norm(hidden)], dim=-1))


def chain_mask(length: int, step: int, device=None) -> torch.Tensor:
    """bool [L, (step+1) L]: what chain step ``step`` attends to at inference. Query q sits
    ``step`` positions after its chain's root q - step (the last entry computed from the
    verifier's features): it sees step 0's entries up to the root and, of every later step r,
    the one entry of its own chain (position q - step + r)."""
    q = torch.arange(length, device=device).unsqueeze(1)
    p = torch.arange(length, device=device).unsqueeze(0)
    parts = [p <= q - step] + [p == q - step + r for r in range(1, step + 1)]
    return torch.cat(parts, dim=1)


def dense_mtp(
    head: MTPHead, backbone: ARModel, tokens: torch.Tensor, hidden: torch.Tensor, depth: int
) -> list[torch.Tensor]:
    """The MTP head's chain over token rows int64 [B, T] with backbone hidden states [B, T, H],
    without a cache. Returns ``depth`` tensors [B, T-1, H]: step s at position q predicts
    t_{q+2}; step 0 reads (t_{q+1}, h_q), step s >= 1 reads (t_{q+1}, step s-1's output at
    q - 1), attending as ``chain_mask`` says (the paged drafter's attention at inference).
    Positions q < s have no chain root and their outputs are meaningless."""
    c = backbone.config
    emb = backbone.embed_tokens.weight
    length = tokens.shape[1] - 1
    rope = rope_cos_sin(
        torch.arange(length, device=tokens.device), c.head_dim, c.rope_theta, c.rope_scaling
    )
    nxt = tokens[:, 1:]
    feats, keys, values, outs = hidden[:, :length], [], [], []
    for s in range(depth):
        if s:
            feats = F.pad(outs[-1][:, :-1], (0, 0, 1, 0))  # step s-1's output one position back
        x = _mtp_input(head, nxt, feats, emb)
        q, k, v = _project(head.layer, x, rope)
        keys.append(k)
        values.append(v)
        mask = chain_mask(length, s, tokens.device)
        y = _finish(head.layer, x, q, torch.cat(keys, 1), torch.cat(values, 1), mask)
        outs.append(head.norm(y))
    return outs


def _backbone_hidden(backbone: ARModel, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return dense_hidden(backbone, backbone.embed_tokens(tokens))


def _distill(backbone: ARModel, states, teacher, valid):
    """(mean soft CE, agreement) of the head's states [B, L, H] with the backbone's own hidden
    states teacher [B, L, H] at the positions that predict the same token, where valid (bool
    [L]). The soft CE against the AR distribution is KL(p_AR || p_head) + const: the head
    learns what the verifier will accept, not the corpus; agreement is the fraction of
    positions where the head's argmax equals the AR model's greedy token (the greedy
    acceptance rate of a one-token draft)."""
    logits = backbone.logits(states[:, valid]).flatten(0, 1)
    with torch.no_grad():
        target = backbone.logits(teacher[:, valid]).flatten(0, 1)
    ce = -(target.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
    agree = (logits.argmax(-1) == target.argmax(-1)).float().mean()
    return ce, agree.item()


def mtp_loss(head: MTPHead, backbone: ARModel, tokens: torch.Tensor, depth=3, decay=0.8):
    """Training loss of the MTP head on token rows int64 [B, T] (frozen backbone): sum over chain
    steps s of decay^s times the soft CE of step s at position q against the AR model's
    distribution of t_{q+2} (its hidden state at q + 1). Returns (total, parts: "ce<s>" and
    "agree<s>", step s's argmax agreement with the AR greedy token)."""
    hidden = _backbone_hidden(backbone, tokens)
    outs = dense_mtp(head, backbone, tokens, hidden, depth)
    teacher = hidden[:, 1:]  # [B, T-1]: position q + 1 predicts t_{q+2}
    total, parts = 0.0, {}
    for s, out in enumerate(outs):
        valid = torch.arange(out.shape[1], device=tokens.device) >= s  # positions with a root
        ce, agree = _distill(backbone, out, teacher, valid)
        total = total + decay**s * ce
        parts[f"ce{s}"], parts[f"agree{s}"] = ce.item(), agree
    return total, parts


def medusa_loss(heads: MedusaHeads, backbone: ARModel, tokens: torch.Tensor, decay=0.8):
    """Training loss of Medusa heads on token rows int64 [B, T] (frozen backbone): sum over heads
    k = 1..K of decay^(k-1) times the soft CE of head k at position j against the AR model's
    distribution of t_{j+1+k} (its hidden state at j + k). Returns (total, parts)."""
    hidden = _backbone_hidden(backbone, tokens)
    states = heads(hidden[:, :-1])  # [B, T-1, K, H]
    t = hidden.shape[1]
    total, parts = 0.0, {}
    for k in range(1, heads.num_heads + 1):
        # head k at position j pairs with the teacher at j + k (j < T - k)
        ce, agree = _distill(
            backbone,
            states[:, : t - k, k - 1],
            hidden[:, k:],
            torch.ones(t - k, dtype=torch.bool, device=tokens.device),
        )
        total = total + decay ** (k - 1) * ce
        parts[f"ce{k}"], parts[f"agree{k}"] = ce.item(), agree
    return total, parts
