// The CUDA entry points of every op: argument checks, then the launch glue in the .cu files.
//
// Keeping the checks in one host-compiled file means the nvcc-compiled glue only launches, and
// every CUDA op's checks read side by side (the CPU entry points share the same check helpers).
#include <ATen/ATen.h>

#include "../attention.h"
#include "../fused.h"
#include "../kv_cache.h"
#include "../latent.h"
#include "../ops.h"
#include "../pair_out.h"
#include "../sampling.h"
#include "../verify.h"

namespace pipo {
namespace {

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got ", t.device());
}

// Under PIPO_VALIDATE=1 the index values are copied to the host and checked (a sync); otherwise
// the kernels ignore bad indices.
void validate_tree(const at::Tensor& draft_tokens, const at::Tensor& parents,
                   const at::Tensor& q_indptr, int64_t max_depth, int64_t vocab) {
  if (!validate_enabled()) return;
  check_tree_values(draft_tokens.cpu(), parents.cpu(), q_indptr.cpu(), max_depth, vocab);
}

}  // namespace

void kv_cache_append_cuda(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                          at::Tensor& v_cache, const at::Tensor& slot_mapping) {
  check_kv_append_args(key, value, k_cache, v_cache, slot_mapping);
  check_cuda(key, "key");
  // Out-of-range slots are skipped by the kernel; PIPO_VALIDATE=1 reports them (needs a sync).
  if (validate_enabled()) check_slot_values(slot_mapping, num_slots(k_cache), "slot_mapping");
  kv_cache_append_cuda_launch(key, value, k_cache, v_cache, slot_mapping);
}

void kv_cache_compact_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_slots,
                           const at::Tensor& dst_slots) {
  check_kv_compact_args(k_cache, v_cache, src_slots, dst_slots);
  check_cuda(k_cache, "k_cache");
  if (validate_enabled()) check_compact_values(src_slots, dst_slots, num_slots(k_cache));
  kv_cache_compact_cuda_launch(k_cache, v_cache, src_slots, dst_slots);
}

at::Tensor fold_pairs_cuda(const at::Tensor& pair_ids, const at::Tensor& embedding,
                           const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           c10::string_view activation) {
  check_fold_args(pair_ids, embedding, weight, bias, activation);
  check_cuda(embedding, "embedding");
  // Out-of-range ids read as zero rows; PIPO_VALIDATE=1 reports them (needs a sync).
  if (validate_enabled()) check_token_values(pair_ids, embedding.size(0), "pair_ids");
  return fold_pairs_cuda_launch(pair_ids, embedding, weight, bias, activation);
}

at::Tensor unfold_input_cuda(const at::Tensor& token_ids, const at::Tensor& hidden,
                             const at::Tensor& embedding, const at::Tensor& embed_norm_weight,
                             const at::Tensor& hidden_norm_weight, const at::Tensor& weight,
                             double eps) {
  check_unfold_args(token_ids, hidden, embedding, embed_norm_weight, hidden_norm_weight, weight);
  check_cuda(embedding, "embedding");
  if (validate_enabled()) check_token_values(token_ids, embedding.size(0), "token_ids");
  return unfold_input_cuda_launch(token_ids, hidden, embedding, embed_norm_weight,
                                  hidden_norm_weight, weight, eps);
}

