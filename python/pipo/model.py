"""The reference models: a Qwen3-style decoder (``ARModel``) and the same backbone with PIPO's
pair-in / pair-out heads (``PIPOModel``).

Every forward works on a *packed* batch: the N new tokens (or pairs) of B sequences laid end to
end, with an ``AttnMeta`` saying where each lands in the paged KV cache. ``use_kernels`` picks
between two paths over one set of weights:

- ``False``: plain PyTorch (nn.Linear, index writes into the cache, SDPA over each sequence's
  gathered keys). This is the reference the kernel path is tested against.
- ``True``: the pipo ops through ``pipo.ops`` (fold_pairs, fused_add_rmsnorm,
  qk_norm_rope_append, paged_attention, sample_tokens, unfold_input, pair_out). The residual
  stream then lives in one buffer per forward that fused_add_rmsnorm updates in place (each
  layer's residual add fused with the next norm), and RoPE reads a precomputed cos/sin table.

Weight names follow Hugging Face's Qwen3 without the ``model.`` prefix, so a Qwen3 checkpoint maps
onto ``ARModel`` key for key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .config import ModelConfig
from .kv_cache import PagedKVCache
from .sampling import filtered_probs, penalized_logits, unpack_bitmask

__all__ = ["ARModel", "AttnMeta", "PIPOModel", "SamplingTensors", "dense_hidden", "dense_pipo"]


@dataclass
class AttnMeta:
    """Where a packed batch of N query tokens of B sequences goes in the paged cache.

    positions: int64 [N], RoPE positions. slot_mapping: int64 [N], cache slot of each token
    (negative: not written). block_table: int32 [B, P]. kv_lens: int32 [B], each sequence's cache
    length once this batch is written. q_indptr: int32 [B+1], prefix sums of the per-sequence
    query counts; queries are the last q_len of each sequence's kv_len positions.
    tree_mask: bool [N, M] or None (causal); row i, column k: query i sees the k-th query of its
    own sequence.
    """

    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_table: torch.Tensor
    kv_lens: torch.Tensor
    q_indptr: torch.Tensor
    tree_mask: torch.Tensor | None = None


@dataclass
class SamplingTensors:
    """Per-row sampling parameters (docs/ops.md, sample_tokens): temperature f32 [B], top_k i32 [B],
    top_p f32 [B], presence_penalty f32 [B], seen int32 [B, ceil(V/32)] bitmask or None,
    seeds int64 [B], offsets int64 [B]."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    presence_penalty: torch.Tensor
    seen: torch.Tensor | None
    seeds: torch.Tensor
    offsets: torch.Tensor


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(
            x.dtype
        ) * self.weight


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """float32 [head_dim / 2] RoPE frequencies; ``scaling`` (ModelConfig.rope_scaling) applies
    Llama 3.1's rule: wavelengths above original_max / low_freq_factor are stretched by
    ``factor``, those below original_max / high_freq_factor kept, the band between interpolated
    (linear in original_max / wavelength)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if scaling is None:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = ((context / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    # smooth is 0 for long wavelengths (all stretched), 1 for short ones (untouched)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, scaling: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [N, head_dim] for positions int64 [N] (halves repeated, Qwen3 layout)."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling).to(positions.device)
    freqs = positions.float().unsqueeze(1) * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rope_table(
    num_positions: int, head_dim: int, theta: float, device, scaling: dict | None = None
) -> torch.Tensor:
    """float32 [num_positions, head_dim]: row p is [cos(p * inv_freq), sin(p * inv_freq)], the
    cos_sin_cache of qk_norm_rope_append, with the same values rope_cos_sin gives position p
    (``scaling``: the config's rope_scaling, e.g. llama3)."""
    cos, sin = rope_cos_sin(torch.arange(num_positions, device=device), head_dim, theta, scaling)
    half = head_dim // 2
    return torch.cat([cos[:, :half], sin[:, :half]], dim=1).contiguous()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, D] rotated by cos/sin [N, D] (rotate-half convention)."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)).to(x.dtype)


