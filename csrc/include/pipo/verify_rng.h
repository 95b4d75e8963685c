// Counter-based random numbers of the stochastic tree verification, shared by the C++ CPU and the
// CUDA kernels (and mirrored in pipo_kernels/reference.py and the Triton kernel) so that every
// backend draws bit-identical uniforms from (seed, offset, step). Torch-free.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PIPO_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PIPO_HOST_DEVICE inline
#endif

namespace pipo {

// The splitmix64 finaliser: a bijection of 64-bit integers with full avalanche.
PIPO_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The stream of one sequence: distinct (seed, offset) pairs give unrelated streams.
PIPO_HOST_DEVICE uint64_t verify_stream(int64_t seed, int64_t offset) {
  return mix64(mix64(static_cast<uint64_t>(seed)) + static_cast<uint64_t>(offset));
}

// Uniform number `step` of a stream, in [0, 1): 24 random bits, exact in float32.
PIPO_HOST_DEVICE float verify_uniform(uint64_t stream, int64_t step) {
  const uint64_t h = mix64(stream + static_cast<uint64_t>(step + 1) * 0x9E3779B97F4A7C15ull);
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

}  // namespace pipo
