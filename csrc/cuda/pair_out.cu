// Launch glue of pair_out and group_out (arguments are checked in checked.cpp): workspaces from
// the caching allocator (sizes depend on shapes only), device guard, current stream, dtype
// dispatch. Both run the same kernels (pipo/pair_out.cuh); pair_out is one MTP step.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../pair_out.h"
#include "dtype.h"
#include "pipo/pair_out.cuh"

namespace pipo {
namespace {

// hidden [B, H], mtp_hidden [B, J, H] (or [B, H] for J = 1); groups [B, 1 + J] and confidence
// [B, J] (or [B]) already allocated. token1 / tokens / stride as in PairOutParams.
void launch(const at::Tensor& hidden, const at::Tensor& mtp_hidden, int64_t steps,
            const int64_t* token1, const int64_t* tokens, int64_t token_stride,
            const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
            const at::Tensor& fc2_weight, double threshold, int64_t pad_id, double eps,
            at::Tensor& groups, at::Tensor& confidence, const char* op) {
  const int64_t batch = hidden.size(0), h = hidden.size(1);
  if (batch == 0) return;
  const auto f32 = hidden.options().dtype(at::kFloat);
  const int64_t n_blocks = (h + kPairWarps - 1) / kPairWarps;
  at::Tensor xn = at::empty({batch * steps, 2 * h}, f32);
  at::Tensor partial = at::empty({batch * steps, n_blocks}, f32);
  PairOutParams p{};
  p.hidden = hidden.data_ptr();
  p.mtp_hidden = mtp_hidden.data_ptr();
  p.token1 = token1;
  p.tokens = tokens;
  p.token_stride = token_stride;
  p.norm_weight = norm_weight.data_ptr();
  p.fc1 = fc1_weight.data_ptr();
  p.fc2 = fc2_weight.data_ptr();
  p.groups = groups.data_ptr<int64_t>();
  p.confidence = confidence.data_ptr<float>();
  p.xn = xn.data_ptr<float>();
  p.partial = partial.data_ptr<float>();
  p.batch = batch;
  p.steps = steps;
  p.hidden_size = h;
  p.n_blocks = static_cast<int>(n_blocks);
  p.threshold = static_cast<float>(threshold);
  p.eps = static_cast<float>(eps);
  p.pad_id = pad_id;
  const cudaError_t err = dispatch_dtype(cuda_dtype(hidden.scalar_type()), [&]<typename T>() {
    return launch_pair_out<T>(p, c10::cuda::getCurrentCUDAStream());
  });
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pair_out_cuda_launch(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& token1,
    const at::Tensor& token2, const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
    const at::Tensor& fc2_weight, double threshold, int64_t pad_id, double eps) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t batch = hidden.size(0);
  at::Tensor pairs = at::empty({batch, 2}, token1.options());
  at::Tensor confidence = at::empty({batch}, hidden.options().dtype(at::kFloat));
  launch(hidden, mtp_hidden, 1, token1.data_ptr<int64_t>(), token2.data_ptr<int64_t>(), 1,
         norm_weight, fc1_weight, fc2_weight, threshold, pad_id, eps, pairs, confidence,
         "pair_out");
  return {pairs, confidence};
}

std::tuple<at::Tensor, at::Tensor> group_out_cuda_launch(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& tokens,
    const at::Tensor& norm_weight, const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
    double threshold, int64_t pad_id, double eps) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t batch = hidden.size(0), steps = mtp_hidden.size(1);
  at::Tensor groups = at::empty({batch, 1 + steps}, tokens.options());
  at::Tensor confidence = at::empty({batch, steps}, hidden.options().dtype(at::kFloat));
  const int64_t* tok = tokens.data_ptr<int64_t>();
  launch(hidden, mtp_hidden, steps, tok, tok + 1, 1 + steps, norm_weight, fc1_weight, fc2_weight,
         threshold, pad_id, eps, groups, confidence, "group_out");
  return {groups, confidence};
}

}  // namespace pipo
