// sample_tokens: torch-free CUDA kernels and their launcher.
//
// sample_tokens runs in three launches, none of which synchronises with the host:
//  1. sample_tiles_kernel, grid (row blocks, vocabulary parts): a block owns RB batch rows (their
//     hidden states in shared memory) and a contiguous part of the vocabulary, walked in
//     sub-tiles of 32 tokens (4 per warp; each lane reads 16-byte vectors of the LM-head rows).
//     Per row it keeps the running max / sum of exponentials, the best packed (value, id) key
//     (greedy argmax or Gumbel-max winner) and a sorted list of its best k_track <= 64 keys in
//     shared memory, and writes these per (row, part). Rows on the exact slow path (top_k > 64,
//     or top_k = 0 with top_p < 1) also write their z to the [B, V] workspace.
//  2. sample_merge_kernel, one block per row: merges the parts; the k_track best keys are those
//     at or above tau = max over full parts of their k_track-th key, sorted in shared memory
//     (bitonic), or, if more than kMergeCap keys pass tau, selected one by one. Thread 0 applies
//     top-k / top-p to the sorted list and draws the token, or flags the row as slow.
//  3. sample_exact_kernel, one block per row, returns at once unless the row is flagged: exact
//     top-k and top-p thresholds by bisection on the float order of z over the workspace, then
//     one Gumbel-max pass with ties at the threshold admitted by ascending id.
// A (value, id) pair packs into an int64 whose signed order is (value ascending, id descending).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "pipo/common.cuh"
#include "pipo/rng.h"
#include "pipo/sampling_limits.h"

