// Launch glue of sample_tokens (arguments are checked in checked.cpp): workspaces
// from the caching allocator (sizes depend on shapes only), device guard, current stream, dtype
// dispatch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../sampling.h"
#include "dtype.h"
#include "pipo/sampling.cuh"

namespace pipo {
namespace {

int multiprocessors(int device) {
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) n = 0;
  return n > 0 ? n : 108;
}

int64_t max_block_smem(int device) {
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    n = 0;
  return n > 0 ? n : 48 * 1024;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_tokens_cuda_launch(
    const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& presence_penalty,
    const std::optional<at::Tensor>& seen, const at::Tensor& seeds, const at::Tensor& offsets,
    int64_t num_candidates) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t batch = hidden.size(0), h = hidden.size(1), vocab = lm_head.size(0);
  const auto long_opts = hidden.options().dtype(at::kLong);
  const auto f32 = hidden.options().dtype(at::kFloat);
  at::Tensor tokens = at::empty({batch}, long_opts);
  at::Tensor token_logprob = at::empty({batch}, f32);
  at::Tensor cand_ids = at::empty({batch, num_candidates}, long_opts);
  at::Tensor cand_logprobs = at::empty({batch, num_candidates}, f32);
  if (batch == 0) return {tokens, token_logprob, cand_ids, cand_logprobs};

  const int device = hidden.get_device();
  int rb =
      sample_rows_per_block(h, static_cast<int>(hidden.element_size()), max_block_smem(device));
  TORCH_CHECK(rb > 0, "hidden: hidden size ", h, " is too large for sample_tokens on this GPU");
  while (rb > 1 && rb / 2 >= batch) rb /= 2;  // no padded rows for small batches
  // About two blocks per multiprocessor in all, each over a contiguous part of the vocabulary.
  const int64_t sub_tiles = (vocab + 31) / 32;
  const int64_t row_blocks = (batch + rb - 1) / rb;
  const int64_t want = std::max<int64_t>(1, 2 * multiprocessors(device) / row_blocks);
  const int64_t span_tiles =
      (sub_tiles + std::min(want, sub_tiles) - 1) / std::min(want, sub_tiles);
  const int64_t span = span_tiles * 32;
  const int64_t n_parts = (vocab + span - 1) / span;

  at::Tensor part_m = at::empty({batch, n_parts}, f32);
  at::Tensor part_s = at::empty({batch, n_parts}, f32);
  at::Tensor part_best = at::empty({batch, n_parts}, long_opts);
  at::Tensor part_best_z = at::empty({batch, n_parts}, f32);
  at::Tensor part_cand = at::empty({batch, n_parts, kMaxCandidates}, long_opts);
  at::Tensor part_n = at::empty({batch, n_parts}, hidden.options().dtype(at::kInt));
  // Written only for rows on the exact slow path (top_k > 64, or top_k = 0 with top_p < 1).
  at::Tensor full_z = at::empty({batch, vocab}, f32);
  at::Tensor slow = at::empty({batch}, hidden.options().dtype(at::kInt));
  at::Tensor lse = at::empty({batch}, f32);

  SampleParams p{};
  p.hidden = hidden.data_ptr();
  p.lm_head = lm_head.data_ptr();
  p.temperature = temperature.data_ptr<float>();
  p.top_k = top_k.data_ptr<int32_t>();
  p.top_p = top_p.data_ptr<float>();
  p.presence_penalty = presence_penalty.data_ptr<float>();
  p.seen = seen.has_value() ? seen->data_ptr<int32_t>() : nullptr;
  p.seeds = seeds.data_ptr<int64_t>();
  p.offsets = offsets.data_ptr<int64_t>();
  p.tokens = tokens.data_ptr<int64_t>();
  p.token_logprob = token_logprob.data_ptr<float>();
  p.cand_ids = cand_ids.data_ptr<int64_t>();
  p.cand_logprobs = cand_logprobs.data_ptr<float>();
  p.part_m = part_m.data_ptr<float>();
  p.part_s = part_s.data_ptr<float>();
  p.part_best = part_best.data_ptr<int64_t>();
  p.part_best_z = part_best_z.data_ptr<float>();
  p.part_cand = part_cand.data_ptr<int64_t>();
  p.part_n = part_n.data_ptr<int32_t>();
  p.full_z = full_z.data_ptr<float>();
  p.slow = slow.data_ptr<int32_t>();
  p.lse = lse.data_ptr<float>();
  p.batch = batch;
  p.hidden_size = h;
  p.vocab = vocab;
  p.words = seen_words(vocab);
  p.num_candidates = static_cast<int>(num_candidates);
  p.n_parts = static_cast<int>(n_parts);
  p.part_span = static_cast<int>(span);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = dispatch_dtype(cuda_dtype(hidden.scalar_type()), [&]<typename T>() {
    return launch_sample_tokens<T>(p, rb, stream);
  });
  TORCH_CHECK(err == cudaSuccess, "sample_tokens: CUDA launch failed: ", cudaGetErrorString(err));
  return {tokens, token_logprob, cand_ids, cand_logprobs};
}

}  // namespace pipo
