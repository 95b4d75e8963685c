// Shape and value checks of sample_tokens, shared by the CPU and CUDA implementations.
#pragma once

#include <optional>

#include "checks.h"
#include "pipo/sampling_limits.h"

namespace pipo {

inline int64_t seen_words(int64_t vocab) { return (vocab + 31) / 32; }

inline void check_row_param(const at::Tensor& t, int64_t batch, at::ScalarType dtype,
                            const at::Tensor& ref, const char* name) {
  check_dim(t, 1, name);
  check_dtype(t, dtype, name);
  check_same_device(t, ref, name, "hidden");
  check_size(t, 0, batch, name, "batch size of hidden");
  check_contiguous(t, name);
}

inline void check_sample_args(const at::Tensor& hidden, const at::Tensor& lm_head,
                              const at::Tensor& temperature, const at::Tensor& top_k,
                              const at::Tensor& top_p, const at::Tensor& presence_penalty,
                              const std::optional<at::Tensor>& seen, const at::Tensor& seeds,
                              const at::Tensor& offsets, int64_t num_candidates) {
  check_dim(hidden, 2, "hidden");
  check_float(hidden, "hidden");
  check_contiguous(hidden, "hidden");
  check_dim(lm_head, 2, "lm_head");
  check_same_dtype(lm_head, hidden, "lm_head", "hidden");
  check_same_device(lm_head, hidden, "lm_head", "hidden");
  check_contiguous(lm_head, "lm_head");
  check_size(lm_head, 1, hidden.size(1), "lm_head", "hidden size of hidden");
  const int64_t batch = hidden.size(0), vocab = lm_head.size(0);
  TORCH_CHECK(vocab > 0 && vocab < (int64_t{1} << 31),
              "lm_head: expected a vocabulary size in [1, 2^31), got ", vocab);
  check_row_param(temperature, batch, at::kFloat, hidden, "temperature");
  check_row_param(top_k, batch, at::kInt, hidden, "top_k");
  check_row_param(top_p, batch, at::kFloat, hidden, "top_p");
  check_row_param(presence_penalty, batch, at::kFloat, hidden, "presence_penalty");
  check_row_param(seeds, batch, at::kLong, hidden, "seeds");
  check_row_param(offsets, batch, at::kLong, hidden, "offsets");
  if (seen.has_value()) {
    const at::Tensor& s = *seen;
    check_dim(s, 2, "seen");
    check_dtype(s, at::kInt, "seen");
    check_same_device(s, hidden, "seen", "hidden");
    check_size(s, 0, batch, "seen", "batch size of hidden");
    check_size(s, 1, seen_words(vocab), "seen", "ceil(V / 32) words of the vocabulary bitmask");
    check_contiguous(s, "seen");
  }
  TORCH_CHECK(num_candidates >= 0 && num_candidates <= kMaxCandidates,
              "num_candidates: expected a value in [0, ", kMaxCandidates, "], got ",
              num_candidates);
  TORCH_CHECK(num_candidates <= vocab, "num_candidates: expected at most the vocabulary size ",
              vocab, " of lm_head, got ", num_candidates);
}

// Value checks of the per-row sampling parameters (read on the host: a sync on CUDA).
inline void check_sample_values(const at::Tensor& temperature, const at::Tensor& top_k,
                                const at::Tensor& top_p) {
  if (temperature.numel() == 0) return;
  const auto t = temperature.cpu(), k = top_k.cpu(), p = top_p.cpu();
  TORCH_CHECK(t.isfinite().all().item<bool>() && t.min().item<float>() >= 0.0f,
              "temperature: expected finite values >= 0 (0 = greedy), got min ",
              t.min().item<float>());
  TORCH_CHECK(k.min().item<int>() >= 0, "top_k: expected values >= 0 (0 = no limit), got ",
              k.min().item<int>());
  TORCH_CHECK((p > 0).logical_and(p <= 1).all().item<bool>(),
              "top_p: expected values in (0, 1] (1 = no limit), got min ", p.min().item<float>(),
              " and max ", p.max().item<float>());
}

}  // namespace pipo
