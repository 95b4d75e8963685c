// Declarations of every op implementation, registered in torch_bindings.cpp.
#pragma once

#include <ATen/ATen.h>

namespace pipo {

void kv_cache_append_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                         at::Tensor& v_cache, const at::Tensor& slot_mapping);
void kv_cache_compact_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_slots,
                          const at::Tensor& dst_slots);

#ifdef PIPO_WITH_CUDA
void kv_cache_append_cuda(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                          at::Tensor& v_cache, const at::Tensor& slot_mapping);
void kv_cache_compact_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_slots,
                           const at::Tensor& dst_slots);
#endif

}  // namespace pipo