def reference_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMeta
) -> torch.Tensor:
    """paged_attention in plain PyTorch: SDPA over each sequence's keys gathered from the cache."""
    heads, kv_heads, page_size = q.shape[1], k_cache.shape[2], k_cache.shape[1]
    out = torch.empty_like(q)
    indptr, kv_lens = meta.q_indptr.tolist(), meta.kv_lens.tolist()
    for b, kv_len in enumerate(kv_lens):
        start, end = indptr[b], indptr[b + 1]
        if end == start:
            continue
        pos = torch.arange(kv_len, device=q.device)
        slots = meta.block_table[b].long()[pos // page_size] * page_size + pos % page_size
        k = k_cache.flatten(0, 1)[slots].transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
        v = v_cache.flatten(0, 1)[slots].transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
        q_len = end - start
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device)
        if meta.tree_mask is None:
            mask[:, kv_len - q_len :] = torch.ones(q_len, q_len, device=q.device).tril().bool()
        else:
            mask[:, kv_len - q_len :] = meta.tree_mask[start:end, :q_len]
        o = F.scaled_dot_product_attention(q[start:end].transpose(0, 1), k, v, attn_mask=mask)
        out[start:end] = o.transpose(0, 1)
    return out


def fused_weight(owner: nn.Module, name: str, *parts: nn.Linear) -> torch.Tensor:
    """The weights of ``parts`` stacked by rows ([sum of out_features, in_features]), for the
    kernel path's one product in place of several (q/k/v, gate/up).

    Built once, then the parts' weights become views of it (``param.data`` re-pointed: the same
    Parameter objects, so optimizers, load_state_dict and in-place updates keep acting on what
    the fused product reads, and no memory is duplicated). Stored on ``owner`` as a plain
    attribute, outside state_dict. Each eager call checks that the parts still are those views
    (a ``.to()``, a reassigned parameter or ``.data`` breaks that) and rebuilds it if not; a
    compiled step reads it as traced (the check needs data pointers, which tracing has not).
    """
    cached = owner.__dict__.get(name)
    if torch.compiler.is_compiling():
        if cached is not None:
            return cached[0]
        return torch.cat([p.weight for p in parts])
    weights = [p.weight for p in parts]
    if cached is not None and cached[1] == [w.data_ptr() for w in weights]:
        return cached[0]
    with torch.no_grad(), torch.inference_mode(False):  # a normal tensor: training can use it
        fused = torch.cat([w.detach() for w in weights])
        start = 0
        for w in weights:
            w.data = fused[start : start + w.shape[0]]
            start += w.shape[0]
    owner.__dict__[name] = (fused, [w.data_ptr() for w in weights])
    return fused


