// Launch glue of the latent projections (arguments are checked in checked.cpp): device guard,
// current stream, the fused decode launch or the gather + cuBLAS prefill path.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../latent.h"
#include "dtype.h"
#include "pipo/latent.cuh"

namespace pipo {
namespace {

// Decode sizes: one fused launch. Prefill sizes: the gather kernel writes A [N, P*H], then
// cuBLAS (through ATen, on the current stream) computes A @ W^T with the bias, then SiLU.
template <bool kUnfold>
void launch(const LatentParams& p, const at::Tensor& like, const at::Tensor& weight,
            const std::optional<at::Tensor>& bias, at::Tensor& out, const char* op) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err;
  at::Tensor a;
  if (p.n <= kLatentFusedMaxRows) {
    err = dispatch_dtype(cuda_dtype(like.scalar_type()),
                         [&]<typename T>() { return launch_latent<T, kUnfold>(p, stream); });
  } else {
    a = at::empty({p.n, p.parts * p.h}, like.options());
    err = dispatch_dtype(cuda_dtype(like.scalar_type()), [&]<typename T>() {
      return launch_latent_gather<T, kUnfold>(p, static_cast<T*>(a.data_ptr()), stream);
    });
  }
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
  if (!a.defined()) return;
  if (bias.has_value())
    at::addmm_out(out, *bias, a, weight.t());
  else
    at::mm_out(out, a, weight.t());
  if (p.silu) at::silu_(out);
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
  p.parts = pair_ids.size(1);
  p.silu = parse_activation(activation);
  launch<false>(p, embedding, weight, bias, out, "fold_pairs");
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
  p.parts = 2;
  p.eps = static_cast<float>(eps);
  launch<true>(p, embedding, weight, std::nullopt, out, "unfold_input");
  return out;
}

}  // namespace pipo
