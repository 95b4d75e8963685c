// pair_out and group_out (PIPO's confidence head and gate): torch-free CUDA kernels and their
// launcher, one set for both: pair_out is group_out with one MTP step (J = 1).
//
// Three launches, none of which synchronises with the host: the RMSNorm of [hidden[b];
// mtp_hidden[b, j]] into a float32 workspace (one block per (b, j) row), fc1 with SiLU reduced
// against fc2 (each warp owns fc1 rows; one partial sum per (row, block)), and the sigmoids and
// the prefix gate (one thread per batch row, walking its J steps).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "pipo/common.cuh"

namespace pipo {

struct PairOutParams {
  const void* hidden;       // [B, H]
  const void* mtp_hidden;   // [B, J, H]
  const int64_t* token1;    // token 1 of row b at token1[b * token_stride]
  const int64_t* tokens;    // token j + 2 of row b at tokens[b * token_stride + j]
  int64_t token_stride;     // pair_out: 1 ([B] tensors); group_out: 1 + J (rows of [B, 1 + J])
  const void* norm_weight;  // [2H]
  const void* fc1;          // [H, 2H]
  const void* fc2;          // [1, H]
  int64_t* groups;          // [B, 1 + J]
  float* confidence;        // [B, J]
  float* xn;                // workspace [B * J, 2H]
  float* partial;           // workspace [B * J, n_blocks]
  int64_t batch, steps, hidden_size;
  int n_blocks;
  float threshold, eps;
  int64_t pad_id;
};

namespace detail {

// Kernel 1: xn[r] = rmsnorm([hidden[b]; mtp_hidden[b, j]]) * norm_weight, float32, for the row
// r = b * J + j.
template <typename T>
__global__ void pair_norm_kernel(PairOutParams p) {
  __shared__ float sh[32];
  const int64_t r = blockIdx.x, b = r / p.steps, H = p.hidden_size;
  const T* hid = static_cast<const T*>(p.hidden) + b * H;
  const T* mtp = static_cast<const T*>(p.mtp_hidden) + r * H;
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
    p.xn[r * 2 * H + j] = x * rstd * to_float(nw[j]);
  }
}

// Kernel 2: each warp owns fc1 rows; partial[r][block] = sum over the block's rows of
// silu(fc1[j] . xn[r]) * fc2[j].
template <typename T>
__global__ void pair_fc_kernel(PairOutParams p) {
  __shared__ float sh[32];
  const int64_t H = p.hidden_size;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  const T* fc1 = static_cast<const T*>(p.fc1);
  const T* fc2 = static_cast<const T*>(p.fc2);
  const int64_t rows = p.batch * p.steps;
  for (int64_t r = 0; r < rows; ++r) {
    float contrib = 0.0f;
    if (j < H) {
      float acc = 0.0f;
      for (int64_t i = lane; i < 2 * H; i += 32)
        acc += to_float(fc1[j * 2 * H + i]) * p.xn[r * 2 * H + i];
      acc = warp_sum(acc);
      contrib = acc / (1.0f + __expf(-acc)) * to_float(fc2[j]);
    }
    // One value per warp (lanes agree); sum the warps.
    const float total = block_reduce(lane == 0 ? contrib : 0.0f, SumOp{}, 0.0f, sh);
    if (threadIdx.x == 0) p.partial[r * p.n_blocks + blockIdx.x] = total;
  }
}

// Kernel 3: the confidences and the gate, one thread per batch row: the longest prefix of
// passing steps is committed, every later position is PAD.
__global__ void pair_gate_kernel(PairOutParams p) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.batch) return;
  int64_t* out = p.groups + b * (1 + p.steps);
  out[0] = p.token1[b * p.token_stride];
  bool alive = true;
  for (int64_t j = 0; j < p.steps; ++j) {
    const int64_t r = b * p.steps + j;
    float acc = 0.0f;
    for (int i = 0; i < p.n_blocks; ++i) acc += p.partial[r * p.n_blocks + i];
    const float conf = 1.0f / (1.0f + __expf(-acc));
    p.confidence[r] = conf;
    alive = alive && (p.threshold < 0.0f || (p.threshold < 1.0f && conf >= p.threshold));
    out[1 + j] = alive ? p.tokens[b * p.token_stride + j] : p.pad_id;
  }
}

}  // namespace detail

constexpr int kPairWarps = 8;

// pair_out (steps = 1, token_stride = 1) and group_out (token_stride = 1 + steps). T is float,
// __half or __nv_bfloat16. Never synchronises.
template <typename T>
cudaError_t launch_pair_out(const PairOutParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  if (p.steps > 0) {
    const auto rows = static_cast<unsigned>(p.batch * p.steps);
    detail::pair_norm_kernel<T><<<rows, 256, 0, stream>>>(p);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    detail::pair_fc_kernel<T><<<static_cast<unsigned>(p.n_blocks), kPairWarps * 32, 0, stream>>>(p);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  detail::
      pair_gate_kernel<<<static_cast<unsigned>(ceil_div<int64_t>(p.batch, 128)), 128, 0, stream>>>(
          p);
  return cudaGetLastError();
}

}  // namespace pipo