class Attention(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)
        self.eps = c.rms_norm_eps
        self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps) if c.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps) if c.qk_norm else nn.Identity()

    def forward(self, x, meta: AttnMeta, rope, k_cache, v_cache, use_kernels: bool):
        """x [N, H] -> [N, H]; writes the N tokens' K/V. ``rope``: (cos, sin) [N, D] from
        rope_cos_sin on the plain path, the rope_table [max_pos, D] with kernels."""
        n = x.shape[0]
        if use_kernels:
            # One product for q, k and v; the three are strided views of its rows.
            qkv = ops.linear(
                x=x, weight=fused_weight(self, "_qkv", self.q_proj, self.k_proj, self.v_proj)
            )
            q, k, v = qkv.view(n, -1, self.head_dim).split(
                [self.heads, self.kv_heads, self.kv_heads], dim=1
            )
            qk_norm = isinstance(self.q_norm, RMSNorm)
            ops.qk_norm_rope_append(  # q rotated in place; the rotated k and v go to the cache
                q=q,
                k=k,
                v=v,
                q_norm_weight=self.q_norm.weight if qk_norm else None,
                k_norm_weight=self.k_norm.weight if qk_norm else None,
                cos_sin_cache=rope,
                positions=meta.positions,
                k_cache=k_cache,
                v_cache=v_cache,
                slot_mapping=meta.slot_mapping,
                eps=self.eps,
            )
            o = ops.paged_attention(
                q=q,
                k_cache=k_cache,
                v_cache=v_cache,
                block_table=meta.block_table,
                kv_lens=meta.kv_lens,
                q_indptr=meta.q_indptr,
                tree_mask=meta.tree_mask,
            )
            return ops.linear(x=o.reshape(n, self.heads * self.head_dim), weight=self.o_proj.weight)
        q = self.q_proj(x).view(n, self.heads, self.head_dim)
        k = self.k_proj(x).view(n, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.kv_heads, self.head_dim)
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        keep = meta.slot_mapping >= 0
        k_cache.flatten(0, 1)[meta.slot_mapping[keep]] = k[keep]
        v_cache.flatten(0, 1)[meta.slot_mapping[keep]] = v[keep]
        o = reference_attention(q, k_cache, v_cache, meta)
        return self.o_proj(o.reshape(n, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x, use_kernels: bool = False):
        """x [N, H] -> [N, H]; with kernels, gate and up in one product (its SwiGLU fused)."""
        if use_kernels:
            gate_up = fused_weight(self, "_gate_up", self.gate_proj, self.up_proj)
            a = ops.linear(x=x, weight=gate_up, activation="swiglu")
            return ops.linear(x=a, weight=self.down_proj.weight)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, meta, rope, k_cache, v_cache, use_kernels):
        """x [N, H] -> [N, H] (``rope`` as in Attention.forward)."""
        if use_kernels:  # a stream of its own; the model's stacks chain forward_fused instead
            residual = torch.zeros_like(x)
            delta = self.forward_fused(x.clone(), residual, meta, rope, k_cache, v_cache)
            return residual + delta
        x = x + self.self_attn(self.input_layernorm(x), meta, rope, k_cache, v_cache, use_kernels)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_fused(self, delta, residual, meta, rope_table, k_cache, v_cache):
        """The kernel path, one layer later in the residual stream than ``forward``: adds delta
        [N, H] (the previous layer's MLP output; overwritten) into residual [N, H] (updated in
        place), and returns this layer's MLP output, which the next fused_add_rmsnorm adds."""
        norm = self.input_layernorm
        ops.fused_add_rmsnorm(x=delta, residual=residual, weight=norm.weight, eps=norm.eps)
        a = self.self_attn(delta, meta, rope_table, k_cache, v_cache, True)
        norm = self.post_attention_layernorm
        ops.fused_add_rmsnorm(x=a, residual=residual, weight=norm.weight, eps=norm.eps)
        return self.mlp(a, use_kernels=True)


def run_fused(layers, x, final_norm: RMSNorm, meta, rope_table, k_caches, v_caches):
    """Decoder layers then the final norm on the kernel path: x [N, H] (overwritten) -> [N, H].

    The residual stream starts at zero, so the first fused_add_rmsnorm adds x into it exactly
    (0 + x) and needs no separate first norm; the last one adds the final MLP output and applies
    the final norm."""
    residual = torch.zeros_like(x)
    for layer, k_cache, v_cache in zip(layers, k_caches, v_caches, strict=True):
        x = layer.forward_fused(x, residual, meta, rope_table, k_cache, v_cache)
    ops.fused_add_rmsnorm(x=x, residual=residual, weight=final_norm.weight, eps=final_norm.eps)
    return x


