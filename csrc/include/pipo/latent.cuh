// Fused latent projections (fold_pairs, unfold_input): torch-free CUDA kernels and launchers.
//
// Both ops are one GEMM out[N, O] = A[N, 2H] @ W[O, 2H]^T whose A row n is two half-rows read
// straight from their tables: fold_pairs takes embedding[ids[n, 0]] and embedding[ids[n, 1]];
// unfold_input takes embedding[ids[n]] and hidden[n], each times its RMSNorm scale (a pre-pass
// writes the [N, 2] float scales) and its norm weight. The gathered rows and the [N, 2H]
// concatenation are never written to memory: they are formed while loading A.
//
// Two regimes:
//  - decode (N <= kGemvMaxRows): bound by reading W. A GEMV-style kernel gives each warp four
//    output rows, streams them once with 16-byte loads and keeps every A row's partial sums in
//    registers; the few A rows are re-read from L1/L2.
//  - prefill: bound by the matrix units. A tiled GEMM (tensor-core WMMA for float16/bfloat16,
//    a CUDA-core tile for float32) with the gather and the norm applied while the A tile is
//    staged in shared memory, and the next tile prefetched into registers meanwhile. When the
//    tiles alone cannot fill the GPU (decode-sized batches of 9-256 rows), K is split across
//    blocks and a small kernel adds the [splits, N, O] float partial sums.
// A token id outside [0, V) is never followed: its row reads as zeros.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "pipo/common.cuh"

namespace pipo {

struct LatentParams {
  const void* ids;  // fold: [N, 2]; unfold: [N]; int32 or int64 (ids_64)
  bool ids_64;
  const void* embedding;  // [V, H]
  const void* hidden;     // unfold: [N, H], rows hidden_stride elements apart
  int64_t hidden_stride;
  const void* gamma_e;  // unfold: [H] norm weight of the embedding half
  const void* gamma_h;  // unfold: [H] norm weight of the hidden half
  float* scale;         // unfold: [N, 2] float RMSNorm scales (written by the pre-pass)
  const void* weight;   // [O, 2H]
  const void* bias;     // fold: [O] or nullptr
  void* out;            // [N, O]
  float* partial;       // tiled kernels with splits > 1: [splits, N, O] float partial sums
  int splits;           // tiled kernels: blocks along K (1 = no split); see latent_split_k
  int64_t n, v, h, o;
  float eps;
  bool silu;
};

namespace latent_detail {

constexpr int kGemvMaxRows = 8;

// The first element of half-row `half` of A row n, or nullptr when its token id is out of range.
template <typename T, bool kUnfold>
__device__ __forceinline__ const T* row_src(const LatentParams& p, int64_t n, int half) {
  if (kUnfold && half == 1) return static_cast<const T*>(p.hidden) + n * p.hidden_stride;
  const int64_t i = kUnfold ? n : 2 * n + half;
  const int64_t id =
      p.ids_64 ? static_cast<const int64_t*>(p.ids)[i] : static_cast<const int32_t*>(p.ids)[i];
  if (id < 0 || id >= p.v) return nullptr;
  return static_cast<const T*>(p.embedding) + id * p.h;
}

// Loads kVec consecutive elements as floats (one 16-byte load when kVec * sizeof(T) == 16).
template <typename T, int kVec, bool kStream = false>
__device__ __forceinline__ void load_vec(const T* src, float (&dst)[kVec]) {
  if constexpr (kVec * sizeof(T) == 16) {
    const uint4 raw = kStream ? __ldcs(reinterpret_cast<const uint4*>(src))
                              : __ldg(reinterpret_cast<const uint4*>(src));
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) dst[i] = to_float(v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) dst[i] = to_float(src[i]);
  }
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
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
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < 8; ++w) total += partial[w];
    p.scale[2 * n + half] = x != nullptr ? rsqrtf(total / static_cast<float>(p.h) + p.eps) : 0.0f;
  }
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
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const T* a[kRows];
    float s[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      a[r] = r < p.n ? row_src<T, kUnfold>(p, r, half) : nullptr;
      s[r] = kUnfold && a[r] != nullptr ? p.scale[2 * r + half] : 1.0f;
    }
    const T* gamma = static_cast<const T*>(half == 0 ? p.gamma_e : p.gamma_h);
    const T* w[kGemvOuts];