namespace pipo {

struct SampleParams {
  const void* hidden;             // [B, H]
  const void* lm_head;            // [V, H]
  const float* temperature;       // [B]
  const int32_t* top_k;           // [B]
  const float* top_p;             // [B]
  const float* presence_penalty;  // [B]
  const int32_t* seen;            // [B, words] or nullptr
  const int64_t* seeds;           // [B]
  const int64_t* offsets;         // [B]
  int64_t* tokens;                // [B]
  float* token_logprob;           // [B]
  int64_t* cand_ids;              // [B, num_candidates]
  float* cand_logprobs;           // [B, num_candidates]
  // Workspaces (sizes from the launcher's workspace_* helpers).
  float* part_m;       // [B, n_parts]
  float* part_s;       // [B, n_parts]
  int64_t* part_best;  // [B, n_parts]
  float* part_best_z;  // [B, n_parts]
  int64_t* part_cand;  // [B, n_parts, kMaxCandidates]
  int32_t* part_n;     // [B, n_parts]
  float* full_z;       // [B, V]
  int32_t* slow;       // [B]
  float* lse;          // [B]
  int64_t batch, hidden_size, vocab, words;
  int num_candidates;
  int n_parts;
  int part_span;  // vocabulary tokens per part, a multiple of 32
};

namespace detail {

constexpr int kSampleThreads = 256;
constexpr int kSubTile = 32;
constexpr int kMergeCap = 1024;
constexpr int64_t kMinKey = INT64_MIN;
__device__ __forceinline__ int32_t order_key(float z) {
  const int32_t b = __float_as_int(z);
  return b >= 0 ? b : b ^ 0x7FFFFFFF;
}
__device__ __forceinline__ float key_value(int32_t o) {
  return __int_as_float(o >= 0 ? o : o ^ 0x7FFFFFFF);
}
__device__ __forceinline__ int64_t pack(float z, int64_t id) {
  return (static_cast<int64_t>(order_key(z)) * 4294967296LL) | (0xFFFFFFFFLL - id);
}
__device__ __forceinline__ float unpack_value(int64_t key) {
  return key_value(static_cast<int32_t>(key >> 32));
}
__device__ __forceinline__ int64_t unpack_id(int64_t key) {
  return 0xFFFFFFFFLL - (key & 0xFFFFFFFFLL);
}

struct RowMode {
  bool greedy, small_k, slow_k, nucleus_only, need_winner;
  int k_track;
  float t_eff;
};

__device__ __forceinline__ RowMode row_mode(float t, int32_t k, float p, int64_t vocab,
                                            int num_candidates) {
  RowMode m;
  m.greedy = !(t > 0.0f);
  const bool limit_k = k > 0 && k < vocab;
  m.small_k = !m.greedy && limit_k && k <= kMaxCandidates;
  m.slow_k = !m.greedy && limit_k && k > kMaxCandidates;
  m.nucleus_only = !m.greedy && !limit_k && p < 1.0f;
  m.need_winner = !m.greedy && !limit_k && p >= 1.0f;
  int track = num_candidates;
  if (m.small_k) track = max(track, static_cast<int>(k));
  if (m.nucleus_only) track = static_cast<int>(vocab < kMaxCandidates ? vocab : kMaxCandidates);
  m.k_track = track;
  m.t_eff = m.greedy ? 1.0f : t;
  return m;
}

template <typename T, int RB, int VEC>
__global__ void __launch_bounds__(kSampleThreads) sample_tiles_kernel(SampleParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t H = p.hidden_size;
  T* sh_hidden = reinterpret_cast<T*>(smem);
  float* sh_logits = reinterpret_cast<float*>(smem + ((RB * H * sizeof(T) + 15) / 16) * 16);
  int64_t* sh_cand = reinterpret_cast<int64_t*>(sh_logits + RB * kSubTile);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * RB;
  const int part = blockIdx.y;
  const int64_t v_begin = static_cast<int64_t>(part) * p.part_span;
  const int64_t v_end = p.vocab < v_begin + p.part_span ? p.vocab : v_begin + p.part_span;
  const T* hidden = static_cast<const T*>(p.hidden);
  const T* lm_head = static_cast<const T*>(p.lm_head);

  for (int64_t i = threadIdx.x; i < RB * H; i += blockDim.x) {
    const int64_t r = row0 + i / H;
    sh_hidden[i] = r < p.batch ? hidden[r * H + i % H] : from_float<T>(0.0f);
  }

  // Per-row state, held by warp `warp` for row row0 + warp (uniform across its lanes).
  const int64_t my_row = row0 + warp;
  const bool has_row = warp < RB && my_row < p.batch;
  RowMode mode{};
  RngKeys keys{};
  float penalty = 0.0f;
  const int32_t* seen_row = nullptr;
  if (has_row) {
    mode = row_mode(p.temperature[my_row], p.top_k[my_row], p.top_p[my_row], p.vocab,
                    p.num_candidates);
    keys = rng_keys(p.seeds[my_row], p.offsets[my_row]);
    penalty = p.presence_penalty[my_row];
    if (p.seen != nullptr) seen_row = p.seen + my_row * p.words;
  }
  const bool write_full = has_row && (mode.nucleus_only || mode.slow_k);
  float run_m = -INFINITY, run_s = 0.0f, best_z = -INFINITY;
  int64_t best = kMinKey;
  int n_cand = 0;
  int64_t* list = sh_cand + warp * kMaxCandidates;
  __syncthreads();

  for (int64_t sub = v_begin; sub < v_end; sub += kSubTile) {
    float acc[4][RB];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int b = 0; b < RB; ++b) acc[r][b] = 0.0f;
    const int64_t v_warp = sub + warp * 4;
    for (int64_t h = static_cast<int64_t>(lane) * VEC; h < H; h += 32 * VEC) {
      float w[4][VEC];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        if (v_warp + r < v_end) {
          load_floats<VEC, Load::kPlain>(lm_head + (v_warp + r) * H + h, w[r]);
        } else {
#pragma unroll
          for (int i = 0; i < VEC; ++i) w[r][i] = 0.0f;
        }
      }
#pragma unroll
      for (int b = 0; b < RB; ++b) {
        float x[VEC];
        load_floats<VEC, Load::kPlain>(sh_hidden + b * H + h, x);
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[r][b] = fmaf(w[r][i], x[i], acc[r][b]);
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int b = 0; b < RB; ++b) {
        const float t = warp_sum(acc[r][b]);
        if (lane == 0) sh_logits[b * kSubTile + warp * 4 + r] = t;
      }
    __syncthreads();

    if (has_row) {
      const int64_t v = sub + lane;
      const bool valid = v < v_end;
      float x = sh_logits[warp * kSubTile + lane];
      if (seen_row != nullptr && valid &&
          ((static_cast<uint32_t>(seen_row[v >> 5]) >> (v & 31)) & 1u)) {
        x -= penalty;
      }
      const float z = valid ? x / mode.t_eff : -INFINITY;
      if (write_full && valid) p.full_z[my_row * p.vocab + v] = z;
      const float tile_max = warp_max(z);
      const float m_new = max(run_m, tile_max);
      run_s = run_s * __expf(run_m - m_new) + warp_sum(valid ? __expf(z - m_new) : 0.0f);
      run_m = m_new;
      const float score = mode.need_winner ? z + gumbel_noise(keys, static_cast<uint32_t>(v)) : z;
      const int64_t key = valid ? pack(score, v) : kMinKey;
      const int64_t key_max = warp_max(key);
      if (key_max > best) {
        const int src = __ffs(__ballot_sync(kFullMask, key == key_max)) - 1;
        best = key_max;
        best_z = __shfl_sync(kFullMask, z, src);
      }
      if (mode.k_track > 0) {
        const int64_t ckey = valid ? pack(z, v) : kMinKey;
        auto beats = [&](int64_t c) {
          return c != kMinKey && (n_cand < mode.k_track || c > list[mode.k_track - 1]);
        };
        unsigned pending = __ballot_sync(kFullMask, beats(ckey));
        while (pending != 0) {
          const int src = __ffs(pending) - 1;
          const int64_t c = __shfl_sync(kFullMask, ckey, src);
          const bool gt0 = lane < n_cand && list[lane] > c;
          const bool gt1 = lane + 32 < n_cand && list[lane + 32] > c;
          const int pos =
              __popc(__ballot_sync(kFullMask, gt0)) + __popc(__ballot_sync(kFullMask, gt1));
          const int last = min(n_cand, mode.k_track - 1);
          const int64_t old0 = lane >= 1 ? list[lane - 1] : 0;
          const int64_t old1 = list[lane + 31];
          __syncwarp();
          if (lane == pos) list[lane] = c;
          if (lane > pos && lane <= last) list[lane] = old0;
          if (lane + 32 == pos) list[lane + 32] = c;
          if (lane + 32 > pos && lane + 32 <= last) list[lane + 32] = old1;
          __syncwarp();
          n_cand = min(n_cand + 1, mode.k_track);
          pending &= ~(1u << src);
          pending &= __ballot_sync(kFullMask, beats(ckey));
        }
      }
    }
    __syncthreads();
  }

