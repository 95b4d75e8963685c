// Declarations of every op implementation, registered in torch_bindings.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace pipo {

void kv_cache_append_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                         at::Tensor& v_cache, const at::Tensor& slot_mapping);
void kv_cache_compact_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_slots,
                          const at::Tensor& dst_slots);
at::Tensor fold_pairs_cpu(const at::Tensor& pair_ids, const at::Tensor& embedding,
                          const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          c10::string_view activation);
at::Tensor unfold_input_cpu(const at::Tensor& token_ids, const at::Tensor& hidden,
                            const at::Tensor& embedding, const at::Tensor& embed_norm_weight,
                            const at::Tensor& hidden_norm_weight, const at::Tensor& weight,
                            double eps);
std::tuple<at::Tensor, at::Tensor> paged_attention_cpu(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const at::Tensor& q_indptr,
    const std::optional<at::Tensor>& tree_mask, std::optional<double> sm_scale, bool return_lse,
    int64_t num_splits);
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cpu(const at::Tensor& draft_tokens,
                                                               const at::Tensor& parents,
                                                               const at::Tensor& q_indptr,
                                                               const at::Tensor& target_tokens,
                                                               int64_t max_depth);
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_stochastic_cpu(
    const at::Tensor& draft_tokens, const at::Tensor& parents, const at::Tensor& q_indptr,
    const at::Tensor& draft_probs, const at::Tensor& target_probs, const at::Tensor& seeds,
    const at::Tensor& offsets, int64_t max_depth);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_tokens_cpu(
    const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& presence_penalty,
    const std::optional<at::Tensor>& seen, const at::Tensor& seeds, const at::Tensor& offsets,
    int64_t num_candidates);
std::tuple<at::Tensor, at::Tensor> pair_out_cpu(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& token1,
    const at::Tensor& token2, const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
    const at::Tensor& fc2_weight, double threshold, int64_t pad_id, double eps);
std::tuple<at::Tensor, at::Tensor> group_out_cpu(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& tokens,
    const at::Tensor& norm_weight, const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
    double threshold, int64_t pad_id, double eps);
void fused_add_rmsnorm_cpu(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                           double eps);
void qk_norm_rope_append_cpu(at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const std::optional<at::Tensor>& q_norm_weight,
                             const std::optional<at::Tensor>& k_norm_weight,
                             const at::Tensor& cos_sin_cache, const at::Tensor& positions,
                             at::Tensor& k_cache, at::Tensor& v_cache,
                             const at::Tensor& slot_mapping, double eps);

#ifdef PIPO_WITH_CUDA
// Entry points (csrc/cuda/checked.cpp): argument checks, then the launch glue below.
void kv_cache_append_cuda(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                          at::Tensor& v_cache, const at::Tensor& slot_mapping);
void kv_cache_compact_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_slots,
                           const at::Tensor& dst_slots);
at::Tensor fold_pairs_cuda(const at::Tensor& pair_ids, const at::Tensor& embedding,
                           const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           c10::string_view activation);
at::Tensor unfold_input_cuda(const at::Tensor& token_ids, const at::Tensor& hidden,
                             const at::Tensor& embedding, const at::Tensor& embed_norm_weight,
                             const at::Tensor& hidden_norm_weight, const at::Tensor& weight,
                             double eps);
std::tuple<at::Tensor, at::Tensor> paged_attention_cuda(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const at::Tensor& q_indptr,
    const std::optional<at::Tensor>& tree_mask, std::optional<double> sm_scale, bool return_lse,
    int64_t num_splits);
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cuda(const at::Tensor& draft_tokens,
                                                                const at::Tensor& parents,
                                                                const at::Tensor& q_indptr,
                                                                const at::Tensor& target_tokens,
                                                                int64_t max_depth);
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_stochastic_cuda(
    const at::Tensor& draft_tokens, const at::Tensor& parents, const at::Tensor& q_indptr,
    const at::Tensor& draft_probs, const at::Tensor& target_probs, const at::Tensor& seeds,
    const at::Tensor& offsets, int64_t max_depth);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_tokens_cuda(
    const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& presence_penalty,
    const std::optional<at::Tensor>& seen, const at::Tensor& seeds, const at::Tensor& offsets,
    int64_t num_candidates);