class _Decoder(nn.Module):
    """Embedding, decoder stack, final norm and (tied or own) LM head, shared by both models."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = (
            None if c.tie_word_embeddings else nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        )

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """[V, H]: the tied embedding, or the LM head's own weight."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    @property
    def num_cache_layers(self) -> int:
        return self.config.num_layers

    def new_cache(self, num_pages: int, page_size: int, dtype=None, device=None) -> PagedKVCache:
        w = self.embed_tokens.weight
        return PagedKVCache(
            self.num_cache_layers,
            num_pages,
            page_size,
            self.config.num_kv_heads,
            self.config.head_dim,
            dtype=dtype or w.dtype,
            device=device or w.device,
        )

    def init_random(self, seed: int = 0, std: float = 0.02) -> None:
        """Random weights (normal(0, std) matrices, unit norms) for presets without a checkpoint."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    def rope(self, meta: AttnMeta, cache: PagedKVCache, use_kernels: bool):
        """The layers' ``rope`` argument: (cos, sin) of meta's positions on the plain path; with
        kernels the cos/sin table over every position the cache can hold (built on first use and
        when a larger cache or another device needs it, so decode steps only index it)."""
        c = self.config
        if not use_kernels:
            return rope_cos_sin(meta.positions, c.head_dim, c.rope_theta, c.rope_scaling)
        rows, device = cache.num_pages * cache.page_size, meta.positions.device
        table = getattr(self, "_rope_table", None)
        # A larger table serves smaller caches too, so models shared by caches of different
        # sizes do not rebuild it back and forth.
        if table is None or table.device != device or table.shape[0] < rows:
            self._rope_table = rope_table(rows, c.head_dim, c.rope_theta, device, c.rope_scaling)
        return self._rope_table

    def run_layers(self, x, meta: AttnMeta, cache: PagedKVCache, use_kernels: bool):
        """The decoder stack and final norm over packed inputs x [N, H] -> [N, H] (with kernels,
        x is overwritten)."""
        rope = self.rope(meta, cache, use_kernels)
        if use_kernels:
            n = len(self.layers)  # a PIPO cache holds the MTP layer's K/V after these
            kv = cache.k_caches[:n], cache.v_caches[:n]
            return run_fused(self.layers, x, self.norm, meta, rope, *kv)
        for i, layer in enumerate(self.layers):
            x = layer(x, meta, rope, cache.k_caches[i], cache.v_caches[i], use_kernels)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 [N, V] logits of final hidden states [N, H]."""
        return hidden.float() @ self.lm_head_weight.float().t()

    def _sample_tokens(self, hidden, st: SamplingTensors, k: int, use_kernels: bool):
        """``sample_tokens`` over the LM head with st's parameters (the reference path its
        pure-PyTorch backend): (tokens, token_logprob, cand_ids, cand_logprobs)."""
        return ops.sample_tokens(
            hidden=hidden,
            lm_head=self.lm_head_weight,
            temperature=st.temperature,
            top_k=st.top_k,
            top_p=st.top_p,
            presence_penalty=st.presence_penalty,
            seen=st.seen,
            seeds=st.seeds,
            offsets=st.offsets,
            num_candidates=k,
            backend=None if use_kernels else "torch",
        )

    def sample(self, hidden, st: SamplingTensors, use_kernels: bool, num_candidates: int = 0):
        """Next tokens of hidden states [B, H]: (tokens int64 [B], cand_ids int64 [B, k]) where
        cand_ids are the k most likely ids after the presence penalty (for draft trees). Both
        paths run ``sample_tokens`` (the reference path its pure-PyTorch backend), so they draw
        the same tokens for the same seeds and offsets."""
        tokens, _, cand_ids, _ = self._sample_tokens(hidden, st, num_candidates, use_kernels)
        return tokens, cand_ids

    def candidates(self, hidden, st: SamplingTensors, k: int, use_kernels: bool):
        """The k most likely next ids of hidden states [B, H] after the presence penalty, best
        first: (ids int64 [B, k], their log_softmax at the row's temperature (1 for greedy
        rows) float32 [B, k]), as ``sample_tokens`` gives them (draft trees rank by these)."""
        _, _, ids, logprobs = self._sample_tokens(hidden, st, k, use_kernels)
        return ids, logprobs

    def probs(self, hidden, st: SamplingTensors) -> torch.Tensor:
        """float32 [B, V]: the distribution ``sample`` draws each row from (penalty, temperature,
        top-k, top-p; the one-hot of the argmax for greedy rows)."""
        seen = None if st.seen is None else unpack_bitmask(st.seen, self.config.vocab_size)
        logits = penalized_logits(self.logits(hidden), st.presence_penalty, seen)
        return filtered_probs(logits, st.temperature, st.top_k, st.top_p)