  if (has_row) {
    const int64_t out = my_row * p.n_parts + part;
    if (lane == 0) {
      p.part_m[out] = run_m;
      p.part_s[out] = run_s;
      p.part_best[out] = best;
      p.part_best_z[out] = best_z;
      p.part_n[out] = n_cand;
    }
    for (int j = lane; j < n_cand; j += 32) p.part_cand[out * kMaxCandidates + j] = list[j];
  }
}

// Picks the token from the sorted list (len entries) of a row: thread 0 only.
__device__ void finish_row(const SampleParams& p, int64_t row, const RowMode& mode, float lse,
                           const int64_t* list, int len, float top_p, RngKeys keys) {
  const int n_allowed = mode.small_k ? p.top_k[row] : len;
  float lse_a = lse;
  if (mode.small_k) {
    const float zmax = unpack_value(list[0]);
    float s = 0.0f;
    for (int i = 0; i < n_allowed; ++i) s += __expf(unpack_value(list[i]) - zmax);
    lse_a = zmax + __logf(s);
  }
  int n_nuc = n_allowed;
  if (top_p < 1.0f) {
    float mass = 0.0f;
    int i = 0;
    for (; i < n_allowed && mass < top_p; ++i) mass += __expf(unpack_value(list[i]) - lse_a);
    if (mass < top_p && mode.nucleus_only && len < p.vocab) {
      p.slow[row] = 1;  // the nucleus reaches past the 64 best tokens
      return;
    }
    n_nuc = i;
  }
  int pick = 0;
  float best = -INFINITY, s = 0.0f;
  const float zmax = unpack_value(list[0]);
  for (int i = 0; i < n_nuc; ++i) {
    const float z = unpack_value(list[i]);
    const float score = z + gumbel_noise(keys, static_cast<uint32_t>(unpack_id(list[i])));
    if (score > best) {
      best = score;
      pick = i;
    }
    s += __expf(z - zmax);
  }
  p.tokens[row] = unpack_id(list[pick]);
  p.token_logprob[row] = unpack_value(list[pick]) - (zmax + __logf(s));
}

__global__ void __launch_bounds__(kSampleThreads) sample_merge_kernel(SampleParams p) {
  __shared__ int64_t sh_keys[kMergeCap];
  __shared__ int64_t sh_red64[32];
  __shared__ float sh_redf[32];
  __shared__ int sh_redi[32];
  __shared__ int sh_count;
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const RowMode mode =
      row_mode(p.temperature[row], p.top_k[row], p.top_p[row], p.vocab, p.num_candidates);
  const int64_t base = row * p.n_parts;
  float m = -INFINITY;
  int64_t best = kMinKey;
  for (int i = tid; i < p.n_parts; i += blockDim.x) {
    m = max(m, p.part_m[base + i]);
    best = max(best, p.part_best[base + i]);
  }
  m = block_reduce(m, MaxOp{}, -INFINITY, sh_redf);
  best = block_reduce(best, MaxOp{}, kMinKey, sh_red64);
  float s = 0.0f, best_z = -INFINITY;
  for (int i = tid; i < p.n_parts; i += blockDim.x) {
    const float pm = p.part_m[base + i];
    if (pm > -INFINITY) s += p.part_s[base + i] * __expf(pm - m);
    if (p.part_best[base + i] == best) best_z = p.part_best_z[base + i];
  }
  s = block_reduce(s, SumOp{}, 0.0f, sh_redf);
  best_z = block_reduce(best_z, MaxOp{}, -INFINITY, sh_redf);
  const float lse = m + __logf(s);
  if (tid == 0) {
    p.lse[row] = lse;
    p.slow[row] = mode.slow_k ? 1 : 0;
  }

  // The k_track best keys, sorted, into sh_keys[0 .. k).
  const int k = mode.k_track;
  if (k > 0) {
    int64_t tau = kMinKey;
    for (int i = tid; i < p.n_parts; i += blockDim.x) {
      if (p.part_n[base + i] >= k) tau = max(tau, p.part_cand[(base + i) * kMaxCandidates + k - 1]);
    }
    tau = block_reduce(tau, MaxOp{}, kMinKey, sh_red64);
    int count = 0;
    for (int i = tid; i < p.n_parts; i += blockDim.x) {
      const int n = p.part_n[base + i];
      for (int j = 0; j < n; ++j) count += p.part_cand[(base + i) * kMaxCandidates + j] >= tau;
    }
    count = block_reduce(count, SumOp{}, 0, sh_redi);
    if (count <= kMergeCap) {
      int size = 64;
      while (size < count) size *= 2;
      for (int i = tid; i < size; i += blockDim.x) sh_keys[i] = kMinKey;
      if (tid == 0) sh_count = 0;
      __syncthreads();
      for (int i = tid; i < p.n_parts; i += blockDim.x) {
        const int n = p.part_n[base + i];
        for (int j = 0; j < n; ++j) {
          const int64_t key = p.part_cand[(base + i) * kMaxCandidates + j];
          if (key >= tau) sh_keys[atomicAdd(&sh_count, 1)] = key;
        }
      }
      __syncthreads();
      for (int kk = 2; kk <= size; kk <<= 1) {
        for (int jj = kk >> 1; jj > 0; jj >>= 1) {
          for (int i = tid; i < size; i += blockDim.x) {
            const int ixj = i ^ jj;
            if (ixj > i) {
              const int64_t a = sh_keys[i], b = sh_keys[ixj];
              const bool descending = (i & kk) == 0;
              if (descending ? a < b : a > b) {
                sh_keys[i] = b;
                sh_keys[ixj] = a;
              }
            }
          }
          __syncthreads();
        }
      }
    } else {
      // Rare: too many keys pass tau. Select the k best one at a time.
      int64_t prev = INT64_MAX;
      for (int r = 0; r < k; ++r) {
        int64_t cur = kMinKey;
        for (int i = tid; i < p.n_parts; i += blockDim.x) {
          const int n = p.part_n[base + i];
          for (int j = 0; j < n; ++j) {
            const int64_t key = p.part_cand[(base + i) * kMaxCandidates + j];
            if (key < prev) cur = max(cur, key);
          }
        }
        cur = block_reduce(cur, MaxOp{}, kMinKey, sh_red64);
        if (tid == 0) sh_keys[r] = cur;
        prev = cur;
      }
      __syncthreads();
    }
    for (int j = tid; j < p.num_candidates; j += blockDim.x) {
      p.cand_ids[row * p.num_candidates + j] = unpack_id(sh_keys[j]);
      p.cand_logprobs[row * p.num_candidates + j] = unpack_value(sh_keys[j]) - lse;
    }
  }
  if (tid != 0 || mode.slow_k) return;
  if (mode.greedy || mode.need_winner) {
    p.tokens[row] = unpack_id(best);
    p.token_logprob[row] = best_z - lse;
    return;
  }
  const RngKeys keys = rng_keys(p.seeds[row], p.offsets[row]);
  finish_row(p, row, mode, lse, sh_keys, k, p.top_p[row], keys);
}

struct ExactShared {
  float f[32];
  int64_t l[32];
  int i[32];
  int warp_ties[32];
};

__device__ int64_t count_ge(const float* z, int64_t V, int64_t thr, ExactShared& sh) {
  int64_t c = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) c += order_key(z[v]) >= thr;
  return block_reduce(c, SumOp{}, int64_t{0}, sh.l);
}

