// Declarations of every op implementation, registered in torch_bindings.cpp.
#pragma once

#include <ATen/ATen.h>

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

#ifdef PIPO_WITH_CUDA
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
#endif

}  // namespace pipo
