// Argument checks of the fused per-layer ops, shared by the CPU and CUDA implementations.
#pragma once

#include <optional>

#include "checks.h"
#include "kv_cache.h"

namespace pipo {

// The most channels per head the CUDA qk_norm_rope_append kernel stages (kMaxHeadDim in
// pipo/fused.cuh; this header is host-only).
constexpr int64_t kMaxRopeHeadDim = 512;

// x, residual [N, H] contiguous, one float dtype, distinct; weight [H].
inline void check_add_rmsnorm_args(const at::Tensor& x, const at::Tensor& residual,
                                   const at::Tensor& weight) {
  check_dim(x, 2, "x");
  check_float(x, "x");
  check_contiguous(x, "x");
  TORCH_CHECK(residual.sizes() == x.sizes(), "residual: expected the shape of x ", shape_str(x),
              ", got ", shape_str(residual));
  check_same_dtype(residual, x, "residual", "x");
  check_same_device(residual, x, "residual", "x");
  check_contiguous(residual, "residual");
  TORCH_CHECK(x.numel() == 0 || residual.data_ptr() != x.data_ptr(),
              "residual: must not share memory with x");
  check_dim(weight, 1, "weight");
  check_size(weight, 0, x.size(1), "weight", "hidden size of x");
  check_same_dtype(weight, x, "weight", "x");
  check_same_device(weight, x, "weight", "x");
  check_contiguous(weight, "weight");
}

// t [N, heads, head_dim]: token rows may be strided (views into a fused QKV output), each
// token's [heads, head_dim] block contiguous.
inline void check_head_block(const at::Tensor& t, int64_t heads, int64_t head_dim,
                             const char* name) {
  check_dim(t, 3, name);
  check_size(t, 1, heads, name, "num_heads");
  check_size(t, 2, head_dim, name, "head_dim of the cache");
  TORCH_CHECK(t.size(0) <= 1 || t.stride(0) >= heads * head_dim, name,
              ": token rows overlap (stride(0) = ", t.stride(0), ")");
  TORCH_CHECK(t.stride(2) == 1 && (heads == 1 || t.stride(1) == head_dim), name,
              ": each token's [num_heads, head_dim] block must be contiguous, got strides ",
              c10::str(t.strides()));
}

inline void check_index_vector(const at::Tensor& t, int64_t n, const at::Tensor& ref,
                               const char* name) {
  check_index(t, 1, at::kLong, name);
  check_same_device(t, ref, name, "k_cache");
  check_size(t, 0, n, name, "num_tokens of k");
}

inline void check_qk_rope_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& q_norm_weight,
                               const std::optional<at::Tensor>& k_norm_weight,
                               const at::Tensor& cos_sin_cache, const at::Tensor& positions,
                               const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const at::Tensor& slot_mapping) {
  check_caches(k_cache, v_cache);
  const int64_t kv_heads = k_cache.size(2), head_dim = k_cache.size(3);
  check_dim(q, 3, "q");
  for (const auto& [t, name, heads] :
       {std::tuple{&q, "q", q.size(1)}, std::tuple{&k, "k", kv_heads},
        std::tuple{&v, "v", kv_heads}}) {
    check_head_block(*t, heads, head_dim, name);
    check_same_dtype(*t, k_cache, name, "k_cache");
    check_same_device(*t, k_cache, name, "k_cache");
  }
  check_size(q, 0, k.size(0), "q", "num_tokens of k");
  check_size(v, 0, k.size(0), "v", "num_tokens of k");
  TORCH_CHECK(q.numel() == 0 || (q.data_ptr() != k.data_ptr() && q.data_ptr() != v.data_ptr()),
              "q: must not share memory with k or v (q is written in place)");
  for (const auto& [w, name] :
       {std::pair{&q_norm_weight, "q_norm_weight"}, std::pair{&k_norm_weight, "k_norm_weight"}}) {
    if (!w->has_value()) continue;
    const at::Tensor& t = **w;
    check_dim(t, 1, name);
    check_size(t, 0, head_dim, name, "head_dim");
    check_same_dtype(t, k_cache, name, "k_cache");
    check_same_device(t, k_cache, name, "k_cache");
    check_contiguous(t, name);
  }
  check_dim(cos_sin_cache, 2, "cos_sin_cache");
  check_dtype(cos_sin_cache, at::kFloat, "cos_sin_cache");
  check_contiguous(cos_sin_cache, "cos_sin_cache");
  check_same_device(cos_sin_cache, k_cache, "cos_sin_cache", "k_cache");
  const int64_t rot = cos_sin_cache.size(1);
  TORCH_CHECK(rot % 2 == 0 && rot >= 2 && rot <= head_dim,
              "cos_sin_cache: expected an even rot_dim from 2 to head_dim (", head_dim,
              ") in dim 1, got ", rot);
  check_index_vector(positions, k.size(0), k_cache, "positions");
  check_index_vector(slot_mapping, k.size(0), k_cache, "slot_mapping");
}

// Positions index rows of the cos/sin table; checked on the host (a sync on CUDA).
inline void check_position_values(const at::Tensor& positions, int64_t max_pos) {
  if (positions.numel() == 0) return;
  const int64_t lo = positions.min().item<int64_t>(), hi = positions.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < max_pos, "positions: position ", lo < 0 ? lo : hi,
              " is out of range for a cos_sin_cache of ", max_pos, " rows");
}

}  // namespace pipo
