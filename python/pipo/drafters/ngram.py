"""Drafter "ngram": prompt lookup over the request's own tokens plus a Lookahead-style pool of
n-grams from every request this drafter has seen; no weights, no model pass.

Each committed token sequence (prompt + output) is indexed by its n-grams (n = 1 …
``max_ngram``): key = the n tokens, value = where they ended. A round looks up the longest
suffix of the request's tokens (n = max_ngram down to ``min_ngram``) that occurred before, most
recent occurrence first and the request's own tokens before the pool's, and proposes what
followed it. The first continuation is extended by looking up again with the proposal appended
(repetitive text then drafts the whole budget). ``chain`` keeps that one continuation;
``topk`` merges up to ``topk`` distinct continuations into a trie of at most draft_tokens nodes
(greedy rows only: a deterministic proposal has one-hot draft probabilities, so a sampled row
gets its best chain, see ``pipo.drafters.base``).

With sampling the AR distribution is kept, but which token a seed gives depends on the drafts,
and so (through the shared pool) on the other requests the drafter has seen; greedy output does
not depend on them.

The work is on the host between rounds (``prepare``); the tree reaches the device in one copy.
The tree is as large as the longest proposal of the batch this round (rows with a shorter one
are padded with a chain of their last token, which the verifier almost always rejects), so a
round without any match is a plain AR step. Not capturable: the shape follows the matches.
"""

from __future__ import annotations

import torch

from .base import Drafter, DraftOptions, DraftTree

__all__ = ["NGramDrafter"]


