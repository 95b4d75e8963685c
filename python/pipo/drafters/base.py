"""The ``Drafter`` interface of spec mode, and the data it exchanges with the verifier side.

Spec mode (``pipo.modes.spec``) runs rounds over the engine's device-resident ``BatchState``:
each running request has a row r with its *root* token (the last committed token, not yet in the
verifier's cache) in ``view.tokens[r, 0]`` and the root's cache position in ``view.pos[r]`` (=
committed tokens - 1). One round:

1. ``prepare(seqs, live)`` on the host (may copy host data to the device; never reads the device).
2. ``tree = propose(view, need_probs)``: a token tree per row, rooted at the root token.
3. The verifier (the AR model) scores the tree in one pass (paged attention with the tree mask),
   ``verify_tree`` / ``verify_tree_stochastic`` accept a path, ``kv_cache_compact`` moves the
   accepted nodes' K/V to consecutive positions.
4. ``accept(view, acc)``: the drafter updates its own state from the accepted path and the
   verifier's hidden states at the path's nodes (``view.pos`` is still the root's position).
5. The mode advances the row (root := bonus token, pos += accepted + 1) and writes the emitted
   tokens; the engine then reads them in the round's only device-to-host transfer.

Steps 2 to 5 are one function of device tensors (``SpecMode.step``): with a ``capturable``
drafter it is what CUDA graphs capture (steps 2 and 4 then must not touch the host: no reads, no
host-built tensors, no data-dependent shapes).

Caches. The verifier's paged cache is the engine's main cache (``view.table`` is its block table,
a token per entry at position p). A drafter can own KV in two ways:

- ``kv_layers = n``: n extra layers appended to the verifier's cache (``shared_layers`` holds
  their indices, same kv heads and head dim as the verifier), sharing its pages, block table and
  slots: the drafter's entry for position p is at the slot the verifier uses for p. The engine
  reserves ``pos + scratch_entries()`` entries before each round (at least the tree's nodes), so
  a drafter may write tentative entries at positions pos ... pos + scratch_entries() - 1 during
  ``propose`` and must leave every position below the new ``pos`` consistent after ``accept``.
  Nothing to free: the pages go with the verifier's. This is the cheap path (MTP / EAGLE).
- ``caches()``: caches of its own (e.g. the PIPO drafter's pair cache); the engine reserves what
  ``prefill_need`` / ``round_need`` ask for before prefill / before each round and releases every
  page of a request when it retires, fails or the run ends. Their block tables are the
  drafter's business (``cache.pages(seq.rid)``).

Randomness: a round of row r uses the random-stream offsets ``view.offsets[r] + j`` for
j = 0 … ``1 + draws - 1``: j = 0 is the verifier's (verify_tree_stochastic), j >= 1 the
drafter's draws (``sample_children`` uses them); the mode advances offsets by ``1 + draws``.

Stochastic verification keeps the AR distribution exactly when the children of every node were
drawn independently (with replacement) from ``draft_probs`` of that node. A deterministic drafter
(n-gram) gives one-hot rows and must give each node at most one child in a stochastic row.

How a feature-based drafter (EAGLE / MTP: one layer on [embedding of token t+1; verifier
hidden at t]) maps onto the hooks, capturable, with ``kv_layers = 1``:

- ``prefill(feats)``: run the layer on [embed(feats.next_tokens); feats.hidden] at
  feats.meta (its positions and slots are the verifier's, the shared layer takes the K/V); keep
  the output at each final piece's last entry (it predicts the token after the root) in a
  per-row buffer indexed by feats.rows[feats.final].
- ``propose``: ``tree.grow(shape, view.tokens[:, 0], that buffer, expand, verifier, ...)``;
  ``expand`` runs the layer on the level's nodes (positions view.pos - 1 + depth, scratch slots
  from view.table at view.pos + level.first + j, attention to the committed entries plus
  ``level.mask`` over the earlier scratch entries).
- ``accept``: run the layer on [embed(acc.tokens[:, :D+1]); acc.hidden] at positions
  view.pos … view.pos + D (slots of padded columns j > acc.length: -1), which overwrites the
  scratch entries with the committed ones; keep the output at column acc.length (it predicts the
  token after the bonus) in the per-row buffer, for active rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kv_cache import PagedKVCache
from ..state import StepView

__all__ = ["TREES", "Accepted", "DraftOptions", "DraftTree", "Drafter", "PrefillFeatures"]

TREES = ("chain", "topk", "dynamic")


@dataclass
class DraftOptions:
    """What the user chose (``pipo generate --draft-tokens N --tree T``; ``Engine(draft_tokens=,
    tree=, draft_topk=)``). draft_tokens: nodes beyond the root (the tree has draft_tokens + 1
    nodes; a chain is draft_tokens deep). tree: one of TREES. topk: branching of the topk and
    dynamic trees. depth: the dynamic tree's depth limit (0 = draft_tokens). checkpoint: the
    drafter's weights (a folder or file) where it has any, None for its default."""

    draft_tokens: int = 4
    tree: str = "chain"
    topk: int = 4
    depth: int = 0
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.draft_tokens < 1:
            raise ValueError(f"draft_tokens: expected >= 1, got {self.draft_tokens}")
        if self.tree not in TREES:
            raise ValueError(f"tree: expected one of {TREES}, got {self.tree!r}")
        if self.topk < 1:
            raise ValueError(f"topk: expected >= 1, got {self.topk}")
        if self.depth < 0:
            raise ValueError(f"depth: expected >= 0, got {self.depth}")