class ARModel(_Decoder):
    """A Qwen3-style decoder: RMSNorm, RoPE, GQA attention with q/k norms, SwiGLU, LM head.

    Example (one sequence of 3 tokens; the engine builds AttnMeta for real batches)::

        model = ARModel(preset("tiny")); model.init_random()
        cache = model.new_cache(num_pages=4, page_size=16)
        cache.reserve(0, 3)
        meta = AttnMeta(
            positions=torch.arange(3),
            slot_mapping=torch.tensor(cache.slots(0, 0, 3)),
            block_table=cache.block_table([0]),
            kv_lens=torch.tensor([3], dtype=torch.int32),
            q_indptr=torch.tensor([0, 3], dtype=torch.int32),
        )
        hidden = model(torch.tensor([257, 72, 105]), meta, cache)   # [3, 256]
        logits = model.logits(hidden)                                # float32 [3, 259]
    """

    def forward(self, input_ids, meta: AttnMeta, cache: PagedKVCache, use_kernels: bool = False):
        """input_ids int64 [N] -> final hidden states [N, H]; writes the N tokens' K/V."""
        return self.run_layers(self.embed_tokens(input_ids), meta, cache, use_kernels)


class Compressor(nn.Module):
    """Group-in: folds k = ``fold`` token embeddings [e_1; …; e_k] (kH) into one backbone input (H)."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        h, k = c.hidden_size, c.fold
        self.kind, self.hidden, self.fold = c.compressor, h, k
        if self.kind == "linear":
            self.proj = nn.Linear(k * h, h)
        else:
            self.fc1 = nn.Linear(k * h, 2 * h)
            self.fc2 = nn.Linear(2 * h, h)

    @torch.no_grad()
    def init_sum(self) -> None:
        """Make C([e_1; …; e_k]) = e_1 + … + e_k exactly (docs/method.md, the fold). For the MLP,
        fc1 computes (s, -s) with s the sum and fc2 takes silu(s) - silu(-s), which equals s."""
        eye = torch.eye(self.hidden)
        plus = torch.cat([eye] * self.fold, 1)  # [H, kH]: the sum of the k blocks
        if self.kind == "linear":
            self.proj.weight.copy_(plus)
            self.proj.bias.zero_()
        else:
            self.fc1.weight.copy_(torch.cat([plus, -plus], 0))
            self.fc1.bias.zero_()
            self.fc2.weight.copy_(torch.cat([eye, -eye], 1))
            self.fc2.bias.zero_()

    def forward(self, group_ids, embedding: torch.Tensor, use_kernels: bool):
        """group_ids int64 [N, k], embedding [V, H] -> [N, H]."""
        first = self.proj if self.kind == "linear" else self.fc1
        activation = "none" if self.kind == "linear" else "silu"
        if use_kernels:
            x = ops.fold_pairs(
                pair_ids=group_ids,
                embedding=embedding,
                weight=first.weight,
                bias=first.bias,
                activation=activation,
            )
        else:
            x = first(F.embedding(group_ids, embedding).flatten(1))
            x = F.silu(x) if activation == "silu" else x
        return x if self.kind == "linear" else self.fc2(x)


class MTPHead(nn.Module):
    """Pair-out: predicts the second token of a pair from the first one and the backbone state."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        h = c.hidden_size
        self.eps = c.rms_norm_eps
        self.embed_norm = RMSNorm(h, c.rms_norm_eps)
        self.hidden_norm = RMSNorm(h, c.rms_norm_eps)
        self.fc = nn.Linear(2 * h, h, bias=False)  # input: [embedding half; hidden half]
        self.layer = DecoderLayer(c)
        self.norm = RMSNorm(h, c.rms_norm_eps)

    def forward(self, token_ids, hidden, embedding, meta, rope, k_cache, v_cache, use_kernels):
        """token_ids int64 [N] (token1), hidden [N, H] (backbone) -> MTP hidden states [N, H]."""
        if use_kernels:
            x = ops.unfold_input(
                token_ids=token_ids,
                hidden=hidden,
                embedding=embedding,
                embed_norm_weight=self.embed_norm.weight,
                hidden_norm_weight=self.hidden_norm.weight,
                weight=self.fc.weight,
                eps=self.eps,
            )
            return run_fused([self.layer], x, self.norm, meta, rope, [k_cache], [v_cache])
        e = self.embed_norm(F.embedding(token_ids, embedding))
        x = self.fc(torch.cat([e, self.hidden_norm(hidden)], dim=-1))
        return self.norm(self.layer(x, meta, rope, k_cache, v_cache, use_kernels))