#pragma unroll
    for (int j = 0; j < kGemvOuts; ++j) {
      // A warp at the end of O repeats its last row; those sums are never stored.
      const int64_t o = o0 + j < p.o ? o0 + j : p.o - 1;
      w[j] = static_cast<const T*>(p.weight) + o * 2 * h + half * h;
    }
    for (int64_t k = static_cast<int64_t>(lane) * kVec; k < h; k += 32 * kVec) {
      float wv[kGemvOuts][kVec];
#pragma unroll
      for (int j = 0; j < kGemvOuts; ++j) load_vec<T, kVec, true>(w[j] + k, wv[j]);
      float g[kVec];
      if constexpr (kUnfold) load_vec<T, kVec>(gamma + k, g);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (a[r] == nullptr) continue;
        float av[kVec];
        load_vec<T, kVec>(a[r] + k, av);
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

// Writes one tiled-kernel result: the finished value, or with a K split this block's raw partial
// sum (every block of the split writes its slot, so the reduction needs no zeroed workspace).
template <typename T>
__device__ __forceinline__ void store_result(const LatentParams& p, T* out, int64_t m, int64_t o,
                                             float v) {
  if (p.splits == 1)
    out[m * p.o + o] = from_float<T>(finish<T>(p, v, o));
  else
    p.partial[(blockIdx.z * p.n + m) * p.o + o] = v;
}

// out[m, o] = finish(sum over splits of partial[s, m, o]); a grid-stride loop over N * O.
template <typename T>
__global__ void __launch_bounds__(256) latent_split_reduce_kernel(LatentParams p) {
  const int64_t total = p.n * p.o;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < p.splits; ++s) v += p.partial[s * total + i];
    static_cast<T*>(p.out)[i] = from_float<T>(finish<T>(p, v, i % p.o));
  }
}

// Stages the A tile (rows m0.., columns k0.. of one half) and the W tile into registers:
// kPerThread vectors of kVec elements each, A already multiplied by gamma * scale (unfold).
// Elements past N, O or H, and rows of out-of-range ids, are zeros.
template <typename T, bool kUnfold, int kRowsTile, int kBK, int kVec, int kThreads>
struct TileLoader {
  static constexpr int kVecsPerRow = kBK / kVec;
  static constexpr int kPerThread = kRowsTile * kVecsPerRow / kThreads;
  static_assert(kPerThread * kThreads == kRowsTile * kVecsPerRow, "tile must split evenly");
  T regs[kPerThread][kVec];

  // is_a: the A tile (gathered rows) rather than the W tile.
  __device__ __forceinline__ void load(const LatentParams& p, bool is_a, int64_t base, int half,
                                       int64_t k0) {
    const int64_t limit = is_a ? p.n : p.o;
    const T* gamma = static_cast<const T*>(half == 0 ? p.gamma_e : p.gamma_h);
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int idx = i * kThreads + threadIdx.x;
      const int row = idx / kVecsPerRow;
      const int64_t k = k0 + (idx % kVecsPerRow) * kVec;
      const int64_t m = base + row;
      const T* src = nullptr;
      float s = 1.0f;
      if (m < limit && k < p.h) {
        if (is_a) {
          src = row_src<T, kUnfold>(p, m, half);
          if (kUnfold && src != nullptr) s = p.scale[2 * m + half];
        } else {
          src = static_cast<const T*>(p.weight) + m * 2 * p.h + half * p.h;
        }
      }
      float v[kVec];
      if (src != nullptr && k + kVec <= p.h) {
        load_vec<T, kVec>(src + k, v);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e)
          v[e] = src != nullptr && k + e < p.h ? to_float(src[k + e]) : 0.0f;
      }
      if (kUnfold && is_a) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) v[e] *= k + e < p.h ? to_float(gamma[k + e]) * s : 0.0f;
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) regs[i][e] = from_float<T>(v[e]);
    }
  }

  // Writes the staged vectors to a [kRowsTile][ld] shared tile.
  __device__ __forceinline__ void store(T* tile, int ld) const {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int idx = i * kThreads + threadIdx.x;
      T* dst = tile + (idx / kVecsPerRow) * ld + (idx % kVecsPerRow) * kVec;
#pragma unroll
      for (int e = 0; e < kVec; ++e) dst[e] = regs[i][e];
    }
  }
};

// Prefill, float16 / bfloat16: block tile kBM x kBN, warps of kWM x kWN, WMMA 16x16x16 with
// float accumulators. The K loop visits the tiles of half 0, then of half 1.
template <typename T, bool kUnfold, int kBM, int kBN, int kWM, int kWN, int kVec>
__global__ void __launch_bounds__((kBM / kWM) * (kBN / kWN) * 32)
    latent_mma_kernel(LatentParams p) {
  using namespace nvcuda;
  constexpr int kBK = 32, kLd = kBK + 8;  // the pad staggers banks; rows stay 16-byte aligned
  constexpr int kWarpsN = kBN / kWN;
  constexpr int kThreads = (kBM / kWM) * kWarpsN * 32;
  constexpr int kFM = kWM / 16, kFN = kWN / 16;
  __shared__ __align__(128) T smem[2][(kBM + kBN) * kLd];
  TileLoader<T, kUnfold, kBM, kBK, kVec, kThreads> a_loader;
  TileLoader<T, kUnfold, kBN, kBK, kVec, kThreads> w_loader;

  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const int warp = threadIdx.x / 32;
  const int wm = warp / kWarpsN, wn = warp % kWarpsN;
  const int64_t tiles_per_half = ceil_div<int64_t>(p.h, kBK);
  const int64_t per_split = ceil_div<int64_t>(2 * tiles_per_half, p.splits);
  const int64_t t_begin = blockIdx.z * per_split;
  const int64_t t_end =
      t_begin + per_split < 2 * tiles_per_half ? t_begin + per_split : 2 * tiles_per_half;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFM][kFN];