// Sum of exp(z - ref) over the z whose order key is > thr.
__device__ float mass_above(const float* z, int64_t V, int64_t thr, float ref, ExactShared& sh) {
  float s = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    if (order_key(z[v]) > thr) s += __expf(z[v] - ref);
  }
  return block_reduce(s, SumOp{}, 0.0f, sh.f);
}

__global__ void __launch_bounds__(kSampleThreads) sample_exact_kernel(SampleParams p) {
  __shared__ ExactShared sh;
  const int64_t row = blockIdx.x;
  if (p.slow[row] == 0) return;
  const int64_t V = p.vocab;
  const float* z = p.full_z + row * V;
  const int32_t k = p.top_k[row];
  const float top_p = p.top_p[row];
  const int64_t k_allowed = (k > 0 && k < V) ? k : V;
  float zmax = -INFINITY;
  int64_t kmin = INT32_MAX, kmax = INT32_MIN;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    zmax = max(zmax, z[v]);
    const int64_t o = order_key(z[v]);
    kmin = min(kmin, o);
    kmax = max(kmax, o);
  }
  zmax = block_reduce(zmax, MaxOp{}, -INFINITY, sh.f);
  kmin = block_reduce(kmin, MinOp{}, int64_t{INT32_MAX}, sh.l);
  kmax = block_reduce(kmax, MaxOp{}, int64_t{INT32_MIN}, sh.l);
  // theta: the largest order key t with count(key >= t) >= k_allowed.
  int64_t lo = kmin, hi = kmax + 1;
  if (k_allowed < V) {
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (count_ge(z, V, mid, sh) >= k_allowed)
        lo = mid;
      else
        hi = mid;
    }
  }
  const int64_t theta = lo;
  const int64_t ties_k = k_allowed - count_ge(z, V, theta + 1, sh);
  const float z_theta = key_value(static_cast<int32_t>(theta));
  float lse_a = zmax + __logf(mass_above(z, V, theta, zmax, sh) + ties_k * __expf(z_theta - zmax));
  // z*: the largest t >= theta whose top-k mass at or above t reaches top_p.
  lo = theta;
  hi = kmax + 1;
  if (top_p < 1.0f) {
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;  // > theta
      if (mass_above(z, V, mid - 1, lse_a, sh) >= top_p)
        lo = mid;
      else
        hi = mid;
    }
  }
  const int64_t zstar = lo;
  const float z_star = key_value(static_cast<int32_t>(zstar));
  int64_t avail = ties_k;
  if (zstar != theta) avail = count_ge(z, V, zstar, sh) - count_ge(z, V, zstar + 1, sh);
  int64_t r = avail;
  if (top_p < 1.0f) {
    const float above = mass_above(z, V, zstar, lse_a, sh);
    const int64_t need = static_cast<int64_t>(ceilf((top_p - above) / __expf(z_star - lse_a)));
    r = min(avail, need > 1 ? need : int64_t{1});
  }
  // Gumbel-max and log-sum-exp over the nucleus; ties at z* by ascending id.
  const RngKeys keys = rng_keys(p.seeds[row], p.offsets[row]);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int64_t best = kMinKey;
  float best_z = -INFINITY, m_n = -INFINITY, s_n = 0.0f;
  int64_t ties_before = 0;
  for (int64_t c = 0; c < V; c += blockDim.x) {
    const int64_t v = c + threadIdx.x;
    const bool ok = v < V;
    const float zv = ok ? z[v] : -INFINITY;
    const int64_t o = order_key(zv);
    const bool tie = ok && o == zstar;
    const unsigned ballot = __ballot_sync(kFullMask, tie);
    __syncthreads();
    if (lane == 0) sh.warp_ties[warp] = __popc(ballot);
    __syncthreads();
    int64_t rank = ties_before + __popc(ballot & ((1u << lane) - 1u));
    int chunk_ties = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
      if (w < warp) rank += sh.warp_ties[w];
      chunk_ties += sh.warp_ties[w];
    }
    ties_before += chunk_ties;
    const bool member = ok && (o > zstar || (tie && rank < r));
    if (member) {
      const int64_t key = pack(zv + gumbel_noise(keys, static_cast<uint32_t>(v)), v);
      if (key > best) {
        best = key;
        best_z = zv;
      }
      const float m_new = max(m_n, zv);
      s_n = s_n * __expf(m_n - m_new) + __expf(zv - m_new);
      m_n = m_new;
    }
  }
  const int64_t win = block_reduce(best, MaxOp{}, kMinKey, sh.l);
  const float mall = block_reduce(m_n, MaxOp{}, -INFINITY, sh.f);
  const float sall =
      block_reduce(m_n > -INFINITY ? s_n * __expf(m_n - mall) : 0.0f, SumOp{}, 0.0f, sh.f);
  const float wz = block_reduce(best == win ? best_z : -INFINITY, MaxOp{}, -INFINITY, sh.f);
  if (threadIdx.x == 0) {
    p.tokens[row] = unpack_id(win);
    p.token_logprob[row] = wz - (mall + __logf(sall));
  }
}

}  // namespace detail

