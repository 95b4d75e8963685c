// Latent projections (fold_pairs, unfold_input): torch-free CUDA kernels and launchers.
//
// Both ops are one GEMM out[N, O] = A[N, P*H] @ W[O, P*H]^T whose A row n is P parts of H
// elements read straight from their tables: fold_pairs (P = k tokens per group) takes
// embedding[ids[n, 0]], ..., embedding[ids[n, k-1]]; unfold_input (P = 2) takes embedding[ids[n]]
// and hidden[n], each times its RMSNorm scale (a pre-pass writes the [N, 2] float scales) and
// its norm weight.
//
// Two regimes:
//  - decode (N <= kLatentFusedMaxRows): bound by reading W. One fused launch (after the unfold
//    norm pre-pass): a GEMV-style kernel gives each warp four output rows, streams them once with
//    16-byte loads and keeps every A row's partial sums in registers; the few A rows are re-read
//    from L1/L2.
//  - prefill: bound by the matrix units. launch_latent_gather writes the gathered (and, for
//    unfold, normalised) [N, P*H] rows once and the caller runs a library GEMM (cuBLAS through
//    torch) with bias and SiLU. The gather is one extra pass over N * P*H elements; the fused WMMA
//    tile kernel it replaced was 4-10x slower than eager PyTorch on an H100 at N = 256-2048
//    (benchmarks/NOTES.md).
// A token id outside [0, V) is never followed: its row reads as zeros.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "pipo/common.cuh"

namespace pipo {

struct LatentParams {
  const void* ids;  // fold: [N, parts]; unfold: [N]; int32 or int64 (ids_64)
  bool ids_64;
  const void* embedding;  // [V, H]
  const void* hidden;     // unfold: [N, H], rows hidden_stride elements apart
  int64_t hidden_stride;
  const void* gamma_e;  // unfold: [H] norm weight of the embedding half
  const void* gamma_h;  // unfold: [H] norm weight of the hidden half
  float* scale;         // unfold: [N, 2] float RMSNorm scales (written by the pre-pass)
  const void* weight;   // [O, parts * H]
  const void* bias;     // fold: [O] or nullptr
  void* out;            // [N, O]
  int64_t n, v, h, o;
  int64_t parts;  // fold: k tokens per group; unfold: 2 (embedding, hidden)
  float eps;
  bool silu;
};

namespace latent_detail {

constexpr int kGemvMaxRows = 8;

// The first element of part `part` of A row n, or nullptr when its token id is out of range.
template <typename T, bool kUnfold>
__device__ __forceinline__ const T* row_src(const LatentParams& p, int64_t n, int part) {
  if (kUnfold && part == 1) return static_cast<const T*>(p.hidden) + n * p.hidden_stride;
  const int64_t i = kUnfold ? n : p.parts * n + part;
  const int64_t id =
      p.ids_64 ? static_cast<const int64_t*>(p.ids)[i] : static_cast<const int32_t*>(p.ids)[i];
  if (id < 0 || id >= p.v) return nullptr;
  return static_cast<const T*>(p.embedding) + id * p.h;
}

template <typename T>
__device__ __forceinline__ float finish(const LatentParams& p, float v, int64_t o) {
  if (p.bias != nullptr) v += to_float(static_cast<const T*>(p.bias)[o]);
  if (p.silu) v = v / (1.0f + __expf(-v));
  return v;
}

// RMSNorm scales of unfold_input: scale[n, half] = 1 / sqrt(mean(x^2) + eps) (0 for an
// out-of-range id, whose row reads as zeros anyway). Grid (N, 2), 256 threads.
template <typename T>
__global__ void __launch_bounds__(256) unfold_rms_kernel(LatentParams p) {
  const int64_t n = blockIdx.x;
  const int half = blockIdx.y;
  const T* x = row_src<T, true>(p, n, half);
  float ss = 0.0f;
  if (x != nullptr)
    for (int64_t k = threadIdx.x; k < p.h; k += blockDim.x) {
      const float f = to_float(x[k]);
      ss += f * f;
    }
  __shared__ float partial[8];
  const float total = block_reduce(ss, SumOp{}, 0.0f, partial);
  if (threadIdx.x == 0)
    p.scale[2 * n + half] = x != nullptr ? rsqrtf(total / static_cast<float>(p.h) + p.eps) : 0.0f;
}

// Decode: each warp owns kOuts consecutive outputs and all N <= kRows rows. Lanes stride over K
// in kVec-element (16-byte) steps; every weight element is loaded exactly once.
constexpr int kGemvWarps = 4;
constexpr int kGemvOuts = 4;

template <typename T, bool kUnfold, int kRows, int kVec>
__global__ void __launch_bounds__(kGemvWarps * 32) latent_gemv_kernel(LatentParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t o0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32) * kGemvOuts;
  if (o0 >= p.o) return;
  const int64_t h = p.h;
  float acc[kRows][kGemvOuts] = {};
  for (int part = 0; part < p.parts; ++part) {
    const T* a[kRows];
    float s[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      a[r] = r < p.n ? row_src<T, kUnfold>(p, r, part) : nullptr;
      s[r] = kUnfold && a[r] != nullptr ? p.scale[2 * r + part] : 1.0f;
    }
    const T* gamma = static_cast<const T*>(part == 0 ? p.gamma_e : p.gamma_h);
    const T* w[kGemvOuts];
#pragma unroll
    for (int j = 0; j < kGemvOuts; ++j) {
      // A warp at the end of O repeats its last row; those sums are never stored.
      const int64_t o = o0 + j < p.o ? o0 + j : p.o - 1;
      w[j] = static_cast<const T*>(p.weight) + o * p.parts * h + part * h;
    }
    for (int64_t k = static_cast<int64_t>(lane) * kVec; k < h; k += 32 * kVec) {
      float wv[kGemvOuts][kVec];
#pragma unroll
      for (int j = 0; j < kGemvOuts; ++j) load_floats<kVec, Load::kStream>(w[j] + k, wv[j]);
      float g[kVec];
      if constexpr (kUnfold) load_floats<kVec, Load::kReadOnly>(gamma + k, g);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (a[r] == nullptr) continue;
        float av[kVec];
        load_floats<kVec, Load::kReadOnly>(a[r] + k, av);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const float x = kUnfold ? av[i] * g[i] * s[r] : av[i];
#pragma unroll
          for (int j = 0; j < kGemvOuts; ++j) acc[r][j] = fmaf(x, wv[j][i], acc[r][j]);
        }
      }
    }
  }
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int j = 0; j < kGemvOuts; ++j) {
      const float v = warp_sum(acc[r][j]);
      if (lane == j && r < p.n && o0 + j < p.o)
        out[r * p.o + o0 + j] = from_float<T>(finish<T>(p, v, o0 + j));
    }
  }
}