std::tuple<at::Tensor, at::Tensor> pair_out_cuda(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& token1,
    const at::Tensor& token2, const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
    const at::Tensor& fc2_weight, double threshold, int64_t pad_id, double eps);
std::tuple<at::Tensor, at::Tensor> group_out_cuda(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& tokens,
    const at::Tensor& norm_weight, const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
    double threshold, int64_t pad_id, double eps);
void fused_add_rmsnorm_cuda(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                            double eps);
void qk_norm_rope_append_cuda(at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& q_norm_weight,
                              const std::optional<at::Tensor>& k_norm_weight,
                              const at::Tensor& cos_sin_cache, const at::Tensor& positions,
                              at::Tensor& k_cache, at::Tensor& v_cache,
                              const at::Tensor& slot_mapping, double eps);

// Launch glue (csrc/cuda/*.cu): arguments already checked.
void kv_cache_append_cuda_launch(const at::Tensor& key, const at::Tensor& value,
                                 at::Tensor& k_cache, at::Tensor& v_cache,
                                 const at::Tensor& slot_mapping);
void kv_cache_compact_cuda_launch(at::Tensor& k_cache, at::Tensor& v_cache,
                                  const at::Tensor& src_slots, const at::Tensor& dst_slots);
at::Tensor fold_pairs_cuda_launch(const at::Tensor& pair_ids, const at::Tensor& embedding,
                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  c10::string_view activation);
at::Tensor unfold_input_cuda_launch(const at::Tensor& token_ids, const at::Tensor& hidden,
                                    const at::Tensor& embedding,
                                    const at::Tensor& embed_norm_weight,
                                    const at::Tensor& hidden_norm_weight, const at::Tensor& weight,
                                    double eps);
std::tuple<at::Tensor, at::Tensor> paged_attention_cuda_launch(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const at::Tensor& q_indptr,
    const std::optional<at::Tensor>& tree_mask, std::optional<double> sm_scale, bool return_lse,
    int64_t num_splits);
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cuda_launch(
    const at::Tensor& draft_tokens, const at::Tensor& parents, const at::Tensor& q_indptr,
    const at::Tensor& target_tokens, int64_t max_depth);
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_stochastic_cuda_launch(
    const at::Tensor& draft_tokens, const at::Tensor& parents, const at::Tensor& q_indptr,
    const at::Tensor& draft_probs, const at::Tensor& target_probs, const at::Tensor& seeds,
    const at::Tensor& offsets, int64_t max_depth);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_tokens_cuda_launch(
    const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& presence_penalty,
    const std::optional<at::Tensor>& seen, const at::Tensor& seeds, const at::Tensor& offsets,
    int64_t num_candidates);
std::tuple<at::Tensor, at::Tensor> pair_out_cuda_launch(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& token1,
    const at::Tensor& token2, const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
    const at::Tensor& fc2_weight, double threshold, int64_t pad_id, double eps);
std::tuple<at::Tensor, at::Tensor> group_out_cuda_launch(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& tokens,
    const at::Tensor& norm_weight, const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
    double threshold, int64_t pad_id, double eps);
void fused_add_rmsnorm_cuda_launch(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                                   double eps);
void qk_norm_rope_append_cuda_launch(at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const std::optional<at::Tensor>& q_norm_weight,
                                     const std::optional<at::Tensor>& k_norm_weight,
                                     const at::Tensor& cos_sin_cache, const at::Tensor& positions,
                                     at::Tensor& k_cache, at::Tensor& v_cache,
                                     const at::Tensor& slot_mapping, double eps);
#endif

}  // namespace pipo
