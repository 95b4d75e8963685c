// Launch glue of paged_attention (arguments are checked in checked.cpp): device guard, the
// kernel choice (PIPO_ATTN_KERNEL), workspace, current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <cstring>

#include "../attention.h"
#include "dtype.h"
#include "pipo/attention.cuh"
#include "pipo/attention_prefill.cuh"

namespace pipo {

// PIPO_ATTN_KERNEL: auto (default) | split (the CUDA-core kernel) | tc (the tensor-core kernel,
// float16 / bfloat16). Read at every call so tests and benchmarks can switch it.
static AttnKernel attention_kernel_setting() {
  const char* env = std::getenv("PIPO_ATTN_KERNEL");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) return AttnKernel::kAuto;
  if (std::strcmp(env, "split") == 0) return AttnKernel::kSplit;
  TORCH_CHECK(std::strcmp(env, "tc") == 0,
              "PIPO_ATTN_KERNEL: expected one of auto, split, tc, got '", env, "'");
  return AttnKernel::kTensorCore;
}

std::tuple<at::Tensor, at::Tensor> paged_attention_cuda_launch(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const at::Tensor& q_indptr,
    const std::optional<at::Tensor>& tree_mask, std::optional<double> sm_scale, bool return_lse,
    int64_t num_splits) {
  const int64_t head_dim = q.size(2);
  const c10::cuda::CUDAGuard guard(q.device());
  auto [out, lse] = paged_attention_outputs(q, return_lse);

  PagedAttentionParams p{};
  p.q = q.data_ptr();
  p.q_stride_tok = q.stride(0);
  p.q_stride_head = q.stride(1);
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.block_table = block_table.data_ptr<int32_t>();
  p.kv_lens = kv_lens.data_ptr<int32_t>();
  p.q_indptr = q_indptr.data_ptr<int32_t>();
  p.tree_mask = tree_mask.has_value() ? tree_mask->data_ptr<bool>() : nullptr;
  p.mask_cols = tree_mask.has_value() ? tree_mask->size(1) : 0;
  p.max_pages = block_table.size(1);
  p.num_pages = k_cache.size(0);
  p.num_tokens = q.size(0);
  p.out = out.data_ptr();
  p.lse = return_lse ? lse.data_ptr<float>() : nullptr;
  p.batch = static_cast<int>(block_table.size(0));
  p.num_q_heads = static_cast<int>(q.size(1));
  p.num_kv_heads = static_cast<int>(k_cache.size(2));
  p.group = p.num_q_heads / p.num_kv_heads;
  p.head_dim = static_cast<int>(head_dim);
  p.page_size = static_cast<int>(k_cache.size(1));
  const double scale = sm_scale.has_value() ? *sm_scale : 1.0 / std::sqrt(double(head_dim));
  p.scale_log2 = static_cast<float>(scale * M_LOG2E);
  p.dtype = cuda_dtype(q.scalar_type());
  const bool tensor_cores = paged_attention_uses_tensor_cores(p, attention_kernel_setting());
  p.num_splits = num_splits > 0 ? static_cast<int>(num_splits)
                 : tensor_cores ? paged_prefill_auto_splits(p, q.get_device())
                                : paged_attention_auto_splits(p, q.get_device());
  // The workspace size depends on shapes only: a fixed allocation for a captured graph.
  at::Tensor part_out, part_lse;
  if (p.num_splits > 1) {
    const auto f32 = q.options().dtype(at::kFloat);
    part_out = at::empty({p.num_splits, q.size(0), q.size(1), head_dim}, f32);
    part_lse = at::empty({p.num_splits, q.size(0), q.size(1)}, f32);
    p.part_out = part_out.data_ptr<float>();
    p.part_lse = part_lse.data_ptr<float>();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err =
      tensor_cores ? launch_paged_prefill(p, stream) : launch_paged_attention(p, stream);
  TORCH_CHECK(err == cudaSuccess, "paged_attention: CUDA launch failed: ", cudaGetErrorString(err));
  return {out, lse};
}

}  // namespace pipo