// Rows of the batch per stage-1 block: the largest of 8, 4, 2, 1 whose hidden states fit in
// max_smem_bytes of shared memory (0 when even one row does not fit).
inline int sample_rows_per_block(int64_t hidden_size, int elem_size, int64_t max_smem_bytes) {
  for (int rb = 8; rb >= 1; rb /= 2) {
    const int64_t bytes = ((rb * hidden_size * elem_size + 15) / 16) * 16 +
                          rb * detail::kSubTile * 4 + 8 * kMaxCandidates * 8;
    if (bytes <= max_smem_bytes) return rb;
  }
  return 0;
}

inline int64_t sample_smem_bytes(int rb, int64_t hidden_size, int elem_size) {
  return ((rb * hidden_size * elem_size + 15) / 16) * 16 + rb * detail::kSubTile * 4 +
         8 * kMaxCandidates * 8;
}

// Launches the three stages on `stream`. T: float, __half or __nv_bfloat16. p.n_parts and
// p.part_span must be set (see sample_tokens_cuda) and rb = sample_rows_per_block(...).
template <typename T>
cudaError_t launch_sample_tokens(const SampleParams& p, int rb, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = p.hidden_size % kVec == 0 && reinterpret_cast<uint64_t>(p.lm_head) % 16 == 0 &&
                   reinterpret_cast<uint64_t>(p.hidden) % 16 == 0;
  const int64_t smem = sample_smem_bytes(rb, p.hidden_size, sizeof(T));
  const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(p.batch, rb)),
                  static_cast<unsigned>(p.n_parts));
  auto launch = [&]<int RB>() -> cudaError_t {
    auto kernel =
        vec ? detail::sample_tiles_kernel<T, RB, kVec> : detail::sample_tiles_kernel<T, RB, 1>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem));
    if (err != cudaSuccess) return err;
    kernel<<<grid, detail::kSampleThreads, smem, stream>>>(p);
    return cudaGetLastError();
  };
  cudaError_t err;
  switch (rb) {
    case 8:
      err = launch.template operator()<8>();
      break;
    case 4:
      err = launch.template operator()<4>();
      break;
    case 2:
      err = launch.template operator()<2>();
      break;
    default:
      err = launch.template operator()<1>();
      break;
  }
  if (err != cudaSuccess) return err;
  const dim3 rows(static_cast<unsigned>(p.batch));
  detail::sample_merge_kernel<<<rows, detail::kSampleThreads, 0, stream>>>(p);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  detail::sample_exact_kernel<<<rows, detail::kSampleThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace pipo
