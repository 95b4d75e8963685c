// Argument checks of the fused latent projections (fold_pairs with k tokens per group,
// unfold_input), shared by the CPU and CUDA implementations.
#pragma once

#include <string_view>

#include "checks.h"

namespace pipo {

inline void check_index_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, name,
              ": expected dtype int32 or int64, got ", t.scalar_type());
}

// The embedding table [V, H] and the projection weight [O, parts * H] every latent op reads
// (parts: the tokens of a fold group, or the two halves of unfold_input's input).
inline void check_table_and_weight(const at::Tensor& embedding, const at::Tensor& weight,
                                   int64_t parts) {
  check_dim(embedding, 2, "embedding");
  check_float(embedding, "embedding");
  check_contiguous(embedding, "embedding");
  check_dim(weight, 2, "weight");
  TORCH_CHECK(weight.size(1) == parts * embedding.size(1), "weight: expected shape [O, ",
              parts * embedding.size(1), "] (", parts, " * hidden size of embedding), got ",
              shape_str(weight));
  check_same_dtype(weight, embedding, "weight", "embedding");
  check_same_device(weight, embedding, "weight", "embedding");
  check_contiguous(weight, "weight");
}

inline bool parse_activation(std::string_view activation) {
  TORCH_CHECK(activation == "none" || activation == "silu",
              "activation: expected \"none\" or \"silu\", got \"", activation, "\"");
  return activation == "silu";
}

inline void check_fold_args(const at::Tensor& pair_ids, const at::Tensor& embedding,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            std::string_view activation) {
  // The group size k is pair_ids.size(1); the weight then has k * H columns.
  check_dim(pair_ids, 2, "pair_ids");
  TORCH_CHECK(pair_ids.size(1) >= 1,
              "pair_ids: expected at least one token id per group (shape [N, k], k >= 1), got "
              "k = 0");
  check_table_and_weight(embedding, weight, pair_ids.size(1));
  check_index_dtype(pair_ids, "pair_ids");
  check_same_device(pair_ids, embedding, "pair_ids", "embedding");
  check_contiguous(pair_ids, "pair_ids");
  if (bias.has_value()) {
    check_dim(*bias, 1, "bias");
    check_size(*bias, 0, weight.size(0), "bias", "out features of weight");
    check_same_dtype(*bias, embedding, "bias", "embedding");
    check_same_device(*bias, embedding, "bias", "embedding");
    check_contiguous(*bias, "bias");
  }
  parse_activation(activation);
}

inline void check_unfold_args(const at::Tensor& token_ids, const at::Tensor& hidden,
                              const at::Tensor& embedding, const at::Tensor& embed_norm_weight,
                              const at::Tensor& hidden_norm_weight, const at::Tensor& weight) {
  check_table_and_weight(embedding, weight, 2);
  const int64_t h = embedding.size(1);
  check_dim(token_ids, 1, "token_ids");
  check_index_dtype(token_ids, "token_ids");
  check_same_device(token_ids, embedding, "token_ids", "embedding");
  check_contiguous(token_ids, "token_ids");
  check_dim(hidden, 2, "hidden");
  check_size(hidden, 0, token_ids.size(0), "hidden", "number of token_ids");
  check_size(hidden, 1, h, "hidden", "hidden size of embedding");
  check_same_dtype(hidden, embedding, "hidden", "embedding");
  check_same_device(hidden, embedding, "hidden", "embedding");
  TORCH_CHECK(hidden.stride(1) == 1 && (hidden.size(0) <= 1 || hidden.stride(0) >= h),
              "hidden: expected contiguous, non-overlapping rows, got strides ",
              c10::str(hidden.strides()));
  for (const auto& [t, name] : {std::pair{&embed_norm_weight, "embed_norm_weight"},
                                std::pair{&hidden_norm_weight, "hidden_norm_weight"}}) {
    check_dim(*t, 1, name);
    check_size(*t, 0, h, name, "hidden size of embedding");
    check_same_dtype(*t, embedding, name, "embedding");
    check_same_device(*t, embedding, name, "embedding");
    check_contiguous(*t, name);
  }
}

// Full range check of token ids (read on the host): every id must name a row of the table.
inline void check_token_values(const at::Tensor& ids, int64_t vocab, const char* name) {
  if (ids.numel() == 0) return;
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < vocab, name, ": token id ", lo < 0 ? lo : hi,
              " is out of range for an embedding of ", vocab, " rows");
}

}  // namespace pipo
