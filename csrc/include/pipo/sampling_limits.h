// Limits of sample_tokens shared by the CPU kernel, the CUDA kernels and the argument checks
// (pipo_kernels.sampling.MAX_CANDIDATES mirrors them). Torch-free and CUDA-free.
#pragma once

namespace pipo {

// Largest top_k and num_candidates served by the fused (tiled) path of sample_tokens.
constexpr int kMaxCandidates = 64;

}  // namespace pipo
