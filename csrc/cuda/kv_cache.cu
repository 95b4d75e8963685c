// Launch glue of the KV-cache kernels (arguments are checked in checked.cpp): device guard,
// current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../kv_cache.h"
#include "pipo/kv_cache.cuh"

namespace pipo {

void kv_cache_append_cuda_launch(const at::Tensor& key, const at::Tensor& value,
                                 at::Tensor& k_cache, at::Tensor& v_cache,
                                 const at::Tensor& slot_mapping) {
  const c10::cuda::CUDAGuard guard(key.device());
  const int64_t elem = k_cache.element_size();
  KVAppendParams p{};
  p.key = static_cast<const char*>(key.data_ptr());
  p.value = static_cast<const char*>(value.data_ptr());
  p.key_stride = key.stride(0) * elem;
  p.value_stride = value.stride(0) * elem;
  p.k_cache = static_cast<char*>(k_cache.data_ptr());
  p.v_cache = static_cast<char*>(v_cache.data_ptr());
  p.slot_mapping = slot_mapping.data_ptr<int64_t>();
  p.num_tokens = key.size(0);
  p.num_slots = num_slots(k_cache);
  p.row_bytes = k_cache.size(2) * k_cache.size(3) * elem;
  const cudaError_t err = launch_kv_cache_append(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "kv_cache_append: CUDA launch failed: ", cudaGetErrorString(err));
}

void kv_cache_compact_cuda_launch(at::Tensor& k_cache, at::Tensor& v_cache,
                                  const at::Tensor& src_slots, const at::Tensor& dst_slots) {
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const int64_t row_bytes = k_cache.size(2) * k_cache.size(3) * k_cache.element_size();
  const int64_t moves = src_slots.size(0);
  // The workspace comes from the caching allocator: a fixed size for a given shape, no sync.
  at::Tensor workspace = at::empty({moves * 2 * row_bytes}, k_cache.options().dtype(at::kByte));
  KVCompactParams p{};
  p.k_cache = static_cast<char*>(k_cache.data_ptr());
  p.v_cache = static_cast<char*>(v_cache.data_ptr());
  p.src = src_slots.data_ptr<int64_t>();
  p.dst = dst_slots.data_ptr<int64_t>();
  p.workspace = static_cast<char*>(workspace.data_ptr());
  p.num_moves = moves;
  p.num_slots = num_slots(k_cache);
  p.row_bytes = row_bytes;
  const cudaError_t err = launch_kv_cache_compact(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess,
              "kv_cache_compact: CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace pipo
