// The counter-based Gumbel noise of pipo::sample_tokens, shared by the C++ CPU kernels and the
// CUDA kernels (host and device); pipo_kernels/reference.py (gumbel_noise) and the Triton kernel
// implement the same integer recipe, so every backend adds the same noise to every logit.
//
//   row keys:  a = mix32(seed_lo ^ 0x9E3779B9); a = mix32(a ^ seed_hi);
//              a = mix32(a ^ offset_lo); k0 = mix32(a ^ offset_hi); k1 = mix32(k0 ^ 0x85EBCA6B)
//   token v:   h = mix32(mix32(v + k0) ^ k1)        (uint32 arithmetic, wrapping)
//              u = (2 * (h >> 9) + 1) * 2^-24       (exact in float32, in [2^-24, 1 - 2^-24])
//              noise = -log(-log(u))                (float32)
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PIPO_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PIPO_HOST_DEVICE inline
#endif

namespace pipo {

// Largest top_k and num_candidates served by the fused (tiled) path of sample_tokens.
constexpr int kMaxCandidates = 64;

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

}  // namespace pipo
