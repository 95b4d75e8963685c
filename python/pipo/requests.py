"""What the engine takes and gives: requests with their sampling parameters, results, stats."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Request", "Result", "SamplingParams", "Stats"]


@dataclass
class SamplingParams:
    """Per-request decoding settings. temperature 0 is greedy; top_k 0 and top_p 1.0 mean no
    limit; presence_penalty is subtracted from the logits of every token generated so far."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    seed: int = 0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a value in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")


@dataclass
class Request:
    """A prompt (text, or token ids used as they are) and its sampling parameters."""

    prompt: str | list[int]
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Result:
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens (mode pipo: PAD removed)
    text: str
    finish_reason: str  # "eos" | "stop" | "length" | "cache_full"
    error: str | None = None


@dataclass
class Stats:
    """Counters of one ``generate`` call. Passes are counted per request: a batched pass over B
    requests counts B times, so tokens_per_pass is per request. In mode "spec" they are the
    verifier's passes (the drafter's smaller passes are not counted)."""

    mode: str
    requests: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    backbone_passes: int = 0
    # Mode pipo: MTP proposals (k - 1 per pass where the chain runs) and the committed ones; for
    # k = 2 these are the pairs' token2. commits_by_position[j]: passes that committed token j + 2.
    token2_proposed: int = 0
    token2_committed: int = 0
    mtp_passes: int = 0
    commits_by_position: list[int] = field(default_factory=list)
    verify_rounds: int = 0
    accepted_draft_tokens: int = 0
    ttft_s: float = 0.0  # mean over requests: generate() start -> the request's first token
    tpot_s: float = 0.0  # mean over requests: first -> last token, per further token
    peak_kv_bytes: int = 0  # most KV-cache bytes held at once (pages in use, every cache)
    steps: int = 0  # engine iterations: a decode step and/or a prefill chunk, then one read-back
    d2h_transfers: int = 0  # device-to-host reads of emitted tokens (the engine's only sync)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.new_tokens / self.backbone_passes if self.backbone_passes else 0.0

    @property
    def token2_commit_rate(self) -> float:
        return self.token2_committed / self.token2_proposed if self.token2_proposed else 0.0

    def count_commit(self, j: int) -> None:
        """One committed proposal at group position j + 2 (j = 0: token2)."""
        while len(self.commits_by_position) <= j:
            self.commits_by_position.append(0)
        self.commits_by_position[j] += 1

    @property
    def commit_rate_by_position(self) -> list[float]:
        """Per group position 2 … k: the fraction of MTP passes that committed it."""
        return [c / self.mtp_passes if self.mtp_passes else 0.0 for c in self.commits_by_position]

    @property
    def mean_accept_len(self) -> float:
        """Accepted draft tokens per verification round (the bonus token not included)."""
        return self.accepted_draft_tokens / self.verify_rounds if self.verify_rounds else 0.0

    def line(self) -> str:
        parts = [
            f"mode={self.mode}",
            f"requests={self.requests}",
            f"new_tokens={self.new_tokens}",
            f"time={self.seconds:.3f}s",
            f"tokens/s={self.tokens_per_s:.1f}",
            f"tokens/pass={self.tokens_per_pass:.2f}",
            f"ttft={self.ttft_s * 1e3:.1f}ms",
            f"tpot={self.tpot_s * 1e3:.2f}ms",
        ]
        if self.mode == "pipo":
            parts.append(f"token2_commit_rate={self.token2_commit_rate:.3f}")
            if len(self.commits_by_position) > 1:
                rates = ",".join(f"{r:.2f}" for r in self.commit_rate_by_position)
                parts.append(f"commit_by_position={rates}")
        if self.mode == "spec":
            parts.append(f"mean_accept_len={self.mean_accept_len:.2f}")
        return " ".join(parts)
