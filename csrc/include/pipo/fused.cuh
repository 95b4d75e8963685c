// Fused per-layer ops: torch-free CUDA kernels and their launchers.
//
// fused_add_rmsnorm: one block per row; residual = round(residual + x), then
//   x = round(round(residual * rsqrt(mean(residual^2) + eps)) * weight), float32 accumulation.
// qk_norm_rope_append: one warp per (token, head), q heads first, then k heads. A warp stages
//   its head's D <= kMaxHeadDim channels in shared memory, normalises (optional weight), applies
//   rotate-half RoPE from a float32 [max_pos, rot_dim] cos|sin table, and writes the q head back
//   in place or the k head (plus the matching v head) to the token's cache slot.
// Both round through the storage dtype T at the same steps as the model's PyTorch code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "pipo/common.cuh"

namespace pipo {

struct AddRMSNormParams {
  void* x;             // [n, h] T; normalised output on return
  void* residual;      // [n, h] T; updated
  const void* weight;  // [h] T
  int64_t n;
  int64_t h;
  float eps;
};

struct QKRopeParams {
  void* q;                      // [n, q_heads, d] T, rows q_stride elements apart; in place
  const void* k;                // [n, kv_heads, d] T, rows k_stride elements apart
  const void* v;                // [n, kv_heads, d] T, rows v_stride elements apart
  const void* q_norm_weight;    // [d] T or nullptr
  const void* k_norm_weight;    // [d] T or nullptr
  const float* cos_sin;         // [max_pos, 2 * half]: cos then sin
  const int64_t* positions;     // [n]; out of range: the token is skipped
  void* k_cache;                // [num_slots, kv_heads, d] T
  void* v_cache;                // [num_slots, kv_heads, d] T
  const int64_t* slot_mapping;  // [n]; negative or >= num_slots: no cache write
  int64_t n, q_heads, kv_heads, d, half;
  int64_t q_stride, k_stride, v_stride;
  int64_t max_pos, num_slots;
  float eps;
};

constexpr int kMaxHeadDim = 512;  // channels a warp stages in shared memory

namespace fused_detail {

__device__ __forceinline__ float warp_reduce_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

constexpr int kNormThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kNormThreads) add_rmsnorm_kernel(AddRMSNormParams p) {
  const int64_t row = blockIdx.x;
  T* x = static_cast<T*>(p.x) + row * p.h;
  T* r = static_cast<T*>(p.residual) + row * p.h;
  const T* w = static_cast<const T*>(p.weight);
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < p.h; i += blockDim.x) {
    const T s = from_float<T>(to_float(r[i]) + to_float(x[i]));
    r[i] = s;  // each thread re-reads only the elements it wrote: no barrier needed
    const float f = to_float(s);
    ss += f * f;
  }
  __shared__ float partial[kNormThreads / 32];
  ss = warp_reduce_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kNormThreads / 32; ++i) total += partial[i];
  const float inv = rsqrtf(total / static_cast<float>(p.h) + p.eps);
  for (int64_t i = threadIdx.x; i < p.h; i += blockDim.x) {
    x[i] = from_float<T>(round_to<T>(to_float(r[i]) * inv) * to_float(w[i]));
  }
}

constexpr int kRopeWarps = 4;

template <typename T>
__global__ void __launch_bounds__(kRopeWarps * 32) qk_norm_rope_kernel(QKRopeParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t heads = p.q_heads + p.kv_heads;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kRopeWarps + threadIdx.x / 32;
  if (item >= p.n * heads) return;
  const int64_t t = item / heads, h = item % heads;
  const int64_t pos = p.positions[t];
  if (pos < 0 || pos >= p.max_pos) return;
  const bool is_q = h < p.q_heads;
  const T* src;
  T* dst;
  const T* w;
  if (is_q) {
    dst = static_cast<T*>(p.q) + t * p.q_stride + h * p.d;
    src = dst;
    w = static_cast<const T*>(p.q_norm_weight);
  } else {
    const int64_t slot = p.slot_mapping[t];
    if (slot < 0 || slot >= p.num_slots) return;
    const int64_t kh = h - p.q_heads;
    src = static_cast<const T*>(p.k) + t * p.k_stride + kh * p.d;
    const int64_t off = (slot * p.kv_heads + kh) * p.d;
    dst = static_cast<T*>(p.k_cache) + off;
    w = static_cast<const T*>(p.k_norm_weight);
    const T* vs = static_cast<const T*>(p.v) + t * p.v_stride + kh * p.d;
    T* vd = static_cast<T*>(p.v_cache) + off;
    for (int64_t i = lane; i < p.d; i += 32) vd[i] = vs[i];
  }
  // The head is staged in shared memory: a lane's rotation partner (channel i + half) may be
  // another lane's, and q is rewritten in place, so every read happens before any write.
  __shared__ float stage[kRopeWarps][kMaxHeadDim];
  float* row = stage[threadIdx.x / 32];
  float ss = 0.0f;
  for (int64_t i = lane; i < p.d; i += 32) {
    const float f = to_float(src[i]);
    row[i] = f;
    ss += f * f;
  }
  if (w != nullptr) {
    const float inv = rsqrtf(warp_reduce_sum(ss) / static_cast<float>(p.d) + p.eps);
    for (int64_t i = lane; i < p.d; i += 32)
      row[i] = round_to<T>(round_to<T>(row[i] * inv) * to_float(w[i]));
  }
  __syncwarp();
  const float* cos = p.cos_sin + pos * 2 * p.half;
  const float* sin = cos + p.half;
  for (int64_t i = lane; i < p.half; i += 32) {
    const float x1 = row[i], x2 = row[i + p.half];
    dst[i] = from_float<T>(x1 * cos[i] - x2 * sin[i]);
    dst[i + p.half] = from_float<T>(x2 * cos[i] + x1 * sin[i]);
  }
  for (int64_t i = 2 * p.half + lane; i < p.d; i += 32) dst[i] = from_float<T>(row[i]);
}

}  // namespace fused_detail

// Launches on `stream`; returns the launch status, never synchronises.
template <typename T>
cudaError_t launch_fused_add_rmsnorm(const AddRMSNormParams& p, cudaStream_t stream) {
  if (p.n == 0 || p.h == 0) return cudaSuccess;
  fused_detail::add_rmsnorm_kernel<T>
      <<<static_cast<unsigned>(p.n), fused_detail::kNormThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// p.d must be at most kMaxHeadDim (checked by the caller).
template <typename T>
cudaError_t launch_qk_norm_rope_append(const QKRopeParams& p, cudaStream_t stream) {
  const int64_t items = p.n * (p.q_heads + p.kv_heads);
  if (items == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(ceil_div<int64_t>(items, fused_detail::kRopeWarps));
  fused_detail::qk_norm_rope_kernel<T><<<blocks, fused_detail::kRopeWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace pipo
