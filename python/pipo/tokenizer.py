"""Tokenizers: the byte-level one of the built-in models (ids 0-255 are bytes, then PAD, BOS and
EOS) and a real model folder's ``tokenizer.json`` with its chat template (``HFTokenizer``, through
the ``tokenizers`` and ``jinja2`` packages of the ``hf`` extra; transformers is not needed)."""

from __future__ import annotations

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer"]


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


HF_EXTRA = "pip install 'pipo-kernels[hf]'"


def require(module: str, purpose: str):
    """Import ``module`` (one of the ``hf`` extra's packages) or raise ImportError naming it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs the '{module}' package: {HF_EXTRA}") from exc


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` (a folder's tokenizer.json) plus its chat template.

    ``encode`` adds what the tokenizer's own post-processor adds (e.g. Llama's BOS); ``chat``
    renders the chat template (jinja2, as transformers does) and encodes the result without
    adding anything; ``decode`` skips special tokens, so EOS / role markers never reach the user.

    Example::

        tok = HFTokenizer.from_folder("~/.cache/pipo/smollm2-135m-instruct")
        ids = tok.chat("What is the capital of France?")   # <|im_start|>system ... assistant\\n
        text = tok.decode(generated_ids)
    """

    def __init__(
        self,
        tokenizer,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_folder(cls, folder) -> HFTokenizer:
        """tokenizer.json, plus tokenizer_config.json's chat_template / bos_token / eos_token
        (or chat_template.jinja, where transformers 5 writes the template) if present."""
        import json
        from pathlib import Path

        folder = Path(folder)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing (a model folder's tokenizer)")
        tokenizers = require("tokenizers", "a tokenizer.json")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises its own exception type
            raise ValueError(f"{file}: not a readable tokenizer.json ({exc})") from exc
        config = {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        if isinstance(template, list):  # several named templates: the default one
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default")

        def token(key):
            value = config.get(key)
            return value.get("content") if isinstance(value, dict) else value

        return cls(tokenizer, template, token("bos_token"), token("eos_token"))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(self, prompt: str, system: str | None = None) -> str:
        """The chat template applied to one user turn (and an optional system turn), with the
        generation prompt (the assistant's turn opened)."""
        if not self.chat_template:
            raise ValueError("--chat: this model's tokenizer has no chat template")
        jinja2 = require("jinja2", "a chat template")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ValueError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        try:
            template = env.from_string(self.chat_template)
        except jinja2.TemplateError as exc:
            raise ValueError(f"chat template: not a valid jinja2 template ({exc})") from exc
        return template.render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def chat(self, prompt: str, system: str | None = None) -> list[int]:
        """Token ids of render_chat(prompt, system); special tokens in the text are matched, none
        are added (the template places them)."""
        return self.tokenizer.encode(self.render_chat(prompt, system), add_special_tokens=False).ids


def load_tokenizer(folder=None, vocab_size: int = ByteTokenizer.vocab_size):
    """The tokenizer of a model folder or GGUF file: its tokenizer.json (the GGUF's embedded
    tokenizer) if it has one; the byte tokenizer for the built-in models (``folder`` None) and
    pipo checkpoints of the byte vocabulary; None when neither applies (prompts must then be
    given as token ids)."""
    from pathlib import Path

    if folder is not None and Path(folder).suffix == ".gguf" and Path(folder).is_file():
        from .convert import gguf_file_tokenizer

        return gguf_file_tokenizer(folder)
    if folder is not None and (Path(folder) / "tokenizer.json").is_file():
        return HFTokenizer.from_folder(folder)
    return ByteTokenizer() if vocab_size == ByteTokenizer.vocab_size else None