// Prefill: row n of A = [part 0 | ... | part P-1], each gathered (unfold: times gamma * scale,
// rounded to T like the decode kernel's inputs), zeros for an out-of-range id. Grid (N, P), 256
// threads.
template <typename T, bool kUnfold>
__global__ void __launch_bounds__(256) latent_gather_kernel(LatentParams p, T* a) {
  const int64_t n = blockIdx.x;
  const int part = blockIdx.y;
  const T* src = row_src<T, kUnfold>(p, n, part);
  const T* gamma = static_cast<const T*>(part == 0 ? p.gamma_e : p.gamma_h);
  const float s = kUnfold && src != nullptr ? p.scale[2 * n + part] : 1.0f;
  T* dst = a + (p.parts * n + part) * p.h;
  for (int64_t k = threadIdx.x; k < p.h; k += blockDim.x) {
    float v = src != nullptr ? to_float(src[k]) : 0.0f;
    if constexpr (kUnfold) v *= to_float(gamma[k]) * s;
    dst[k] = from_float<T>(v);
  }
}

template <typename T, bool kUnfold>
cudaError_t launch_prepass(const LatentParams& p, cudaStream_t stream) {
  if constexpr (kUnfold) {
    unfold_rms_kernel<T><<<dim3(static_cast<unsigned>(p.n), 2), 256, 0, stream>>>(p);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

template <typename T, bool kUnfold, int kVec>
cudaError_t launch_gemv(const LatentParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(p.o, kGemvWarps * kGemvOuts)));
  const dim3 block(kGemvWarps * 32);
  if (p.n == 1)
    latent_gemv_kernel<T, kUnfold, 1, kVec><<<grid, block, 0, stream>>>(p);
  else if (p.n == 2)
    latent_gemv_kernel<T, kUnfold, 2, kVec><<<grid, block, 0, stream>>>(p);
  else if (p.n <= 4)
    latent_gemv_kernel<T, kUnfold, 4, kVec><<<grid, block, 0, stream>>>(p);
  else
    latent_gemv_kernel<T, kUnfold, 8, kVec><<<grid, block, 0, stream>>>(p);
  return cudaGetLastError();
}

inline uint64_t addr(const void* ptr) { return reinterpret_cast<uint64_t>(ptr); }

}  // namespace latent_detail

// Up to this many rows the whole op is one fused launch (launch_latent); above, the caller
// gathers with launch_latent_gather and runs a GEMM.
constexpr int64_t kLatentFusedMaxRows = latent_detail::kGemvMaxRows;

// Decode (p.n <= kLatentFusedMaxRows): fold_pairs (kUnfold = false) or unfold_input (true) on
// `stream`; T is float, __half or __nv_bfloat16. For unfold, p.scale must hold N * 2 floats.
// Never synchronises.
template <typename T, bool kUnfold>
cudaError_t launch_latent(const LatentParams& p, cudaStream_t stream) {
  using namespace latent_detail;
  if (p.n == 0 || p.o == 0) return cudaSuccess;
  if (p.n > kGemvMaxRows) return cudaErrorInvalidValue;
  const cudaError_t err = launch_prepass<T, kUnfold>(p, stream);
  if (err != cudaSuccess) return err;
  // 16-byte loads need every row start 16-byte aligned: table bases, row lengths and strides.
  const uint64_t elem = sizeof(T);
  const bool vec =
      widest_vector_bytes({addr(p.embedding), addr(p.weight), p.h * elem,
                           kUnfold ? addr(p.hidden) : 0, kUnfold ? p.hidden_stride * elem : 0,
                           kUnfold ? addr(p.gamma_e) : 0, kUnfold ? addr(p.gamma_h) : 0}) == 16;
  constexpr int kVec = 16 / sizeof(T);
  return vec ? launch_gemv<T, kUnfold, kVec>(p, stream) : launch_gemv<T, kUnfold, 1>(p, stream);
}

// Prefill: writes A [N, parts * H] (row-major, T) for out = A @ W^T (+ bias, SiLU) by the caller.
// For unfold, p.scale must hold N * 2 floats. Never synchronises.
template <typename T, bool kUnfold>
cudaError_t launch_latent_gather(const LatentParams& p, T* a, cudaStream_t stream) {
  using namespace latent_detail;
  if (p.n == 0) return cudaSuccess;
  const cudaError_t err = launch_prepass<T, kUnfold>(p, stream);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(p.n), static_cast<unsigned>(p.parts));
  latent_gather_kernel<T, kUnfold><<<grid, 256, 0, stream>>>(p, a);
  return cudaGetLastError();
}

}  // namespace pipo
