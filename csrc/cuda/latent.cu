// Launch glue of the fused latent projections (arguments are checked in checked.cpp): device
// guard, split-K workspace, current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/all.h>

#include "../latent.h"
#include "pipo/latent.cuh"

namespace pipo {
namespace {

int multiprocessors(const at::Device& device) {
  int sms = 0;
  const cudaError_t err =
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index());
  TORCH_CHECK(err == cudaSuccess, "cudaDeviceGetAttribute failed: ", cudaGetErrorString(err));
  return sms;
}

template <typename T, bool kUnfold>
cudaError_t launch_typed(LatentParams p, const at::Tensor& like) {
  // K-split partial sums from the caching allocator: sized by shapes only, no sync.
  p.splits = latent_split_k<T>(p, multiprocessors(like.device()));
  at::Tensor partial;
  if (p.splits > 1) {
    partial = at::empty({p.splits, p.n, p.o}, like.options().dtype(at::kFloat));
    p.partial = partial.data_ptr<float>();
  }
  return launch_latent<T, kUnfold>(p, c10::cuda::getCurrentCUDAStream());
}

template <bool kUnfold>
void launch(const LatentParams& p, const at::Tensor& like, const char* op) {
  cudaError_t err;
  switch (like.scalar_type()) {
    case at::kFloat:
      err = launch_typed<float, kUnfold>(p, like);
      break;
    case at::kHalf:
      err = launch_typed<__half, kUnfold>(p, like);
      break;
    default:
      err = launch_typed<__nv_bfloat16, kUnfold>(p, like);
  }
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace

at::Tensor fold_pairs_cuda_launch(const at::Tensor& pair_ids, const at::Tensor& embedding,
                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  c10::string_view activation) {
  const c10::cuda::CUDAGuard guard(embedding.device());
  at::Tensor out = at::empty({pair_ids.size(0), weight.size(0)}, embedding.options());
  LatentParams p{};
  p.ids = pair_ids.data_ptr();
  p.ids_64 = pair_ids.scalar_type() == at::kLong;
  p.embedding = embedding.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.n = pair_ids.size(0);
  p.v = embedding.size(0);
  p.h = embedding.size(1);
  p.o = weight.size(0);
  p.silu = parse_activation(activation);
  launch<false>(p, embedding, "fold_pairs");
  return out;
}

at::Tensor unfold_input_cuda_launch(const at::Tensor& token_ids, const at::Tensor& hidden,
                                    const at::Tensor& embedding,
                                    const at::Tensor& embed_norm_weight,
                                    const at::Tensor& hidden_norm_weight, const at::Tensor& weight,
                                    double eps) {
  const c10::cuda::CUDAGuard guard(embedding.device());
  const int64_t n = token_ids.size(0);
  at::Tensor out = at::empty({n, weight.size(0)}, embedding.options());
  // [N, 2] RMSNorm scales from the caching allocator: a fixed size per shape, no sync.
  at::Tensor scale = at::empty({n, 2}, embedding.options().dtype(at::kFloat));
  LatentParams p{};
  p.ids = token_ids.data_ptr();
  p.ids_64 = token_ids.scalar_type() == at::kLong;
  p.embedding = embedding.data_ptr();
  p.hidden = hidden.data_ptr();
  p.hidden_stride = hidden.stride(0);
  p.gamma_e = embed_norm_weight.data_ptr();
  p.gamma_h = hidden_norm_weight.data_ptr();
  p.scale = scale.data_ptr<float>();
  p.weight = weight.data_ptr();
  p.out = out.data_ptr();
  p.n = n;
  p.v = embedding.size(0);
  p.h = embedding.size(1);
  p.o = weight.size(0);
  p.eps = static_cast<float>(eps);
  launch<true>(p, embedding, "unfold_input");
  return out;
}

}  // namespace pipo
