// Draft-tree verification: torch-free CUDA kernels and their launchers.
//
// Greedy: one warp per sequence. Every lane takes nodes of its tree and walks each up to the root
// (at most max_depth steps), checking draft[node] == target[parent] on the way; a warp max over
// (depth, -index) of the accepted nodes picks the end of the accepted path.
// Stochastic: one block per sequence. The tree walk is sequential and uniform across the block;
// every pass over the vocabulary (residual mass, inverse-CDF sampling) is spread over the block.
// Neither kernel synchronises with the host; invalid indices (q_indptr, parents, tokens) are
// clamped or ignored, never followed.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "pipo/common.cuh"
#include "pipo/rng.h"

namespace pipo {

struct VerifyTreeParams {
  const int64_t* draft_tokens;   // [num_nodes]
  const int32_t* parents;        // [num_nodes], local indices, -1 for roots
  const int32_t* q_indptr;       // [batch + 1]
  const int64_t* target_tokens;  // [num_nodes] (greedy only)
  const float* draft_probs;      // [num_nodes, vocab] (stochastic only)
  const float* target_probs;     // [num_nodes, vocab] (stochastic only)
  const int64_t* seeds;          // [batch] (stochastic only)
  const int64_t* offsets;        // [batch] (stochastic only)
  int32_t* accept_len;           // [batch]
  int32_t* accept_index;         // [batch, max_depth + 1]
  int64_t* bonus_token;          // [batch]
  int64_t batch;
  int64_t num_nodes;
  int64_t vocab;
  int32_t max_depth;
};

namespace detail {

constexpr int kVerifyWarpsPerBlock = 4;
constexpr int kStochasticThreads = 256;

// The sequence's node range, clamped to [0, num_nodes].
__device__ __forceinline__ void tree_range(const VerifyTreeParams& p, int64_t b, int64_t& start,
                                           int64_t& n) {
  int64_t s = p.q_indptr[b], e = p.q_indptr[b + 1];
  s = s < 0 ? 0 : (s > p.num_nodes ? p.num_nodes : s);
  e = e < s ? s : (e > p.num_nodes ? p.num_nodes : e);
  start = s;
  n = e - s;
}

__global__ void verify_tree_kernel(VerifyTreeParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kVerifyWarpsPerBlock + (threadIdx.x >> 5);
  if (b >= p.batch) return;  // uniform across the warp
  int64_t start, n;
  tree_range(p, b, start, n);
  const int32_t* par = p.parents + start;
  const int64_t* draft = p.draft_tokens + start;
  const int64_t* target = p.target_tokens + start;

  // key = depth << 32 | (INT32_MAX - node): the max is the deepest node, lowest index on ties.
  int64_t key = -1;
  for (int64_t i = lane; i < n; i += 32) {
    int64_t cur = i, depth = 0;
    bool ok = true;
    while (ok && cur != 0) {
      const int64_t up = par[cur];
      ok = up >= 0 && up < cur && ++depth <= p.max_depth && draft[cur] == target[up];
      cur = up;
    }
    if (ok) {
      const int64_t k = (depth << 32) | (INT32_MAX - i);
      key = k > key ? k : key;
    }
  }
  key = warp_reduce(key, MaxOp{});
  const bool found = key >= 0;  // false only for an empty tree
  const int64_t best_depth = found ? key >> 32 : 0;
  const int64_t best = found ? INT32_MAX - (key & 0xffffffff) : 0;
  int32_t* row = p.accept_index + b * (p.max_depth + 1);
  for (int64_t j = lane; j <= p.max_depth; j += 32) {
    if (!found || j > best_depth) row[j] = -1;
  }
  if (lane == 0) {
    p.accept_len[b] = static_cast<int32_t>(best_depth);
    p.bonus_token[b] = found ? target[best] : -1;
    if (found) {
      int64_t cur = best;
      for (int64_t d = best_depth; d > 0; --d) {
        row[d] = static_cast<int32_t>(cur);
        cur = par[cur];
      }
      row[0] = static_cast<int32_t>(cur);
    }
  }
}

// max(0, t[v] - scale * q[v]) with explicit rounding (no fused multiply-add), so it matches the
// CPU kernel and the reference bit for bit.
__device__ __forceinline__ float residual_at(const float* t, const float* q, float scale,
                                             int64_t v) {
  return fmaxf(0.0f, __fsub_rn(t[v], __fmul_rn(scale, q[v])));
}

// Mass of the residual, summed in double and rounded once (like every backend).
__device__ float residual_mass(const float* t, const float* q, float scale, int64_t vocab,
                               double* smem) {
  double sum = 0.0;
  for (int64_t v = threadIdx.x; v < vocab; v += kStochasticThreads) {
    sum += residual_at(t, q, scale, v);
  }
  return static_cast<float>(block_reduce(sum, SumOp{}, 0.0, smem));
}

// Inverse-CDF sample of the residual: the first v whose running (double) sum exceeds target;
// the last v with positive mass when rounding leaves the total at or below target; -1 if none.
// The vocabulary is scanned in chunks of one element per thread: a warp scan, then the warp
// totals, carried from chunk to chunk.
__device__ int64_t sample_residual(const float* t, const float* q, float scale, int64_t vocab,
                                   double target, double* smem) {
  constexpr int kWarps = kStochasticThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double carry = 0.0;
  int64_t first = INT64_MAX, last_positive = -1;
  for (int64_t base = 0; base < vocab; base += kStochasticThreads) {
    const int64_t v = base + threadIdx.x;
    const float pv = v < vocab ? residual_at(t, q, scale, v) : 0.0f;
    if (pv > 0.0f) last_positive = v;
    double cum = pv;
    for (int off = 1; off < 32; off <<= 1) {
      const double up = __shfl_up_sync(kFullMask, cum, off);
      if (lane >= off) cum += up;
    }
    if (lane == 31) smem[warp] = cum;
    __syncthreads();
    double before = carry, chunk = 0.0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) before += smem[w];
      chunk += smem[w];
    }
    __syncthreads();
    if (v < vocab && before + cum > target && v < first) first = v;
    carry += chunk;
  }
  first = block_reduce(first, MinOp{}, int64_t{INT64_MAX}, reinterpret_cast<int64_t*>(smem));
  last_positive =
      block_reduce(last_positive, MaxOp{}, int64_t{INT64_MIN}, reinterpret_cast<int64_t*>(smem));
  return first != INT64_MAX ? first : last_positive;
}

