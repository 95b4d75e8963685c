// Shape and range checks of the KV-cache ops, shared by the CPU and CUDA implementations.
#pragma once

#include "checks.h"

namespace pipo {

// The paged caches [num_pages, page_size, num_kv_heads, head_dim]: one float dtype, contiguous.
inline void check_caches(const at::Tensor& k_cache, const at::Tensor& v_cache) {
  check_dim(k_cache, 4, "k_cache");
  check_float(k_cache, "k_cache");
  check_contiguous(k_cache, "k_cache");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache: expected the shape of k_cache ",
              shape_str(k_cache), ", got ", shape_str(v_cache));
  check_same_dtype(v_cache, k_cache, "v_cache", "k_cache");
  check_same_device(v_cache, k_cache, "v_cache", "k_cache");
  check_contiguous(v_cache, "v_cache");
  TORCH_CHECK(!v_cache.is_same(k_cache), "v_cache: must be a different tensor from k_cache");
}

// Checks key/value [N, Hkv, D] against the paged caches [P, S, Hkv, D] and slot_mapping [N].
// Token rows of key and value may be strided (e.g. views into a fused QKV projection); each
// row itself must be contiguous.
inline void check_kv_append_args(const at::Tensor& key, const at::Tensor& value,
                                 const at::Tensor& k_cache, const at::Tensor& v_cache,
                                 const at::Tensor& slot_mapping) {
  check_caches(k_cache, v_cache);
  const int64_t heads = k_cache.size(2), head_dim = k_cache.size(3);
  for (const auto& [t, name] : {std::pair{&key, "key"}, std::pair{&value, "value"}}) {
    check_dim(*t, 3, name);
    check_size(*t, 1, heads, name, "num_kv_heads of the cache");
    check_size(*t, 2, head_dim, name, "head_dim of the cache");
    check_same_dtype(*t, k_cache, name, "k_cache");
    check_same_device(*t, k_cache, name, "k_cache");
    TORCH_CHECK(t->size(0) <= 1 || t->stride(0) >= heads * head_dim, name,
                ": token rows overlap (stride(0) = ", t->stride(0), ")");
    TORCH_CHECK(t->stride(2) == 1 && (heads == 1 || t->stride(1) == head_dim), name,
                ": each token's [num_kv_heads, head_dim] block must be contiguous, got strides ",
                c10::str(t->strides()));
  }
  check_size(value, 0, key.size(0), "value", "num_tokens of key");
  check_index(slot_mapping, 1, at::kLong, "slot_mapping");
  check_same_device(slot_mapping, k_cache, "slot_mapping", "k_cache");
  check_size(slot_mapping, 0, key.size(0), "slot_mapping", "num_tokens of key");
}

inline void check_kv_compact_args(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& src_slots, const at::Tensor& dst_slots) {
  check_caches(k_cache, v_cache);
  for (const auto& [t, name] :
       {std::pair{&src_slots, "src_slots"}, std::pair{&dst_slots, "dst_slots"}}) {
    check_index(*t, 1, at::kLong, name);
    check_same_device(*t, k_cache, name, "k_cache");
  }
  check_size(dst_slots, 0, src_slots.size(0), "dst_slots", "length of src_slots");
}

inline int64_t num_slots(const at::Tensor& cache) { return cache.size(0) * cache.size(1); }

// Full range checks of the index values (read on the host). Negative slots mean "skip".
inline void check_slot_values(const at::Tensor& slots, int64_t n_slots, const char* name) {
  if (slots.numel() == 0) return;
  const int64_t max_slot = slots.max().item<int64_t>();
  TORCH_CHECK(max_slot < n_slots, name, ": slot ", max_slot, " is out of range for a cache of ",
              n_slots, " slots (num_pages * page_size)");
}

// Destinations of one compaction must be distinct (ignoring skipped moves), else the result would
// depend on the write order.
inline void check_compact_values(const at::Tensor& src, const at::Tensor& dst, int64_t n_slots) {
  check_slot_values(src, n_slots, "src_slots");
  check_slot_values(dst, n_slots, "dst_slots");
  const auto live = dst.masked_select((src >= 0).logical_and(dst >= 0));
  if (live.numel() > 1) {
    const auto sorted = std::get<0>(live.sort());
    const bool dup = sorted.slice(0, 1).eq(sorted.slice(0, 0, -1)).any().item<bool>();
    TORCH_CHECK(!dup, "dst_slots: destinations must be distinct, found a repeated slot");
  }
}

}  // namespace pipo