@dataclass
class DraftTree:
    """B trees of N nodes each (N <= Drafter.num_nodes; a capturable drafter always gives N =
    num_nodes), node 0 the root.

    tokens: int64 [B, N]; tokens[:, 0] is the root (= view.tokens[:, 0]).
    parents: int64 [B, N]; local parent index, -1 for node 0, 0 <= parents[:, i] < i otherwise.
    depths: int64 [B, N]; the root 0, a child one more than its parent (RoPE position = the
        root's position + depth).
    max_depth: int, a bound on depths known on the host (<= Drafter.max_depth).
    draft_probs: float32 [B, N, V] or None (None only when propose got need_probs=False): row
        (b, i) is the distribution node i's children were drawn from (rows of nodes without
        children are never read; zeros are fine).
    mask: bool [B, N, N] or None: mask[b, i, j] = node j is node i or one of its ancestors (the
        verifier's tree mask); None lets the mode compute it from parents.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    max_depth: int
    draft_probs: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[1]


@dataclass
class Accepted:
    """The outcome of a round, on the device (B = view size, D = the round's tree max_depth).

    length: int64 [B], accepted draft tokens L (root excluded), 0 for inactive rows.
    index: int64 [B, D + 1], local node indices of the path (index[:, 0] = 0), -1 beyond L.
    tokens: int64 [B, D + 2]: column j is the token after path node j (columns 0 … L-1 the
        accepted draft tokens, column L the bonus token), -1 beyond L. The newly committed
        tokens of row b are the root then tokens[b, :L + 1]; the last of them (the bonus) is the
        next root.
    hidden: [B, D + 1, H] (the verifier's dtype): the verifier's final hidden states (after its
        final norm, as ARModel.forward returns them) at the path's nodes; column j (j <= L) is
        the state at position view.pos + j, whose LM-head distribution tokens[:, j] came from.
        Columns beyond L hold other nodes' states (unspecified).
    active: bool [B]: rows that ran this round (the others must keep their state).
    """

    length: torch.Tensor
    index: torch.Tensor
    tokens: torch.Tensor
    hidden: torch.Tensor
    active: torch.Tensor


@dataclass
class PrefillFeatures:
    """A prefill chunk as the verifier saw it (``pipo.modes.base.PrefillBatch`` plus its outputs).

    tokens: int64 [T], the chunk's prompt tokens, pieces end to end.
    next_tokens: int64 [T]: the token after each (the next prompt token; after a prompt's last
        token, the first generated token, which is then the row's root).
    hidden: [T, H], the verifier's final hidden states of the chunk.
    meta: the chunk's AttnMeta (positions, slots of the verifier's cache, block table rows,
        q_indptr per piece).
    rows: int64 [k], the batch row of each piece; final: bool [k], pieces that end their prompt.
    """

    tokens: torch.Tensor
    next_tokens: torch.Tensor
    hidden: torch.Tensor
    meta: object
    rows: torch.Tensor
    final: torch.Tensor


class Drafter:
    """Proposes draft trees for spec mode (see the module docstring for a round's order).

    Class attributes a subclass sets: ``name``; ``capturable`` (propose / accept are pure device
    functions of the view and of the drafter's persistent buffers, with N = num_nodes every
    round, so CUDA graphs may capture the round); ``deterministic`` (one-hot draft_probs);
    ``kv_layers`` (extra layers in the verifier's cache, see above).

    Attributes the subclass sets in ``__init__``: ``num_nodes`` (most nodes of a tree, root
    included), ``max_depth`` (deepest node of any tree), ``draws`` (random draws per row and
    round, offsets view.offsets + 1 …). ``bind`` fills ``verifier``, ``cache`` (the verifier's,
    with the shared layers), ``shared_layers`` (their indices in cache.k_caches / v_caches),
    ``use_kernels`` and ``device``.

    Hooks, each called by the spec mode / engine; defaults do nothing:

    - ``bind(verifier, cache, shared_layers, use_kernels)`` once, before any request.
    - ``admit(rows, seqs)`` when requests take rows (int64 list); reset per-row buffers.
    - ``move(src, dst)`` when the engine moves row src's request into row dst (retire).
    - ``prefill(feats)`` after each verifier prefill chunk (``PrefillFeatures``), before the
      rows' first round.
    - ``prepare(seqs, live)`` on the host before each round: seqs[r] is row r's request (with
      ``prompt``, ``out`` host token lists = the committed tokens, ``rid``, ``params``), live[r]
      whether row r runs this round.
    - ``propose(view, need_probs) -> DraftTree`` inside the round.
    - ``accept(view, acc)`` inside the round, after verification.
    - ``mutable()``: persistent device buffers that propose / accept modify in place (saved and
      restored around a CUDA-graph warm-up), KV caches excluded.
    - ``caches()``, ``prefill_need(seq)``, ``round_need(seq)``: own caches and the entries each
      must hold (list of (cache, entries)).
    - ``scratch_entries()``: entries past pos a round may write in the shared cache (>= the
      tree's nodes; the default num_nodes).
    """

    name = ""
    capturable = False
    deterministic = False
    kv_layers = 0

    num_nodes = 1
    max_depth = 0
    draws = 0

    def bind(self, verifier, cache: PagedKVCache, shared_layers: list[int], use_kernels: bool):
        self.verifier, self.cache, self.shared_layers = verifier, cache, shared_layers
        self.use_kernels = use_kernels
        self.device = verifier.embed_tokens.weight.device

    def admit(self, rows: list[int], seqs: list) -> None:
        pass

    def move(self, src: int, dst: int) -> None:
        pass

    def prefill(self, feats: PrefillFeatures) -> None:
        pass

    def prepare(self, seqs: list, live: list[bool]) -> None:
        pass

    def propose(self, view: StepView, need_probs: bool) -> DraftTree:
        raise NotImplementedError

    def accept(self, view: StepView, acc: Accepted) -> None:
        pass

    def mutable(self) -> list[torch.Tensor]:
        return []

    def caches(self) -> list[PagedKVCache]:
        return []

    def prefill_need(self, seq) -> list[tuple[PagedKVCache, int]]:
        return []

    def round_need(self, seq) -> list[tuple[PagedKVCache, int]]:
        return []

    def scratch_entries(self) -> int:
        return self.num_nodes