__global__ void __launch_bounds__(kStochasticThreads)
    verify_tree_stochastic_kernel(VerifyTreeParams p) {
  __shared__ double smem[kStochasticThreads / 32];
  const int64_t b = blockIdx.x;
  int64_t start, n;
  tree_range(p, b, start, n);
  int32_t* row = p.accept_index + b * (p.max_depth + 1);
  if (n == 0) {
    for (int64_t j = threadIdx.x; j <= p.max_depth; j += kStochasticThreads) row[j] = -1;
    if (threadIdx.x == 0) {
      p.accept_len[b] = 0;
      p.bonus_token[b] = -1;
    }
    return;
  }
  const int32_t* par = p.parents + start;
  const int64_t* draft = p.draft_tokens + start;
  const uint64_t stream = verify_stream(p.seeds[b], p.offsets[b]);
  // Every thread runs the same walk (same loads, same block-wide sums), so the control flow
  // stays uniform and the __syncthreads inside the reductions are reached by all.
  int64_t u = 0, depth = 0, step = 0;
  float scale = 0.0f, mass = 0.0f;
  if (threadIdx.x == 0) row[0] = 0;
  while (true) {
    const float* t = p.target_probs + (start + u) * p.vocab;
    const float* q = p.draft_probs + (start + u) * p.vocab;
    scale = 0.0f;
    mass = residual_mass(t, q, scale, p.vocab, smem);
    int64_t next = -1;
    for (int64_t c = u + 1; c < n && depth < p.max_depth; ++c) {
      const int64_t x = draft[c];
      if (par[c] != u || x < 0 || x >= p.vocab) continue;
      const float r = verify_uniform(stream, step++);
      if (__fmul_rn(__fmul_rn(r, q[x]), mass) < residual_at(t, q, scale, x)) {
        next = c;
        break;
      }
      const float new_scale = __fadd_rn(scale, mass);
      const float new_mass = residual_mass(t, q, new_scale, p.vocab, smem);
      if (new_mass > 0.0f) {
        scale = new_scale;
        mass = new_mass;
      }
    }
    if (next < 0) break;
    u = next;
    ++depth;
    if (threadIdx.x == 0) row[depth] = static_cast<int32_t>(u);
  }
  for (int64_t j = depth + 1 + threadIdx.x; j <= p.max_depth; j += kStochasticThreads) row[j] = -1;
  const float* t = p.target_probs + (start + u) * p.vocab;
  const float* q = p.draft_probs + (start + u) * p.vocab;
  const float target = __fmul_rn(verify_uniform(stream, step), mass);
  const int64_t bonus = sample_residual(t, q, scale, p.vocab, static_cast<double>(target), smem);
  if (threadIdx.x == 0) {
    p.accept_len[b] = static_cast<int32_t>(depth);
    p.bonus_token[b] = bonus;
  }
}

}  // namespace detail

// Greedy verification on `stream`. Returns the launch status; never synchronises.
inline cudaError_t launch_verify_tree(const VerifyTreeParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(p.batch, detail::kVerifyWarpsPerBlock)));
  detail::verify_tree_kernel<<<grid, detail::kVerifyWarpsPerBlock * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

// Stochastic verification on `stream`: one block per sequence. Never synchronises.
inline cudaError_t launch_verify_tree_stochastic(const VerifyTreeParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.batch));
  detail::verify_tree_stochastic_kernel<<<grid, detail::kStochasticThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace pipo
