// Launch glue of the fused per-layer ops (arguments are checked in checked.cpp): device guard,
// current stream, dtype dispatch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../fused.h"
#include "pipo/fused.cuh"

namespace pipo {

// The host-side head_dim check (checked.cpp) and the kernel's staging buffer must agree.
static_assert(kMaxRopeHeadDim == kMaxHeadDim);

namespace {

// Calls f(T{}) with T the CUDA element type of `dtype` (float32, float16 or bfloat16).
template <typename F>
cudaError_t by_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat:
      return f(float{});
    case at::kHalf:
      return f(__half{});
    default:
      return f(__nv_bfloat16{});
  }
}

const void* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr() : nullptr;
}

}  // namespace

void fused_add_rmsnorm_cuda_launch(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                                   double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  AddRMSNormParams p{};
  p.x = x.data_ptr();
  p.residual = residual.data_ptr();
  p.weight = weight.data_ptr();
  p.n = x.size(0);
  p.h = x.size(1);
  p.eps = static_cast<float>(eps);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = by_dtype(x.scalar_type(), [&](auto tag) {
    return launch_fused_add_rmsnorm<decltype(tag)>(p, stream);
  });
  TORCH_CHECK(err == cudaSuccess,
              "fused_add_rmsnorm: CUDA launch failed: ", cudaGetErrorString(err));
}

void qk_norm_rope_append_cuda_launch(at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const std::optional<at::Tensor>& q_norm_weight,
                                     const std::optional<at::Tensor>& k_norm_weight,
                                     const at::Tensor& cos_sin_cache, const at::Tensor& positions,
                                     at::Tensor& k_cache, at::Tensor& v_cache,
                                     const at::Tensor& slot_mapping, double eps) {
  const c10::cuda::CUDAGuard guard(q.device());
  QKRopeParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_norm_weight = optional_ptr(q_norm_weight);
  p.k_norm_weight = optional_ptr(k_norm_weight);
  p.cos_sin = cos_sin_cache.data_ptr<float>();
  p.positions = positions.data_ptr<int64_t>();
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.slot_mapping = slot_mapping.data_ptr<int64_t>();
  p.n = k.size(0);
  p.q_heads = q.size(1);
  p.kv_heads = k_cache.size(2);
  p.d = k_cache.size(3);
  p.half = cos_sin_cache.size(1) / 2;
  p.q_stride = q.stride(0);
  p.k_stride = k.stride(0);
  p.v_stride = v.stride(0);
  p.max_pos = cos_sin_cache.size(0);
  p.num_slots = num_slots(k_cache);
  p.eps = static_cast<float>(eps);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = by_dtype(q.scalar_type(), [&](auto tag) {
    return launch_qk_norm_rope_append<decltype(tag)>(p, stream);
  });
  TORCH_CHECK(err == cudaSuccess,
              "qk_norm_rope_append: CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace pipo