class ConfidenceHead(nn.Module):
    """c = sigmoid(w2 · silu(W1 rmsnorm([h; m]))): how likely token2 is right."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        h = c.hidden_size
        self.norm = RMSNorm(2 * h, c.rms_norm_eps)
        self.fc1 = nn.Linear(2 * h, h, bias=False)
        self.fc2 = nn.Linear(h, 1, bias=False)

    def forward(self, hidden, mtp_hidden):
        """[N, H], [N, H] -> float32 [N]."""
        x = self.norm(torch.cat([hidden, mtp_hidden], dim=-1))
        return torch.sigmoid(self.fc2(F.silu(self.fc1(x))).float()).squeeze(-1)


class PIPOModel(_Decoder):
    """The backbone run on group latents (k = ``config.fold`` tokens each; pairs for k = 2), plus
    compressor, MTP head and confidence head.

    The MTP head runs as a chain of k - 1 steps per group (one layer, shared weights). Its KV cache
    has ``num_layers + k - 1`` layers: the backbone's, then one per MTP step (step j's attention
    sees the step-j entries of earlier groups, as a DeepSeek-V3 MTP module of depth j sees its own
    depth). Every layer is indexed by group position, so one block table serves all of them.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.compressor = Compressor(config)
        self.mtp = MTPHead(config)
        self.confidence = ConfidenceHead(config)

    @property
    def num_cache_layers(self) -> int:
        return self.config.num_layers + self.config.fold - 1

    def init_random(self, seed: int = 0, std: float = 0.02) -> None:
        super().init_random(seed, std)
        self.init_heads()

    @torch.no_grad()
    def init_heads(self) -> None:
        """The documented initialisation of the PIPO parts on a given backbone: compressor = sum of
        the two embeddings; MTP fc = [I | I] (sum of the normed embedding and hidden state), MTP
        layer and norm copied from the backbone's last layer and final norm; confidence fc1 small
        random, fc2 zero (c = 0.5 everywhere until trained)."""
        self.compressor.init_sum()
        h = self.config.hidden_size
        eye = torch.eye(h, dtype=self.mtp.fc.weight.dtype)
        self.mtp.fc.weight.copy_(torch.cat([eye, eye], 1))
        self.mtp.embed_norm.weight.fill_(1.0)
        self.mtp.hidden_norm.weight.fill_(1.0)
        self.mtp.layer.load_state_dict(self.layers[-1].state_dict())
        self.mtp.norm.load_state_dict(self.norm.state_dict())
        g = torch.Generator().manual_seed(0)
        self.confidence.norm.weight.fill_(1.0)
        self.confidence.fc1.weight.copy_(
            torch.randn(self.confidence.fc1.weight.shape, generator=g) * 0.02
        )
        self.confidence.fc2.weight.zero_()

    @classmethod
    def from_backbone(cls, ar: ARModel, fold: int | None = None) -> PIPOModel:
        """A PIPO model on ``ar``'s weights, with the heads at their documented initialisation
        (``fold``: tokens per group, default the AR config's)."""
        w = ar.embed_tokens.weight
        config = ar.config if fold is None else ar.config.replace(fold=fold)
        with torch.device("meta"):  # every parameter is written below: no host-side init
            model = cls(config)
        model = model.to(dtype=w.dtype).to_empty(device=w.device)
        model.load_state_dict(ar.state_dict(), strict=False)  # the PIPO parts stay missing
        model.init_heads()
        return model

    def forward(self, group_ids, meta: AttnMeta, cache: PagedKVCache, use_kernels: bool = False):
        """group_ids int64 [N, k] -> backbone hidden states [N, H] (h_i; predicts token1)."""
        x = self.compressor(group_ids, self.embed_tokens.weight, use_kernels)
        return self.run_layers(x, meta, cache, use_kernels)

    def mtp_forward(
        self, token, hidden, meta: AttnMeta, cache: PagedKVCache, use_kernels=False, step: int = 1
    ):
        """MTP chain step ``step`` (1 … k-1): token int64 [N] (token ``step`` of the group being
        proposed; token1 for step 1) and the previous state [N, H] (the backbone's hidden state for
        step 1, the MTP state of step - 1 after) -> MTP states [N, H] (predict token step + 1);
        writes step ``step``'s K/V (cache layer num_layers + step - 1) at meta's slots."""
        if not 1 <= step < self.config.fold:
            raise ValueError(f"step: expected 1 … {self.config.fold - 1}, got {step}")
        rope = self.rope(meta, cache, use_kernels)
        layer = self.config.num_layers + step - 1
        return self.mtp(
            token,
            hidden,
            self.embed_tokens.weight,
            meta,
            rope,
            cache.k_caches[layer],
            cache.v_caches[layer],
            use_kernels,
        )

    def gate(self, hidden, mtp_hidden, token1, token2, threshold: float, use_kernels: bool):
        """Confidence and gate: (pairs int64 [B, 2], confidence float32 [B]); token2 becomes PAD
        unless threshold < 0 or (threshold < 1 and confidence >= threshold)."""
        c = self.config
        if use_kernels:
            return ops.pair_out(
                hidden=hidden,
                mtp_hidden=mtp_hidden,
                token1=token1,
                token2=token2,
                norm_weight=self.confidence.norm.weight,
                fc1_weight=self.confidence.fc1.weight,
                fc2_weight=self.confidence.fc2.weight,
                threshold=float(threshold),
                pad_id=c.pad_id,
                eps=c.rms_norm_eps,
            )
        confidence = self.confidence(hidden, mtp_hidden)
        if threshold < 0 or threshold >= 1:
            keep = torch.full_like(confidence, threshold < 0, dtype=torch.bool)
        else:
            keep = confidence >= threshold
        second = torch.where(keep, token2, torch.full_like(token2, c.pad_id))
        return torch.stack([token1, second], 1), confidence

    def commit(self, hidden, mtp_hidden, tokens, threshold: float, use_kernels: bool):
        """The gate of a group: hidden [B, H] (backbone), mtp_hidden [B, J, H] (MTP step j's state
        in column j - 1), tokens int64 [B, 1 + J] (token1 and the J proposals) -> (groups int64
        [B, 1 + J], confidence float32 [B, J]). Confidence j is the head on [hidden; mtp_hidden[:,
        j]]; the group keeps the longest prefix of proposals whose confidences all pass (θ < 0:
        all, θ >= 1: none, else c >= θ) and PAD after it. J = 1 is ``gate`` (pair_out)."""
        j = mtp_hidden.shape[1]
        if j == 1:  # the pairs' op, as PIPO-2 always ran
            pairs, conf = self.gate(
                hidden,
                mtp_hidden[:, 0],
                tokens[:, 0].contiguous(),
                tokens[:, 1].contiguous(),
                threshold,
                use_kernels,
            )
            return pairs, conf.unsqueeze(1)
        c = self.config
        if use_kernels:
            return ops.group_out(
                hidden=hidden,
                mtp_hidden=mtp_hidden,
                tokens=tokens,
                norm_weight=self.confidence.norm.weight,
                fc1_weight=self.confidence.fc1.weight,
                fc2_weight=self.confidence.fc2.weight,
                threshold=float(threshold),
                pad_id=c.pad_id,
                eps=c.rms_norm_eps,
            )
        confidence = self.confidence(hidden.unsqueeze(1).expand_as(mtp_hidden), mtp_hidden)
        if threshold < 0 or threshold >= 1:
            keep = torch.full_like(confidence, threshold < 0, dtype=torch.bool)
        else:
            keep = confidence >= threshold
        prefix = keep.int().cumprod(1).bool()  # a failed step rejects every later one
        rest = torch.where(prefix, tokens[:, 1:], torch.full_like(tokens[:, 1:], c.pad_id))
        return torch.cat([tokens[:, :1], rest], 1), confidence