#pragma unroll
  for (int i = 0; i < kFM; ++i)
#pragma unroll
    for (int j = 0; j < kFN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  auto stage = [&](int64_t t) {
    const int half = static_cast<int>(t / tiles_per_half);
    const int64_t k0 = (t % tiles_per_half) * kBK;
    a_loader.load(p, true, m0, half, k0);
    w_loader.load(p, false, n0, half, k0);
  };
  if (t_begin < t_end) {
    stage(t_begin);
    a_loader.store(smem[t_begin & 1], kLd);
    w_loader.store(smem[t_begin & 1] + kBM * kLd, kLd);
  }
  __syncthreads();
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int buf = static_cast<int>(t & 1);
    if (t + 1 < t_end) stage(t + 1);  // global loads in flight during the MMAs below
    const T* a_tile = smem[buf] + wm * kWM * kLd;
    const T* w_tile = smem[buf] + kBM * kLd + wn * kWN * kLd;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[kFM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[kFN];
#pragma unroll
      for (int i = 0; i < kFM; ++i) wmma::load_matrix_sync(fa[i], a_tile + i * 16 * kLd + kk, kLd);
#pragma unroll
      for (int j = 0; j < kFN; ++j) wmma::load_matrix_sync(fb[j], w_tile + j * 16 * kLd + kk, kLd);
#pragma unroll
      for (int i = 0; i < kFM; ++i)
#pragma unroll
        for (int j = 0; j < kFN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    if (t + 1 < t_end) {
      // The other buffer was last read in iteration t - 1, before that iteration's barrier.
      a_loader.store(smem[buf ^ 1], kLd);
      w_loader.store(smem[buf ^ 1] + kBM * kLd, kLd);
    }
    __syncthreads();
  }

  // Epilogue through a per-warp 16x16 float scratch carved from the (now idle) tile buffers.
  static_assert(sizeof(smem) >= kThreads / 32 * 256 * sizeof(float), "scratch does not fit");
  float* scratch = reinterpret_cast<float*>(&smem[0][0]) + warp * 256;
  const int lane = threadIdx.x % 32;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < kFM; ++i) {
#pragma unroll
    for (int j = 0; j < kFN; ++j) {
      wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t m = m0 + wm * kWM + i * 16 + e / 16;
        const int64_t o = n0 + wn * kWN + j * 16 + e % 16;
        if (m < p.n && o < p.o) store_result<T>(p, out, m, o, scratch[e]);
      }
      __syncwarp();
    }
  }
}

// Prefill, float32: CUDA-core tile of 64 x 64 outputs, 256 threads of 4 x 4 outputs each, fp32
// FMAs (no TF32, matching torch's default float32 matmul).
template <bool kUnfold, int kVec>
__global__ void __launch_bounds__(256) latent_f32_tile_kernel(LatentParams p) {
  constexpr int kBM = 64, kBN = 64, kBK = 16;
  __shared__ float a_s[kBK][kBM + 4];
  __shared__ float w_s[kBK][kBN + 4];
  TileLoader<float, kUnfold, kBM, kBK, kVec, 256> a_loader;
  TileLoader<float, kUnfold, kBN, kBK, kVec, 256> w_loader;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t tiles_per_half = ceil_div<int64_t>(p.h, kBK);
  const int64_t per_split = ceil_div<int64_t>(2 * tiles_per_half, p.splits);
  const int64_t t_begin = blockIdx.z * per_split;
  const int64_t t_end =
      t_begin + per_split < 2 * tiles_per_half ? t_begin + per_split : 2 * tiles_per_half;
  float acc[4][4] = {};
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int half = static_cast<int>(t / tiles_per_half);
    const int64_t k0 = (t % tiles_per_half) * kBK;
    a_loader.load(p, true, m0, half, k0);
    w_loader.load(p, false, n0, half, k0);
    // Transposed into [k][row] so the inner loop reads 4 consecutive rows per k.
#pragma unroll
    for (int i = 0; i < a_loader.kPerThread; ++i) {
      const int idx = i * 256 + threadIdx.x;
      const int row = idx / (kBK / kVec), kv = (idx % (kBK / kVec)) * kVec;
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        a_s[kv + e][row] = a_loader.regs[i][e];
        w_s[kv + e][row] = w_loader.regs[i][e];
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      float a[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = a_s[k][ty * 4 + i];
        w[i] = w_s[k][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
    }
    __syncthreads();
  }
  float* out = static_cast<float*>(p.out);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t o = n0 + tx * 4 + j;
      if (m < p.n && o < p.o) store_result<float>(p, out, m, o, acc[i][j]);
    }
  }
}