class NGramDrafter(Drafter):
    """See the module docstring. max_ngram / min_ngram: the suffix lengths tried; pool_tokens:
    the pool is emptied once it indexes more tokens than this."""

    name = "ngram"
    deterministic = True

    def __init__(
        self,
        opts: DraftOptions,
        max_ngram: int = 4,
        min_ngram: int = 1,
        pool_tokens: int = 1 << 20,
    ):
        if opts.tree == "dynamic":
            raise ValueError(
                "tree: the ngram drafter has no probabilities to rank a dynamic tree by; "
                "use 'chain' or 'topk'"
            )
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(
                f"min_ngram, max_ngram: expected 1 <= min <= max, got {min_ngram}, {max_ngram}"
            )
        self.k = opts.draft_tokens
        self.branches = opts.topk if opts.tree == "topk" else 1
        self.num_nodes, self.max_depth = self.k + 1, self.k
        self.max_ngram, self.min_ngram, self.pool_tokens = max_ngram, min_ngram, pool_tokens
        self._reset_pool()
        self._doc_of: dict[int, int] = {}  # request id -> its document
        self._tree: DraftTree | None = None

    def _reset_pool(self) -> None:
        self.docs: list[list[int]] = []
        self.indexed: list[int] = []  # tokens of each document in the index
        self.index: dict[tuple[int, ...], list[tuple[int, int]]] = {}

    # ------------------------------------------------------------------ index

    def admit(self, rows: list[int], seqs: list) -> None:
        if sum(self.indexed) > self.pool_tokens:
            self._reset_pool()
            self._doc_of.clear()
        for s in seqs:
            self._doc_of[s.rid] = len(self.docs)
            self.docs.append([])
            self.indexed.append(0)

    def _update(self, doc: int, tokens: list[int]) -> None:
        """Index the tokens of doc not indexed yet (the committed text only grows)."""
        self.docs[doc] = tokens
        for e in range(self.indexed[doc], len(tokens)):
            for n in range(1, min(self.max_ngram, e + 1) + 1):
                self.index.setdefault(tuple(tokens[e - n + 1 : e + 1]), []).append((doc, e))
        self.indexed[doc] = len(tokens)

    def _continuations(self, doc: int, ctx: list[int], want: int, limit: int) -> list[list[int]]:
        """Up to ``want`` distinct continuations (each at most ``limit`` tokens) of ctx's
        longest indexed suffix: doc's own occurrences first, then the pool's, latest first."""
        found: list[list[int]] = []
        for n in range(min(self.max_ngram, len(ctx)), self.min_ngram - 1, -1):
            occ = self.index.get(tuple(ctx[len(ctx) - n :]), ())
            for own in (True, False):
                for d, e in reversed(occ):
                    if (d == doc) != own:
                        continue
                    cont = self.docs[d][e + 1 : e + 1 + limit]
                    if cont and cont not in found:
                        found.append(cont)
                        if len(found) == want:
                            return found
            if found:
                return found
        return found

    def propose_host(self, doc: int, tokens: list[int], sampled: bool) -> list[list[int]]:
        """The continuations a row drafts (the first extended to the budget where the text
        allows; a sampled row gets only the first)."""
        want = 1 if sampled else self.branches
        conts = self._continuations(doc, tokens, want, self.k)
        if not conts:
            return []
        first = conts[0]
        while len(first) < self.k:
            more = self._continuations(doc, tokens + first, 1, self.k - len(first))
            if not more:
                break
            first = first + more[0]
        return [first, *conts[1:]]

    # ------------------------------------------------------------------ a round

    def prepare(self, seqs: list, live: list[bool]) -> None:
        trees = []
        for s, ok in zip(seqs, live, strict=True):
            if not ok:
                trees.append(([], []))
                continue
            doc = self._doc_of[s.rid]
            tokens = s.prompt + s.out
            self._update(doc, tokens)
            trees.append(_trie(self.propose_host(doc, tokens, s.params.temperature > 0), self.k))
        n = 1 + max(len(t) for t, _ in trees)
        tok = torch.zeros(len(seqs), n, dtype=torch.int64)
        par = torch.full((len(seqs), n), -1, dtype=torch.int64)
        dep = torch.zeros(len(seqs), n, dtype=torch.int64)
        deepest_all = 0
        for b, ((t, p), s) in enumerate(zip(trees, seqs, strict=True)):
            last = (s.prompt + s.out)[-1] if live[b] else 0
            depth = [0]
            for i in range(len(t)):
                depth.append(depth[p[i]] + 1)
            while len(t) < n - 1:  # pad with a chain of the last token under the deepest node
                deepest = max(range(len(depth)), key=lambda i: (depth[i], -i))
                t, p = [*t, last], [*p, deepest]
                depth.append(depth[deepest] + 1)
            tok[b, 1:] = torch.tensor(t, dtype=torch.int64)
            par[b, 1:] = torch.tensor(p, dtype=torch.int64)
            dep[b] = torch.tensor(depth, dtype=torch.int64)
            deepest_all = max(deepest_all, *depth)
        packed = torch.stack([tok, par, dep])
        pin = self.device.type == "cuda"
        packed = (packed.pin_memory() if pin else packed).to(self.device, non_blocking=True)
        self._tree = DraftTree(packed[0], packed[1], packed[2], deepest_all)

    def propose(self, view, need_probs: bool) -> DraftTree:
        t = self._tree
        tokens = t.tokens.clone()
        tokens[:, 0] = view.tokens[:, 0]
        tree = DraftTree(tokens, t.parents, t.depths, t.max_depth)
        if need_probs:
            # node i's children were "drawn" from the one-hot of its (first) child's token
            b, n = tokens.shape
            q = torch.zeros(b, n, self.verifier.config.vocab_size, device=tokens.device)
            child = torch.arange(1, n, device=tokens.device).expand(b, n - 1)
            first = torch.full((b, n), n, dtype=torch.int64, device=tokens.device)
            first.scatter_reduce_(1, t.parents[:, 1:], child, reduce="amin")
            has = first < n
            tok = tokens.gather(1, first.clamp(max=n - 1))
            q.scatter_(2, tok.unsqueeze(2), has.unsqueeze(2).float())
            tree.draft_probs = q
        return tree


def _trie(conts: list[list[int]], budget: int) -> tuple[list[int], list[int]]:
    """(tokens, parents) of the trie of the continuations, in insertion order (parents before
    children, root = node 0), at most ``budget`` nodes beyond the root."""
    tokens: list[int] = []
    parents: list[int] = []
    children: dict[tuple[int, int], int] = {}
    for cont in conts:
        node = 0
        for t in cont:
            nxt = children.get((node, t))
            if nxt is None:
                if len(tokens) == budget:
                    return tokens, parents
                tokens.append(t)
                parents.append(node)
                nxt = children[(node, t)] = len(tokens)
            node = nxt
    return tokens, parents