# ---------------------------------------------------------------------------- dense forward
# Training and evaluation run the models without a KV cache (pipo.train, benchmarks.report_model).


def _dense_layer(layer: DecoderLayer, x: torch.Tensor, rope) -> torch.Tensor:
    """One decoder layer over x [B, T, H] with causal attention (no cache)."""
    attn = layer.self_attn
    b, t, _ = x.shape
    h = layer.input_layernorm(x)
    q = attn.q_norm(attn.q_proj(h).view(b, t, attn.heads, attn.head_dim))
    k = attn.k_norm(attn.k_proj(h).view(b, t, attn.kv_heads, attn.head_dim))
    v = attn.v_proj(h).view(b, t, attn.kv_heads, attn.head_dim)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    rep = attn.heads // attn.kv_heads
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    )
    x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, attn.heads * attn.head_dim))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def dense_hidden(model: ARModel | PIPOModel, x: torch.Tensor) -> torch.Tensor:
    """The decoder stack and final norm over inputs x [B, T, H] -> [B, T, H] (positions 0…T-1)."""
    c = model.config
    positions = torch.arange(x.shape[1], device=x.device)
    rope = rope_cos_sin(positions, c.head_dim, c.rope_theta, c.rope_scaling)
    for layer in model.layers:
        x = _dense_layer(layer, x, rope)
    return model.norm(x)


