// Launch glue of pair_out (arguments are checked in checked.cpp): workspaces from the caching
// allocator (sizes depend on shapes only), device guard, current stream, dtype dispatch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../pair_out.h"
#include "dtype.h"
#include "pipo/pair_out.cuh"

namespace pipo {

std::tuple<at::Tensor, at::Tensor> pair_out_cuda_launch(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& token1,
    const at::Tensor& token2, const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
    const at::Tensor& fc2_weight, double threshold, int64_t pad_id, double eps) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t batch = hidden.size(0), h = hidden.size(1);
  const auto f32 = hidden.options().dtype(at::kFloat);
  at::Tensor pairs = at::empty({batch, 2}, token1.options());
  at::Tensor confidence = at::empty({batch}, f32);
  if (batch == 0) return {pairs, confidence};
  const int64_t n_blocks = (h + kPairWarps - 1) / kPairWarps;
  at::Tensor xn = at::empty({batch, 2 * h}, f32);
  at::Tensor partial = at::empty({batch, n_blocks}, f32);
  PairOutParams p{};
  p.hidden = hidden.data_ptr();
  p.mtp_hidden = mtp_hidden.data_ptr();
  p.token1 = token1.data_ptr<int64_t>();
  p.token2 = token2.data_ptr<int64_t>();
  p.norm_weight = norm_weight.data_ptr();
  p.fc1 = fc1_weight.data_ptr();
  p.fc2 = fc2_weight.data_ptr();
  p.pairs = pairs.data_ptr<int64_t>();
  p.confidence = confidence.data_ptr<float>();
  p.xn = xn.data_ptr<float>();
  p.partial = partial.data_ptr<float>();
  p.batch = batch;
  p.hidden_size = h;
  p.n_blocks = static_cast<int>(n_blocks);
  p.threshold = static_cast<float>(threshold);
  p.eps = static_cast<float>(eps);
  p.pad_id = pad_id;
  const cudaError_t err = dispatch_dtype(cuda_dtype(hidden.scalar_type()), [&]<typename T>() {
    return launch_pair_out<T>(p, c10::cuda::getCurrentCUDAStream());
  });
  TORCH_CHECK(err == cudaSuccess, "pair_out: CUDA launch failed: ", cudaGetErrorString(err));
  return {pairs, confidence};
}

}  // namespace pipo
