"""Paged KV cache: page pools per layer, a free-list page allocator and per-request block tables.

Layout (docs/ops.md): one ``k_cache`` / ``v_cache`` pair per layer, [num_pages, page_size, Hkv, D].
Logical position p of a request lives in slot ``pages[p // page_size] * page_size + p % page_size``.
Requests own whole pages; a finished request's pages go back to the free list and are reused.
"""

from __future__ import annotations

import torch

__all__ = ["CacheFullError", "PagedKVCache"]


class CacheFullError(RuntimeError):
    """Raised when a request needs more pages than are free. Nothing was allocated by the call,
    so every other request (and the failing request's existing pages) is left as it was."""


class PagedKVCache:
    """K/V page pools for ``num_layers`` layers that share one page allocator and block tables.

    Example::

        cache = PagedKVCache(num_layers=2, num_pages=8, page_size=16, num_kv_heads=2, head_dim=64)
        cache.reserve(rid=0, length=20)       # 2 pages
        slots = cache.slots(0, 0, 20)         # int64 [20]
        cache.release(0)                      # pages back to the free list
    """

    def __init__(
        self,
        num_layers: int,
        num_pages: int,
        page_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_pages <= 0:
            raise ValueError(f"num_pages: expected a positive number, got {num_pages}")
        if page_size <= 0 or page_size & (page_size - 1) or page_size > 128:
            raise ValueError(f"page_size: expected a power of two from 1 to 128, got {page_size}")
        self.num_pages, self.page_size = num_pages, page_size
        shape = (num_pages, page_size, num_kv_heads, head_dim)
        self.k_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._free = list(range(num_pages - 1, -1, -1))  # pop() hands out low pages first
        self._pages: dict[int, list[int]] = {}
        # K and V of every layer for one page.
        self.bytes_per_page = (
            2
            * num_layers
            * page_size
            * num_kv_heads
            * head_dim
            * (torch.empty((), dtype=dtype).element_size())
        )

    def add_layers(self, n: int) -> list[int]:
        """Append n layers of the same shape and dtype (a drafter's KV that shares this cache's
        pages, block tables and slots); returns their indices in k_caches / v_caches."""
        first, like = len(self.k_caches), self.k_caches[0]
        for _ in range(n):
            self.k_caches.append(torch.zeros_like(like))
            self.v_caches.append(torch.zeros_like(like))
        self.bytes_per_page = self.bytes_per_page // first * len(self.k_caches)
        return list(range(first, first + n))

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    def pages(self, rid: int) -> list[int]:
        return self._pages.get(rid, [])

    def pages_needed(self, rid: int, length: int) -> int:
        return max(0, -(-length // self.page_size) - len(self.pages(rid)))

    def reserve(self, rid: int, length: int) -> None:
        """Make request ``rid`` own enough pages for positions 0 … length-1 (all or nothing)."""
        need = self.pages_needed(rid, length)
        if need > len(self._free):
            raise CacheFullError(
                f"KV cache full: request {rid} needs {need} more page(s) of {self.page_size} "
                f"tokens for length {length}, but only {len(self._free)} of {self.num_pages} are "
                "free; finish other requests or give the engine more pages (num_pages)"
            )
        pages = self._pages.setdefault(rid, [])
        pages.extend(self._free.pop() for _ in range(need))

    def release(self, rid: int) -> None:
        """Give request ``rid``'s pages back to the free list."""
        self._free.extend(reversed(self._pages.pop(rid, [])))

    def slots(self, rid: int, start: int, end: int) -> list[int]:
        """Slots of positions start … end-1 of request ``rid`` (which must be reserved)."""
        pages, ps = self._pages[rid], self.page_size
        return [pages[p // ps] * ps + p % ps for p in range(start, end)]

    def block_table(self, rids: list[int], width: int | None = None, device=None) -> torch.Tensor:
        """int32 [len(rids), width]: each request's pages, padded with page 0 (never read)."""
        width = width or max((len(self.pages(r)) for r in rids), default=1) or 1
        table = torch.zeros(len(rids), width, dtype=torch.int32)
        for i, r in enumerate(rids):
            pages = self.pages(r)
            if len(pages) > width:
                raise ValueError(f"width: request {r} owns {len(pages)} pages, more than {width}")
            table[i, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        return table.to(device or self.k_caches[0].device)