def dense_pipo(model: PIPOModel, tokens: torch.Tensor, mtp_tokens: torch.Tensor):
    """PIPO forward of token rows int64 [B, T] (T a multiple of k = ``config.fold``) read as groups.

    mtp_tokens int64 [B, L, J] (J <= k - 1, L = T / k): the token fed to MTP chain step j at each
    group position (column j - 1; token1 of the next group for step 1). Returns (h [B, L, H],
    m [B, L, J, H], confidence float32 [B, L, J]). mtp_tokens [B, L] is the pairs' layout (J = 1):
    then m is [B, L, H] and confidence [B, L].
    """
    pairs = mtp_tokens.dim() == 2
    if pairs:
        mtp_tokens = mtp_tokens.unsqueeze(-1)
    b, t = tokens.shape
    c = model.config
    k = c.fold
    if t % k or mtp_tokens.shape[-1] >= k:
        raise ValueError(
            f"tokens, mtp_tokens: expected T a multiple of {k} and at most {k - 1} MTP steps, "
            f"got T = {t}, {mtp_tokens.shape[-1]}"
        )
    emb = model.embed_tokens.weight
    x = model.compressor(tokens.reshape(-1, k), emb, use_kernels=False).view(b, t // k, -1)
    h = dense_hidden(model, x)
    mtp = model.mtp
    rope = rope_cos_sin(
        torch.arange(t // k, device=tokens.device), c.head_dim, c.rope_theta, c.rope_scaling
    )
    state, states = h, []
    for j in range(mtp_tokens.shape[-1]):  # the chain: step j + 1 reads step j's state
        e = mtp.embed_norm(F.embedding(mtp_tokens[..., j], emb))
        x = mtp.fc(torch.cat([e, mtp.hidden_norm(state)], -1))
        state = mtp.norm(_dense_layer(mtp.layer, x, rope))
        states.append(state)
    m = torch.stack(states, 2)
    conf = model.confidence(h.unsqueeze(2).expand_as(m), m)
    return (h, m[:, :, 0], conf[:, :, 0]) if pairs else (h, m, conf)