std::tuple<at::Tensor, at::Tensor> paged_attention_cuda(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const at::Tensor& q_indptr,
    const std::optional<at::Tensor>& tree_mask, std::optional<double> sm_scale, bool return_lse,
    int64_t num_splits) {
  check_paged_attention_args(q, k_cache, v_cache, block_table, kv_lens, q_indptr, tree_mask,
                             num_splits);
  check_cuda(q, "q");
  const int64_t head_dim = q.size(2);
  TORCH_CHECK(head_dim == 64 || head_dim == 128 || head_dim == 256,
              "q: the CUDA kernel supports head_dim 64, 128 or 256, got ", head_dim);
  for (const auto& [t, name] : {std::pair{&k_cache, "k_cache"}, std::pair{&v_cache, "v_cache"}}) {
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0, name,
                ": expected a 16-byte aligned data pointer (the kernel copies 16-byte rows)");
  }
  // Index values are trusted on the fast path (out-of-range pages are masked, never read);
  // PIPO_VALIDATE=1 checks them here, at the cost of a sync.
  if (validate_enabled())
    check_paged_attention_values(q, k_cache, block_table, kv_lens, q_indptr, tree_mask);
  return paged_attention_cuda_launch(q, k_cache, v_cache, block_table, kv_lens, q_indptr, tree_mask,
                                     sm_scale, return_lse, num_splits);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cuda(const at::Tensor& draft_tokens,
                                                                const at::Tensor& parents,
                                                                const at::Tensor& q_indptr,
                                                                const at::Tensor& target_tokens,
                                                                int64_t max_depth) {
  check_verify_tree_args(draft_tokens, parents, q_indptr, max_depth);
  check_token_tensor(target_tokens, draft_tokens, "target_tokens");
  check_cuda(draft_tokens, "draft_tokens");
  validate_tree(draft_tokens, parents, q_indptr, max_depth, -1);
  return verify_tree_cuda_launch(draft_tokens, parents, q_indptr, target_tokens, max_depth);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_stochastic_cuda(
    const at::Tensor& draft_tokens, const at::Tensor& parents, const at::Tensor& q_indptr,
    const at::Tensor& draft_probs, const at::Tensor& target_probs, const at::Tensor& seeds,
    const at::Tensor& offsets, int64_t max_depth) {
  check_verify_tree_args(draft_tokens, parents, q_indptr, max_depth);
  check_verify_stochastic_args(draft_tokens, q_indptr, draft_probs, target_probs, seeds, offsets);
  check_cuda(draft_tokens, "draft_tokens");
  validate_tree(draft_tokens, parents, q_indptr, max_depth, draft_probs.size(1));
  return verify_tree_stochastic_cuda_launch(draft_tokens, parents, q_indptr, draft_probs,
                                            target_probs, seeds, offsets, max_depth);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_tokens_cuda(
    const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& presence_penalty,
    const std::optional<at::Tensor>& seen, const at::Tensor& seeds, const at::Tensor& offsets,
    int64_t num_candidates) {
  check_sample_args(hidden, lm_head, temperature, top_k, top_p, presence_penalty, seen, seeds,
                    offsets, num_candidates);
  check_cuda(hidden, "hidden");
  // Out-of-range parameters are not followed on the GPU (negative top_k acts as 0, top_p >= 1
  // as no limit); PIPO_VALIDATE=1 reports them (needs a sync).
  if (validate_enabled()) check_sample_values(temperature, top_k, top_p);
  return sample_tokens_cuda_launch(hidden, lm_head, temperature, top_k, top_p, presence_penalty,
                                   seen, seeds, offsets, num_candidates);
}

std::tuple<at::Tensor, at::Tensor> pair_out_cuda(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& token1,
    const at::Tensor& token2, const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
    const at::Tensor& fc2_weight, double threshold, int64_t pad_id, double eps) {
  check_pair_out_args(hidden, mtp_hidden, token1, token2, norm_weight, fc1_weight, fc2_weight);
  check_cuda(hidden, "hidden");
  return pair_out_cuda_launch(hidden, mtp_hidden, token1, token2, norm_weight, fc1_weight,
                              fc2_weight, threshold, pad_id, eps);
}

std::tuple<at::Tensor, at::Tensor> group_out_cuda(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& tokens,
    const at::Tensor& norm_weight, const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
    double threshold, int64_t pad_id, double eps) {
  check_group_out_args(hidden, mtp_hidden, tokens, norm_weight, fc1_weight, fc2_weight);
  check_cuda(hidden, "hidden");
  return group_out_cuda_launch(hidden, mtp_hidden, tokens, norm_weight, fc1_weight, fc2_weight,
                               threshold, pad_id, eps);
}

void fused_add_rmsnorm_cuda(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                            double eps) {
  check_add_rmsnorm_args(x, residual, weight);
  check_cuda(x, "x");
  fused_add_rmsnorm_cuda_launch(x, residual, weight, eps);
}

void qk_norm_rope_append_cuda(at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& q_norm_weight,
                              const std::optional<at::Tensor>& k_norm_weight,
                              const at::Tensor& cos_sin_cache, const at::Tensor& positions,
                              at::Tensor& k_cache, at::Tensor& v_cache,
                              const at::Tensor& slot_mapping, double eps) {
  check_qk_rope_args(q, k, v, q_norm_weight, k_norm_weight, cos_sin_cache, positions, k_cache,
                     v_cache, slot_mapping);
  check_cuda(q, "q");
  TORCH_CHECK(k_cache.size(3) <= kMaxRopeHeadDim,
              "k_cache: the CUDA kernel supports head_dim up to ", kMaxRopeHeadDim, ", got ",
              k_cache.size(3));
  // Out-of-range positions and slots are skipped by the kernel; PIPO_VALIDATE=1 reports them
  // (needs a sync).
  if (validate_enabled()) {
    check_position_values(positions, cos_sin_cache.size(0));
    check_slot_values(slot_mapping, num_slots(k_cache), "slot_mapping");
  }
  qk_norm_rope_append_cuda_launch(q, k, v, q_norm_weight, k_norm_weight, cos_sin_cache, positions,
                                  k_cache, v_cache, slot_mapping, eps);
}

}  // namespace pipo
