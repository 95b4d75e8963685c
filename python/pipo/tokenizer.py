"""Byte-level tokenizer of the tiny model: ids 0-255 are bytes, then PAD, BOS and EOS."""

from __future__ import annotations

__all__ = ["ByteTokenizer"]


class ByteTokenizer:
    """UTF-8 bytes as tokens. ``decode`` drops PAD / BOS / EOS, so PAD never reaches the user.

    Example::

        tok = ByteTokenizer()
        ids = tok.encode("hé")          # [257, 104, 195, 169]  (BOS first)
        assert tok.decode(ids) == "hé"
    """

    vocab_size = 259
    pad_id = 256
    bos_id = 257
    eos_id = 258

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        # errors="replace": a random-weight model can emit byte sequences that are not UTF-8.
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