// Block tile of the tiled kernels: float32 64 x 64 (K step 16); float16/bfloat16 32 x 64 for
// decode-sized batches (N <= 256, more blocks to stream the weight), 128 x 128 beyond (K step 32).
struct TiledShape {
  int bm, bn, bk;
};
inline TiledShape tiled_shape(const LatentParams& p, bool is_float) {
  if (is_float) return {64, 64, 16};
  return p.n <= 256 ? TiledShape{32, 64, 32} : TiledShape{128, 128, 32};
}

template <typename T, bool kUnfold, int kVec>
cudaError_t launch_gemm(const LatentParams& p, cudaStream_t stream) {
  if (p.n <= kGemvMaxRows) {
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
  const TiledShape shape = tiled_shape(p, std::is_same_v<T, float>);
  const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(p.o, shape.bn)),
                  static_cast<unsigned>(ceil_div<int64_t>(p.n, shape.bm)),
                  static_cast<unsigned>(p.splits));
  if constexpr (std::is_same_v<T, float>) {
    latent_f32_tile_kernel<kUnfold, kVec><<<grid, 256, 0, stream>>>(p);
  } else if (shape.bm == 32) {
    latent_mma_kernel<T, kUnfold, 32, 64, 32, 16, kVec><<<grid, 128, 0, stream>>>(p);
  } else {
    latent_mma_kernel<T, kUnfold, 128, 128, 64, 32, kVec><<<grid, 256, 0, stream>>>(p);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || p.splits == 1) return err;
  const int64_t blocks = ceil_div<int64_t>(p.n * p.o, 256);
  latent_split_reduce_kernel<T>
      <<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

inline uint64_t addr(const void* ptr) { return reinterpret_cast<uint64_t>(ptr); }

}  // namespace latent_detail

// Blocks along K for the tiled kernels: enough blocks for two waves over `sms` multiprocessors,
// at most 8 splits and at least 8 K tiles per split. The caller allocates p.partial with
// splits * N * O floats when this returns more than 1.
template <typename T>
int latent_split_k(const LatentParams& p, int sms) {
  using namespace latent_detail;
  if (p.n <= kGemvMaxRows || p.o == 0) return 1;
  const TiledShape shape = tiled_shape(p, std::is_same_v<T, float>);
  const int64_t blocks = ceil_div<int64_t>(p.o, shape.bn) * ceil_div<int64_t>(p.n, shape.bm);
  const int64_t tiles = 2 * ceil_div<int64_t>(p.h, shape.bk);
  int64_t splits = ceil_div<int64_t>(2 * static_cast<int64_t>(sms), blocks);
  splits = splits < 8 ? splits : 8;
  splits = splits < tiles / 8 ? splits : tiles / 8;
  return splits > 1 ? static_cast<int>(splits) : 1;
}

// Launches fold_pairs (kUnfold = false) or unfold_input (true) on `stream`; T is float, __half
// or __nv_bfloat16. For unfold, p.scale must hold N * 2 floats; p.splits (>= 1) and p.partial
// as chosen with latent_split_k. Never synchronises.
template <typename T, bool kUnfold>
cudaError_t launch_latent(const LatentParams& p, cudaStream_t stream) {
  using namespace latent_detail;
  if (p.n == 0 || p.o == 0) return cudaSuccess;
  if constexpr (kUnfold) {
    unfold_rms_kernel<T><<<dim3(static_cast<unsigned>(p.n), 2), 256, 0, stream>>>(p);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  // 16-byte loads need every row start 16-byte aligned: table bases, row lengths and strides.
  const uint64_t elem = sizeof(T);
  const bool vec =
      widest_vector_bytes({addr(p.embedding), addr(p.weight), p.h * elem,
                           kUnfold ? addr(p.hidden) : 0, kUnfold ? p.hidden_stride * elem : 0,
                           kUnfold ? addr(p.gamma_e) : 0, kUnfold ? addr(p.gamma_h) : 0}) == 16;
  constexpr int kVec = 16 / sizeof(T);
  return vec ? launch_gemm<T, kUnfold, kVec>(p, stream) : launch_gemm<T, kUnfold, 1>(p, stream);
}

}  // namespace pipo
