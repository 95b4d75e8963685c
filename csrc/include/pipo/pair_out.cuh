// pair_out (PIPO's confidence head and gate): torch-free CUDA kernels and their launcher.
//
// Three launches, none of which synchronises with the host: the RMSNorm of [hidden; mtp_hidden]
// into a float32 workspace (one block per row), fc1 with SiLU reduced against fc2 (each warp owns
// fc1 rows; one partial sum per (row, block)), and the sigmoid and gate (one thread per row).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "pipo/common.cuh"

namespace pipo {

struct PairOutParams {
  const void* hidden;       // [B, H]
  const void* mtp_hidden;   // [B, H]
  const int64_t* token1;    // [B]
  const int64_t* token2;    // [B]
  const void* norm_weight;  // [2H]
  const void* fc1;          // [H, 2H]
  const void* fc2;          // [1, H]
  int64_t* pairs;           // [B, 2]
  float* confidence;        // [B]
  float* xn;                // workspace [B, 2H]
  float* partial;           // workspace [B, n_blocks]
  int64_t batch, hidden_size;
  int n_blocks;
  float threshold, eps;
  int64_t pad_id;
};

namespace detail {

// pair_out, kernel 1: xn[b] = rmsnorm([hidden[b]; mtp_hidden[b]]) * norm_weight, float32.
template <typename T>
__global__ void pair_norm_kernel(PairOutParams p) {
  __shared__ float sh[32];
  const int64_t b = blockIdx.x, H = p.hidden_size;
  const T* hid = static_cast<const T*>(p.hidden) + b * H;
  const T* mtp = static_cast<const T*>(p.mtp_hidden) + b * H;
  const T* nw = static_cast<const T*>(p.norm_weight);
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < 2 * H; j += blockDim.x) {
    const float x = to_float(j < H ? hid[j] : mtp[j - H]);
    ss += x * x;
  }
  ss = block_reduce(ss, SumOp{}, 0.0f, sh);
  const float rstd = rsqrtf(ss / static_cast<float>(2 * H) + p.eps);
  for (int64_t j = threadIdx.x; j < 2 * H; j += blockDim.x) {
    const float x = to_float(j < H ? hid[j] : mtp[j - H]);
    p.xn[b * 2 * H + j] = x * rstd * to_float(nw[j]);
  }
}

// pair_out, kernel 2: each warp owns fc1 rows; partial[b][block] = sum over the block's rows of
// silu(fc1[j] . xn[b]) * fc2[j].
template <typename T>
__global__ void pair_fc_kernel(PairOutParams p) {
  __shared__ float sh[32];
  const int64_t H = p.hidden_size;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  const T* fc1 = static_cast<const T*>(p.fc1);
  const T* fc2 = static_cast<const T*>(p.fc2);
  for (int64_t b = 0; b < p.batch; ++b) {
    float contrib = 0.0f;
    if (j < H) {
      float acc = 0.0f;
      for (int64_t i = lane; i < 2 * H; i += 32)
        acc += to_float(fc1[j * 2 * H + i]) * p.xn[b * 2 * H + i];
      acc = warp_sum(acc);
      contrib = acc / (1.0f + __expf(-acc)) * to_float(fc2[j]);
    }
    // One value per warp (lanes agree); sum the warps.
    const float total = block_reduce(lane == 0 ? contrib : 0.0f, SumOp{}, 0.0f, sh);
    if (threadIdx.x == 0) p.partial[b * p.n_blocks + blockIdx.x] = total;
  }
}

// pair_out, kernel 3: confidence and the gate, one thread per row.
__global__ void pair_gate_kernel(PairOutParams p) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  float acc = 0.0f;
  for (int i = 0; i < p.n_blocks; ++i) acc += p.partial[b * p.n_blocks + i];
  const float conf = 1.0f / (1.0f + __expf(-acc));
  p.confidence[b] = conf;
  const bool commit = p.threshold < 0.0f || (p.threshold < 1.0f && conf >= p.threshold);
  p.pairs[2 * b] = p.token1[b];
  p.pairs[2 * b + 1] = commit ? p.token2[b] : p.pad_id;
}

}  // namespace detail

constexpr int kPairWarps = 8;

template <typename T>
cudaError_t launch_pair_out(const PairOutParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  detail::pair_norm_kernel<T><<<static_cast<unsigned>(p.batch), 256, 0, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  detail::pair_fc_kernel<T><<<static_cast<unsigned>(p.n_blocks), kPairWarps * 32, 0, stream>>>(p);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  detail::
      pair_gate_kernel<<<static_cast<unsigned>(ceil_div<int64_t>(p.batch, 128)), 128, 0, stream>>>(
          p);
  return cudaGetLastError();
}

}  // namespace pipo
