// Shape checks of pair_out and group_out, shared by the CPU and CUDA implementations.
#pragma once

#include "checks.h"

namespace pipo {

// The confidence head's weights, against hidden [B, H] (mtp_hidden's shape checked before).
inline void check_confidence_head(const at::Tensor& hidden, const at::Tensor& mtp_hidden,
                                  const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
                                  const at::Tensor& fc2_weight) {
  const int64_t h = hidden.size(1);
  for (const auto& [t, name] :
       {std::pair{&mtp_hidden, "mtp_hidden"}, std::pair{&norm_weight, "norm_weight"},
        std::pair{&fc1_weight, "fc1_weight"}, std::pair{&fc2_weight, "fc2_weight"}}) {
    check_same_dtype(*t, hidden, name, "hidden");
    check_same_device(*t, hidden, name, "hidden");
    check_contiguous(*t, name);
  }
  check_dim(norm_weight, 1, "norm_weight");
  check_size(norm_weight, 0, 2 * h, "norm_weight", "2 * hidden size");
  check_dim(fc1_weight, 2, "fc1_weight");
  check_size(fc1_weight, 0, h, "fc1_weight", "hidden size");
  check_size(fc1_weight, 1, 2 * h, "fc1_weight", "2 * hidden size");
  check_dim(fc2_weight, 2, "fc2_weight");
  check_size(fc2_weight, 0, 1, "fc2_weight", "one output");
  check_size(fc2_weight, 1, h, "fc2_weight", "hidden size");
}

inline void check_hidden(const at::Tensor& hidden) {
  check_dim(hidden, 2, "hidden");
  check_float(hidden, "hidden");
  check_contiguous(hidden, "hidden");
}

inline void check_pair_out_args(const at::Tensor& hidden, const at::Tensor& mtp_hidden,
                                const at::Tensor& token1, const at::Tensor& token2,
                                const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
                                const at::Tensor& fc2_weight) {
  check_hidden(hidden);
  const int64_t batch = hidden.size(0);
  TORCH_CHECK(mtp_hidden.sizes() == hidden.sizes(), "mtp_hidden: expected the shape of hidden ",
              shape_str(hidden), ", got ", shape_str(mtp_hidden));
  check_confidence_head(hidden, mtp_hidden, norm_weight, fc1_weight, fc2_weight);
  for (const auto& [t, name] : {std::pair{&token1, "token1"}, std::pair{&token2, "token2"}}) {
    check_index(*t, 1, at::kLong, name);
    check_same_device(*t, hidden, name, "hidden");
    check_size(*t, 0, batch, name, "batch size of hidden");
  }
}

// hidden [B, H], mtp_hidden [B, J, H] (J >= 0 MTP steps), tokens [B, 1 + J] int64.
inline void check_group_out_args(const at::Tensor& hidden, const at::Tensor& mtp_hidden,
                                 const at::Tensor& tokens, const at::Tensor& norm_weight,
                                 const at::Tensor& fc1_weight, const at::Tensor& fc2_weight) {
  check_hidden(hidden);
  const int64_t batch = hidden.size(0), h = hidden.size(1);
  check_dim(mtp_hidden, 3, "mtp_hidden");
  TORCH_CHECK(mtp_hidden.size(0) == batch && mtp_hidden.size(2) == h,
              "mtp_hidden: expected shape [", batch, ", J, ", h, "] (hidden is [B, H]), got ",
              shape_str(mtp_hidden));
  check_confidence_head(hidden, mtp_hidden, norm_weight, fc1_weight, fc2_weight);
  check_index(tokens, 2, at::kLong, "tokens");
  check_same_device(tokens, hidden, "tokens", "hidden");
  check_size(tokens, 0, batch, "tokens", "batch size of hidden");
  check_size(tokens, 1, 1 + mtp_hidden.size(1), "tokens", "1 + J, J = mtp_hidden.size(1)");
}

}  // namespace pipo
