// Shape and range checks of paged_attention, shared by the CPU and CUDA implementations.
#pragma once

#include <optional>

#include "checks.h"

namespace pipo {

// Checks shapes, dtypes and devices; returns nothing, throws naming the argument.
inline void check_paged_attention_args(const at::Tensor& q, const at::Tensor& k_cache,
                                       const at::Tensor& v_cache, const at::Tensor& block_table,
                                       const at::Tensor& kv_lens, const at::Tensor& q_indptr,
                                       const std::optional<at::Tensor>& tree_mask,
                                       int64_t num_splits) {
  check_dim(q, 3, "q");
  check_float(q, "q");
  TORCH_CHECK(q.stride(2) == 1, "q: expected each head's head_dim values contiguous, got strides ",
              c10::str(q.strides()));
  check_dim(k_cache, 4, "k_cache");
  check_same_dtype(k_cache, q, "k_cache", "q");
  check_same_device(k_cache, q, "k_cache", "q");
  check_contiguous(k_cache, "k_cache");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache: expected the shape of k_cache ",
              shape_str(k_cache), ", got ", shape_str(v_cache));
  check_same_dtype(v_cache, q, "v_cache", "q");
  check_same_device(v_cache, q, "v_cache", "q");
  check_contiguous(v_cache, "v_cache");
  const int64_t hq = q.size(1), hkv = k_cache.size(2);
  TORCH_CHECK(hkv > 0 && hq % hkv == 0, "q: num_q_heads (", hq,
              ") must be a multiple of num_kv_heads of k_cache (", hkv, ")");
  check_size(q, 2, k_cache.size(3), "q", "head_dim of k_cache");
  check_dim(block_table, 2, "block_table");
  check_dtype(block_table, at::kInt, "block_table");
  check_same_device(block_table, q, "block_table", "q");
  check_contiguous(block_table, "block_table");
  const int64_t batch = block_table.size(0);
  for (const auto& [t, name, len, what] :
       {std::tuple{&kv_lens, "kv_lens", batch, "batch size of block_table"},
        std::tuple{&q_indptr, "q_indptr", batch + 1, "batch size of block_table + 1"}}) {
    check_dim(*t, 1, name);
    check_dtype(*t, at::kInt, name);
    check_same_device(*t, q, name, "q");
    check_contiguous(*t, name);
    check_size(*t, 0, len, name, what);
  }
  if (tree_mask.has_value()) {
    const at::Tensor& m = *tree_mask;
    check_dim(m, 2, "tree_mask");
    check_dtype(m, at::kBool, "tree_mask");
    check_same_device(m, q, "tree_mask", "q");
    check_contiguous(m, "tree_mask");
    check_size(m, 0, q.size(0), "tree_mask", "num_tokens of q");
  }
  TORCH_CHECK(num_splits >= 0, "num_splits: expected 0 (automatic) or a positive count, got ",
              num_splits);
}

// Range checks of the index values, read on the host (always on CPU; on CUDA with PIPO_VALIDATE=1).
inline void check_paged_attention_values(const at::Tensor& q, const at::Tensor& k_cache,
                                         const at::Tensor& block_table, const at::Tensor& kv_lens,
                                         const at::Tensor& q_indptr,
                                         const std::optional<at::Tensor>& tree_mask) {
  const at::Tensor bt = block_table.cpu(), lens = kv_lens.cpu(), indptr = q_indptr.cpu();
  const int32_t* bt_p = bt.data_ptr<int32_t>();
  const int32_t* len_p = lens.data_ptr<int32_t>();
  const int32_t* ind_p = indptr.data_ptr<int32_t>();
  const int64_t batch = bt.size(0), max_pages = bt.size(1);
  const int64_t page_size = k_cache.size(1), num_pages = k_cache.size(0);
  TORCH_CHECK(ind_p[0] == 0, "q_indptr: expected q_indptr[0] == 0, got ", ind_p[0]);
  TORCH_CHECK(ind_p[batch] == q.size(0), "q_indptr: expected the last entry to equal num_tokens ",
              "of q (", q.size(0), "), got ", ind_p[batch]);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t q_len = ind_p[b + 1] - ind_p[b], kv_len = len_p[b];
    TORCH_CHECK(q_len >= 0, "q_indptr: expected non-decreasing values, got q_indptr[", b + 1,
                "] = ", ind_p[b + 1], " < q_indptr[", b, "] = ", ind_p[b]);
    TORCH_CHECK(kv_len >= q_len, "kv_lens: kv_lens[", b, "] = ", kv_len,
                " is smaller than the sequence's number of queries (", q_len,
                "); the queries must already be in the cache");
    TORCH_CHECK(kv_len <= max_pages * page_size, "kv_lens: kv_lens[", b, "] = ", kv_len,
                " exceeds the capacity of its block_table row (", max_pages, " pages of ",
                page_size, ")");
    if (tree_mask.has_value()) {
      TORCH_CHECK(q_len <= tree_mask->size(1), "tree_mask: expected at least ", q_len,
                  " columns (the queries of sequence ", b, "), got shape ", shape_str(*tree_mask));
    }
    for (int64_t j = 0; j < (kv_len + page_size - 1) / page_size; ++j) {
      const int32_t page = bt_p[b * max_pages + j];
      TORCH_CHECK(page >= 0 && page < num_pages, "block_table: entry [", b, ", ", j, "] = ", page,
                  " is out of range for a cache of ", num_pages, " pages");
    }
  }
}

// Outputs of paged_attention: out [Nq, Hq, D] in q's dtype; lse [Nq, Hq] float32, or [0] when
// return_lse is false.
inline std::tuple<at::Tensor, at::Tensor> paged_attention_outputs(const at::Tensor& q,
                                                                  bool return_lse) {
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  at::Tensor lse = return_lse ? at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat))
                              : at::empty({0}, q.options().dtype(at::kFloat));
  return {out, lse};
}

}  // namespace pipo
