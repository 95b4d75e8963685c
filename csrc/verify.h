// Shape and value checks of the tree-verification ops, shared by the CPU and CUDA implementations.
#pragma once

#include <vector>

#include "checks.h"

namespace pipo {

// draft_tokens / target_tokens [Nq] int64, parents [Nq] int32, q_indptr [B+1] int32, max_depth >=
// 0.
inline void check_verify_tree_args(const at::Tensor& draft_tokens, const at::Tensor& parents,
                                   const at::Tensor& q_indptr, int64_t max_depth) {
  check_dim(draft_tokens, 1, "draft_tokens");
  check_dtype(draft_tokens, at::kLong, "draft_tokens");
  check_contiguous(draft_tokens, "draft_tokens");
  const int64_t nodes = draft_tokens.size(0);
  check_dim(parents, 1, "parents");
  check_dtype(parents, at::kInt, "parents");
  check_contiguous(parents, "parents");
  check_size(parents, 0, nodes, "parents", "number of nodes of draft_tokens");
  check_same_device(parents, draft_tokens, "parents", "draft_tokens");
  check_dim(q_indptr, 1, "q_indptr");
  check_dtype(q_indptr, at::kInt, "q_indptr");
  check_contiguous(q_indptr, "q_indptr");
  TORCH_CHECK(q_indptr.size(0) >= 1, "q_indptr: expected B + 1 >= 1 entries, got shape ",
              shape_str(q_indptr));
  check_same_device(q_indptr, draft_tokens, "q_indptr", "draft_tokens");
  TORCH_CHECK(max_depth >= 0 && max_depth < (int64_t{1} << 30),
              "max_depth: expected 0 <= max_depth < 2**30, got ", max_depth);
}

inline void check_token_tensor(const at::Tensor& t, const at::Tensor& draft_tokens,
                               const char* name) {
  check_dim(t, 1, name);
  check_dtype(t, at::kLong, name);
  check_contiguous(t, name);
  check_size(t, 0, draft_tokens.size(0), name, "number of nodes of draft_tokens");
  check_same_device(t, draft_tokens, name, "draft_tokens");
}

// draft_probs / target_probs [Nq, V] float32; seeds / offsets [B] int64.
inline void check_verify_stochastic_args(const at::Tensor& draft_tokens, const at::Tensor& q_indptr,
                                         const at::Tensor& draft_probs,
                                         const at::Tensor& target_probs, const at::Tensor& seeds,
                                         const at::Tensor& offsets) {
  check_dim(draft_probs, 2, "draft_probs");
  check_dtype(draft_probs, at::kFloat, "draft_probs");
  check_contiguous(draft_probs, "draft_probs");
  check_size(draft_probs, 0, draft_tokens.size(0), "draft_probs",
             "number of nodes of draft_tokens");
  check_same_device(draft_probs, draft_tokens, "draft_probs", "draft_tokens");
  TORCH_CHECK(target_probs.sizes() == draft_probs.sizes(),
              "target_probs: expected the shape of draft_probs ", shape_str(draft_probs), ", got ",
              shape_str(target_probs));
  check_dtype(target_probs, at::kFloat, "target_probs");
  check_contiguous(target_probs, "target_probs");
  check_same_device(target_probs, draft_tokens, "target_probs", "draft_tokens");
  const int64_t batch = q_indptr.size(0) - 1;
  for (const auto& [t, name] : {std::pair{&seeds, "seeds"}, std::pair{&offsets, "offsets"}}) {
    check_dim(*t, 1, name);
    check_dtype(*t, at::kLong, name);
    check_contiguous(*t, name);
    check_size(*t, 0, batch, name, "batch size B = len(q_indptr) - 1");
    check_same_device(*t, draft_tokens, name, "draft_tokens");
  }
}

// Value checks on CPU tensors (the CUDA glue copies to the host under PIPO_VALIDATE=1):
// q_indptr runs from 0 to Nq without decreasing; node 0 of every sequence is the root (parent -1)
// and every other node's parent is an earlier node of its sequence; no node is deeper than
// max_depth; with vocab >= 0 every non-root draft token is in [0, vocab).
inline void check_tree_values(const at::Tensor& draft_tokens, const at::Tensor& parents,
                              const at::Tensor& q_indptr, int64_t max_depth, int64_t vocab = -1) {
  const int32_t* ip = q_indptr.data_ptr<int32_t>();
  const int32_t* par = parents.data_ptr<int32_t>();
  const int64_t* draft = draft_tokens.data_ptr<int64_t>();
  const int64_t batch = q_indptr.size(0) - 1, nodes = parents.size(0);
  TORCH_CHECK(ip[0] == 0, "q_indptr: expected q_indptr[0] == 0, got ", ip[0]);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(ip[b + 1] >= ip[b], "q_indptr: expected non-decreasing values, got q_indptr[",
                b + 1, "] = ", ip[b + 1], " < q_indptr[", b, "] = ", ip[b]);
  }
  TORCH_CHECK(ip[batch] == nodes, "q_indptr: expected q_indptr[B] == number of nodes (", nodes,
              "), got ", ip[batch]);
  std::vector<int64_t> depth(static_cast<size_t>(nodes), 0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = ip[b]; i < ip[b + 1]; ++i) {
      const int64_t local = i - ip[b], p = par[i];
      if (local == 0) {
        TORCH_CHECK(p == -1, "parents: node 0 of sequence ", b,
                    " is the root and must have parent -1, got ", p);
        continue;
      }
      TORCH_CHECK(p >= 0 && p < local, "parents: node ", local, " of sequence ", b, " has parent ",
                  p, "; expected 0 <= parent < ", local,
                  " (indices local to the sequence, parents before children)");
      depth[i] = depth[ip[b] + p] + 1;
      TORCH_CHECK(depth[i] <= max_depth, "parents: node ", local, " of sequence ", b, " has depth ",
                  depth[i], " > max_depth = ", max_depth);
      TORCH_CHECK(vocab < 0 || (draft[i] >= 0 && draft[i] < vocab), "draft_tokens: node ", local,
                  " of sequence ", b, " has token ", draft[i],
                  ", out of range for a vocabulary of ", vocab);
    }
  }
}

}  // namespace pipo
