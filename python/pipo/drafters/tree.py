"""Tree shapes every model drafter shares: ``chain``, ``topk`` and ``dynamic`` (EAGLE-2).

A model drafter gives ``grow`` the hidden state whose LM-head distribution the root's children
come from, and an ``expand`` callback that runs the drafter on a level of nodes and returns
their hidden states; ``grow`` picks the children (top candidates for greedy rows, independent
draws for sampled rows), calls ``expand`` level by level and returns the ``DraftTree``. Every
shape is static: the node count, depth, expansions and draws per round depend on the options
only, so a drafter built on ``grow`` can be captured in a CUDA graph.

Shapes (n = draft_tokens, k = topk):

- ``chain``: n nodes, one child each; depth n; expands n - 1 nodes (F = 1 per level).
- ``topk``: the root has k children; at each further level the first child of the previous level
  (the most likely one for greedy rows) has k children, the last level fewer so that the tree has
  n draft nodes; depth ceil(n / k); expands one node per level.
- ``dynamic`` (EAGLE-2): level 1 is the root's k children; at each further level the k nodes of
  the previous level with the best path score (sum of draft log-probabilities) are expanded into
  k children each, up to ``depth`` levels; the tree keeps the n best of all candidates (parents
  always before children). For sampled rows the kept set must stay independent draws, so the
  ranking there is by the *parent's* path score, siblings in draw order (a node's own value
  never removes it in favour of a sibling); expansion decisions may use a node's own score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..model import SamplingTensors
from .base import DraftOptions, DraftTree

__all__ = ["Level", "TreeShape", "ancestor_mask", "grow", "sample_children"]


@dataclass(frozen=True)
class TreeShape:
    """The static numbers of a tree shape (see the module docstring). num_nodes: nodes with the
    root; max_depth; expansions: nodes ``expand`` is called on per round; draws: random draws per
    row and round (sampled rows); levels: (expanded nodes, children each) per level, level 1
    first (level 1 expands the root)."""

    kind: str
    num_nodes: int
    max_depth: int
    topk: int
    levels: tuple[tuple[int, int], ...]

    @property
    def expansions(self) -> int:
        return sum(f for f, _ in self.levels[1:])

    @property
    def draws(self) -> int:
        return sum(f * c for f, c in self.levels)

    @classmethod
    def of(cls, opts: DraftOptions) -> TreeShape:
        n, k = opts.draft_tokens, opts.topk
        if opts.tree == "chain":
            return cls("chain", n + 1, n, 1, ((1, 1),) * n)
        if opts.tree == "topk":
            levels, left = [], n
            while left > 0:
                levels.append((1, min(k, left)))
                left -= k
            return cls("topk", n + 1, len(levels), k, tuple(levels))
        depth = opts.depth or n
        levels = ((1, k),) + ((k, k),) * (depth - 1)
        candidates = sum(f * c for f, c in levels)
        if n > candidates:
            raise ValueError(
                f"draft_tokens: the dynamic tree of topk {k} and depth {depth} has only "
                f"{candidates} candidates, fewer than {n}"
            )
        return cls("dynamic", n + 1, depth, k, levels)


@dataclass
class Level:
    """Nodes whose children are wanted: tokens int64 [B, F] at depth ``depth`` (>= 1);
    ``first``: their expansion index (they are expanded nodes first … first + F - 1 of this
    round); parents int64 [B, F]: each one's parent's expansion index, -1 = the root; mask bool
    [B, F, first + F]: expanded node j is the node itself or one of its ancestors (the root is
    not an expanded node: it is the drafter's committed state)."""

    tokens: torch.Tensor
    depth: int
    first: int
    parents: torch.Tensor
    mask: torch.Tensor


def ancestor_mask(parents: torch.Tensor, max_depth: int) -> torch.Tensor:
    """bool [B, N, N]: [b, i, j] = node j is node i or an ancestor of it, from parents int64
    [B, N] (-1 at the root): max_depth gathers, no sync."""
    b, n = parents.shape
    mask = torch.eye(n, dtype=torch.bool, device=parents.device).expand(b, n, n).contiguous()
    idx = torch.arange(n, device=parents.device).expand(b, n)
    for _ in range(max_depth):
        idx = parents.gather(1, idx).clamp(min=0)  # the root's "parent" is the root
        mask.scatter_(2, idx.unsqueeze(2), True)
    return mask


def sample_children(
    head, hidden, st: SamplingTensors, count: int, draw: int, use_kernels: bool, need_probs: bool
):
    """``count`` children for each row of hidden [R, H] (row r uses st's row r): the top
    ``count`` candidates for greedy rows, independent draws (offsets st.offsets + draw + j) for
    sampled rows. Returns tokens int64 [R, count], log-probabilities float32 [R, count] (the
    candidates' for greedy rows, log q of each draw otherwise) and q float32 [R, V] (the
    distribution the draws came from; the one-hot of the best candidate for greedy rows) or
    None when not need_probs (then every row must be greedy)."""
    cand, cand_lp = head.candidates(hidden, st, count, use_kernels)
    if not need_probs:
        return cand, cand_lp, None
    q = head.probs(hidden, st)
    r = hidden.shape[0]
    rep = SamplingTensors(
        **{
            **{k: v.repeat_interleave(count, 0) for k, v in st.__dict__.items() if v is not None},
            "seen": None,
        }
    )
    j = torch.arange(count, device=hidden.device).repeat(r)
    rep = replace(rep, offsets=rep.offsets + draw + j)
    draws, _ = head.sample(hidden.repeat_interleave(count, 0), rep, use_kernels)
    draws = draws.view(r, count)
    greedy = (st.temperature <= 0).unsqueeze(1)
    tokens = torch.where(greedy, cand, draws)
    lp = torch.where(greedy, cand_lp, q.gather(1, draws).clamp(min=1e-30).log())
    return tokens, lp, q


def grow(
    shape: TreeShape,
    root: torch.Tensor,
    root_hidden: torch.Tensor,
    expand: Callable[[Level], torch.Tensor],
    head,
    st: SamplingTensors,
    use_kernels: bool,
    need_probs: bool,
) -> DraftTree:
    """The draft tree of B rows. root int64 [B] (the root tokens); root_hidden [B, H] (its
    children's distribution is head's LM head on it); expand(level) -> [B, F, H] hidden states
    of the level's nodes; head: an ARModel-like object with ``candidates``, ``sample`` and
    ``probs`` (usually the verifier: the drafter shares its LM head); st: the rows' sampling
    tensors without penalty, offsets = the round's first drafter offset (view.offsets + 1)."""
    b, dev = root.shape[0], root.device
    cand_tokens, cand_lp, cand_parent, cand_depth = [], [], [], []
    q_of_exp = []  # per expansion level: q [B, F, V] of its expanded nodes
    exp_cand = []  # per level: candidate index [B, F] of each expanded node
    exp_mask = torch.zeros(b, 0, 0, dtype=torch.bool, device=dev)
    draw, n_cand, n_exp = 0, 0, 0
    hidden, parent_cand, level_score = root_hidden.unsqueeze(1), None, torch.zeros(b, 1, device=dev)
    for depth, (f, c) in enumerate(shape.levels, start=1):
        flat = hidden.reshape(b * f, -1)
        rows = SamplingTensors(
            **{
                k: (None if v is None else v.repeat_interleave(f, 0))
                for k, v in st.__dict__.items()
            }
        )
        toks, lp, q = sample_children(head, flat, rows, c, draw, use_kernels, need_probs)
        draw += f * c
        toks, lp = toks.view(b, f * c), lp.view(b, f, c)
        if q is not None:
            q_of_exp.append(q.view(b, f, -1))
        par = (
            torch.full((b, f), -1, dtype=torch.int64, device=dev)
            if parent_cand is None
            else parent_cand
        )
        cand_tokens.append(toks)
        cand_parent.append(par.repeat_interleave(c, 1))
        cand_depth.append(depth)
        own = (level_score.unsqueeze(2) + lp).view(b, f * c)
        cand_lp.append((own, level_score.repeat_interleave(c, 1)))
        first_cand = n_cand
        n_cand += f * c
        if depth == len(shape.levels):
            break
        nf = shape.levels[depth][0]
        # Which of this level's candidates are expanded next: the first for chain / topk (the
        # best for greedy rows), the nf best by path score for dynamic.
        if shape.kind == "dynamic":
            pick = torch.sort(-own, dim=1, stable=True).indices[:, :nf]
        else:
            pick = torch.zeros(b, nf, dtype=torch.int64, device=dev)
        tokens_next = toks.gather(1, pick)
        level_score = own.gather(1, pick)
        # the picked nodes' parents among expanded nodes: the expanded node they hang off
        par_exp = (
            torch.full((b, nf), -1, dtype=torch.int64, device=dev)
            if depth == 1
            else torch.div(pick, c, rounding_mode="floor") + (n_exp - f)
        )
        e = n_exp + nf
        mask = torch.zeros(b, e, e, dtype=torch.bool, device=dev)
        mask[:, :n_exp, :n_exp] = exp_mask
        new_rows = torch.zeros(b, nf, e, dtype=torch.bool, device=dev)
        if depth > 1:
            new_rows[:, :, :n_exp] = exp_mask.gather(
                1, par_exp.clamp(min=0).unsqueeze(2).expand(b, nf, n_exp)
            )
        new_rows[:, :, n_exp:] = torch.eye(nf, dtype=torch.bool, device=dev)
        mask[:, n_exp:] = new_rows
        exp_mask = mask
        exp_cand.append(pick + first_cand)
        level = Level(tokens_next, depth, n_exp, par_exp, new_rows)
        n_exp = e
        hidden = expand(level)
        parent_cand = pick + first_cand
    greedy = st.temperature <= 0
    return _assemble(
        shape, root, cand_tokens, cand_parent, cand_depth, cand_lp, exp_cand, q_of_exp, greedy
    )


def _assemble(
    shape, root, cand_tokens, cand_parent, cand_depth, cand_lp, exp_cand, q_of_exp, greedy
):
    """The DraftTree from the candidates (numbered level by level: parents before children)."""
    b, dev = root.shape[0], root.device
    tokens = torch.cat(cand_tokens, 1)  # [B, M]
    parent = torch.cat(cand_parent, 1)  # candidate index of the parent, -1 = the root
    depth = torch.cat(
        [torch.full_like(t, d) for t, d in zip(cand_tokens, cand_depth, strict=True)], 1
    )
    m, n = tokens.shape[1], shape.num_nodes - 1
    if shape.kind == "dynamic":
        own = torch.cat([x for x, _ in cand_lp], 1)
        by_parent = torch.cat([x for _, x in cand_lp], 1)
        key = torch.where(greedy.unsqueeze(1), own, by_parent)
        # stable: ties go to lower candidate indices, so a parent is kept before its children
        sel = torch.sort(-key, dim=1, stable=True).indices[:, :n]
        sel = torch.sort(sel, dim=1).values
    else:
        sel = torch.arange(n, device=dev).expand(b, n)
    node_of = torch.full((b, m), -1, dtype=torch.int64, device=dev)
    node_of.scatter_(1, sel, torch.arange(1, n + 1, device=dev).expand(b, n))
    par_c = parent.gather(1, sel)
    parents = torch.where(par_c < 0, 0, node_of.gather(1, par_c.clamp(min=0)))
    zero = torch.zeros(b, 1, dtype=torch.int64, device=dev)
    tree = DraftTree(
        tokens=torch.cat([root.unsqueeze(1), tokens.gather(1, sel)], 1),
        parents=torch.cat([zero - 1, parents], 1),
        depths=torch.cat([zero, depth.gather(1, sel)], 1),
        max_depth=shape.max_depth,
    )
    if q_of_exp:
        v = q_of_exp[0].shape[2]
        probs = torch.zeros(b, n + 1, v, device=dev)
        probs[:, :, 0] = 1.0  # leaves: any distribution (never read)
        probs[:, 0] = q_of_exp[0][:, 0]
        for cand, q in zip(exp_cand, q_of_exp[1:], strict=True):
            node = node_of.gather(1, cand)  # [B, F]: node of each expanded candidate, -1: dropped
            idx = node.clamp(min=0).unsqueeze(2).expand(-1, -1, v)
            probs.scatter_(1, idx, torch.where((node >= 0).unsqueeze(2), q, probs.gather(1, idx)))
        tree.draft_probs = probs
    return tree
