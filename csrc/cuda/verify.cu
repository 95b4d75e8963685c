// Launch glue of the tree-verification kernels (arguments are checked in checked.cpp): device
// guard, current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include "../verify.h"
#include "pipo/verify.cuh"

namespace pipo {
namespace {

using VerifyOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Fixed-size outputs (B and max_depth are known on the host), written in full by the kernels.
VerifyOutputs new_outputs(const at::Tensor& like, int64_t batch, int64_t max_depth) {
  return {at::empty({batch}, like.options().dtype(at::kInt)),
          at::empty({batch, max_depth + 1}, like.options().dtype(at::kInt)),
          at::empty({batch}, like.options().dtype(at::kLong))};
}

VerifyTreeParams base_params(const at::Tensor& draft_tokens, const at::Tensor& parents,
                             const at::Tensor& q_indptr, VerifyOutputs& out, int64_t max_depth) {
  VerifyTreeParams p{};
  p.draft_tokens = draft_tokens.data_ptr<int64_t>();
  p.parents = parents.data_ptr<int32_t>();
  p.q_indptr = q_indptr.data_ptr<int32_t>();
  p.accept_len = std::get<0>(out).data_ptr<int32_t>();
  p.accept_index = std::get<1>(out).data_ptr<int32_t>();
  p.bonus_token = std::get<2>(out).data_ptr<int64_t>();
  p.batch = q_indptr.size(0) - 1;
  p.num_nodes = draft_tokens.size(0);
  p.max_depth = static_cast<int32_t>(max_depth);
  return p;
}

}  // namespace

VerifyOutputs verify_tree_cuda_launch(const at::Tensor& draft_tokens, const at::Tensor& parents,
                                      const at::Tensor& q_indptr, const at::Tensor& target_tokens,
                                      int64_t max_depth) {
  const c10::cuda::CUDAGuard guard(draft_tokens.device());
  auto out = new_outputs(draft_tokens, q_indptr.size(0) - 1, max_depth);
  VerifyTreeParams p = base_params(draft_tokens, parents, q_indptr, out, max_depth);
  p.target_tokens = target_tokens.data_ptr<int64_t>();
  const cudaError_t err = launch_verify_tree(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "verify_tree: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

VerifyOutputs verify_tree_stochastic_cuda_launch(
    const at::Tensor& draft_tokens, const at::Tensor& parents, const at::Tensor& q_indptr,
    const at::Tensor& draft_probs, const at::Tensor& target_probs, const at::Tensor& seeds,
    const at::Tensor& offsets, int64_t max_depth) {
  const c10::cuda::CUDAGuard guard(draft_tokens.device());
  auto out = new_outputs(draft_tokens, q_indptr.size(0) - 1, max_depth);
  VerifyTreeParams p = base_params(draft_tokens, parents, q_indptr, out, max_depth);
  p.draft_probs = draft_probs.data_ptr<float>();
  p.target_probs = target_probs.data_ptr<float>();
  p.seeds = seeds.data_ptr<int64_t>();
  p.offsets = offsets.data_ptr<int64_t>();
  p.vocab = draft_probs.size(1);
  const cudaError_t err = launch_verify_tree_stochastic(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess,
              "verify_tree_stochastic: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace pipo
