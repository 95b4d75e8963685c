// The counter-based random numbers of every stochastic op, shared by the C++ CPU kernels and the
// CUDA kernels (host and device). Torch-free. pipo_kernels/reference.py (gumbel_noise,
// verify_uniform) and the Triton kernels implement the same integer recipes, so every backend
// draws bit-identical numbers from the same (seed, offset) and the results agree across backends.
//
// sample_tokens (Gumbel-max), 32-bit:
//   row keys:  a = mix32(seed_lo ^ 0x9E3779B9); a = mix32(a ^ seed_hi);
//              a = mix32(a ^ offset_lo); k0 = mix32(a ^ offset_hi); k1 = mix32(k0 ^ 0x85EBCA6B)
//   token v:   h = mix32(mix32(v + k0) ^ k1)        (uint32 arithmetic, wrapping)
//              u = (2 * (h >> 9) + 1) * 2^-24       (exact in float32, in [2^-24, 1 - 2^-24])
//              noise = -log(-log(u))                (float32)
// verify_tree_stochastic, 64-bit (splitmix64):
//   stream:    K = mix64(mix64(seed) + offset)
//   uniform k: u_k = (mix64(K + (k + 1) * 0x9E3779B97F4A7C15) >> 40) * 2^-24   (in [0, 1))
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PIPO_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PIPO_HOST_DEVICE inline
#endif

namespace pipo {

// ---- sample_tokens: 32-bit keys per row, one uniform per vocabulary token -------------------

// A bijective 32-bit finaliser with good avalanche (xor-shift / multiply rounds).
PIPO_HOST_DEVICE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

struct RngKeys {
  uint32_t k0, k1;
};

PIPO_HOST_DEVICE RngKeys rng_keys(int64_t seed, int64_t offset) {
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  uint32_t a = mix32(static_cast<uint32_t>(s) ^ 0x9E3779B9u);
  a = mix32(a ^ static_cast<uint32_t>(s >> 32));
  a = mix32(a ^ static_cast<uint32_t>(o));
  a = mix32(a ^ static_cast<uint32_t>(o >> 32));
  return {a, mix32(a ^ 0x85EBCA6Bu)};
}

// Uniform in (0, 1) on a grid of 2^23 points, exactly representable in float32.
PIPO_HOST_DEVICE float rng_uniform(RngKeys keys, uint32_t token) {
  const uint32_t h = mix32(mix32(token + keys.k0) ^ keys.k1);
  return static_cast<float>(2u * (h >> 9) + 1u) * 5.9604644775390625e-08f;  // 2^-24
}

PIPO_HOST_DEVICE float gumbel_noise(RngKeys keys, uint32_t token) {
#if defined(__CUDA_ARCH__)
  return -logf(-logf(rng_uniform(keys, token)));
#else
  return -std::log(-std::log(rng_uniform(keys, token)));
#endif
}

// ---- verify_tree_stochastic: a 64-bit stream per sequence, uniforms drawn in order ----------

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
