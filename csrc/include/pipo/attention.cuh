// Paged attention (chunked prefill, decode, tree verification): torch-free CUDA kernels and their
// launcher.
//
// Flash-decoding on CUDA cores. A thread block of 4 warps handles (query tile, kv head, KV split):
// a tile holds ROWS = 4 * RPW query rows of one sequence, a row being a (query, head of the kv
// head's GQA group) pair, so every K/V tile the block loads serves the whole group and several
// queries. KV tiles of 32 positions are gathered through the block table with 16-byte cp.async
// copies into double-buffered shared memory (positions on pages outside the cache are zero-filled
// and masked, never read). In the score phase lane n of a warp owns key n of the tile for the
// warp's RPW rows, so the online softmax reduces with warp shuffles and no block-wide sync; in
// the P·V phase the lane owns D / 32 output columns and receives the probabilities by shuffle.
// With several KV splits each block writes a float32 partial output and its log-sum-exp, and a
// second kernel merges them. Grid sizes, split counts and the workspace come from shapes only, so
// the launch needs no host sync and can be captured in a CUDA graph.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "pipo/common.cuh"

namespace pipo {

struct PagedAttentionParams {
  const void* q;  // [num_tokens, num_q_heads, head_dim]; element strides below, last dim dense
  int64_t q_stride_tok, q_stride_head;
  const void* k_cache;  // [num_pages, page_size, num_kv_heads, head_dim], 16-byte aligned
  const void* v_cache;
  const int32_t* block_table;  // [batch, max_pages]
  const int32_t* kv_lens;      // [batch]
  const int32_t* q_indptr;     // [batch + 1]
  const bool* tree_mask;       // [num_tokens, mask_cols], or null: causal
  int64_t mask_cols, max_pages, num_pages, num_tokens;
  void* out;        // [num_tokens, num_q_heads, head_dim], q's dtype
  float* lse;       // [num_tokens, num_q_heads], or null
  float* part_out;  // [num_splits, num_tokens, num_q_heads, head_dim] when num_splits > 1
  float* part_lse;  // [num_splits, num_tokens, num_q_heads]
  int batch, num_q_heads, num_kv_heads, group, head_dim, page_size, num_splits;
  float scale_log2;  // sm_scale * log2(e)
  DType dtype;
};

namespace attn {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockN = 32;  // KV positions per tile: one per lane in the score phase
constexpr int kPadBytes = 16;
constexpr float kLn2 = 0.6931471805599453f;

// 16-byte global -> shared copy; src_bytes 0 zero-fills the destination without reading.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <typename T, int D>
struct Layout {
  static constexpr int kRowBytes = D * static_cast<int>(sizeof(T)) + kPadBytes;  // padded: no
  static constexpr int kVecPerRow = D * static_cast<int>(sizeof(T)) / 16;        // bank conflicts
  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per 16 B
  static constexpr int kTileBytes = kBlockN * kRowBytes;         // one K or V tile
  static constexpr int kPerLane = D / 32;  // output columns per lane in the P·V phase
};

template <typename T, int D, int RPW>
constexpr size_t smem_bytes() {
  return 4 * static_cast<size_t>(Layout<T, D>::kTileBytes) +     // K and V, two stages each
         static_cast<size_t>(kWarps * RPW) * D * sizeof(float);  // scaled queries
}

// Sequence b's query range [start, end), clamped into [0, num_tokens] (q_indptr is not checked on
// the fast path: a negative, decreasing or too large entry is never followed), and its kv_len
// clamped into [0, max_pages * page_size], as the verify kernels clamp their trees.
__device__ __forceinline__ void seq_range(const PagedAttentionParams& p, int b, int& start,
                                          int& end) {
  const int64_t n = p.num_tokens, s = p.q_indptr[b], e = p.q_indptr[b + 1];
  const int64_t cs = s < 0 ? 0 : (s > n ? n : s);
  start = static_cast<int>(cs);
  end = static_cast<int>(e < cs ? cs : (e > n ? n : e));
}
__device__ __forceinline__ int seq_kv_len(const PagedAttentionParams& p, int b) {
  const int64_t len = p.kv_lens[b], capacity = p.max_pages * p.page_size;
  return static_cast<int>(len < 0 ? 0 : (len > capacity ? capacity : len));
}

// The sequence owning `tile` and the tile's index inside it (tiles numbered sequence by sequence,
// ceil(q_len * group / rows) per sequence). seq = -1 when the tile is past the last one. Every
// warp computes it redundantly, so all threads of the block agree without shared memory.
__device__ __forceinline__ void find_tile(const PagedAttentionParams& p, int rows, int tile,
                                          int& seq, int& t_in) {
  const int lane = threadIdx.x % 32;
  seq = -1;
  int before = 0;
  for (int base = 0; base < p.batch; base += 32) {
    const int b = base + lane;
    int n = 0;
    if (b < p.batch) {
      int start, end;
      seq_range(p, b, start, end);
      n = ((end - start) * p.group + rows - 1) / rows;
    }
    int incl = n;
    for (int off = 1; off < 32; off *= 2) {
      const int y = __shfl_up_sync(kFullMask, incl, off);
      if (lane >= off) incl += y;
    }
    const unsigned hit = __ballot_sync(kFullMask, b < p.batch && tile < before + incl);
    if (hit != 0) {
      const int l = __ffs(hit) - 1;
      const int excl = __shfl_sync(kFullMask, incl - n, l);
      seq = base + l;
      t_in = tile - before - excl;
      return;
    }
    before += __shfl_sync(kFullMask, incl, 31);
  }
}

template <typename T, int D, int RPW>
__global__ void __launch_bounds__(kThreads) paged_attention_kernel(const PagedAttentionParams p) {
  using L = Layout<T, D>;
  constexpr int ROWS = kWarps * RPW;
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* kv_s = smem;  // [stage][K, V][kBlockN][kRowBytes]
  float* q_s = reinterpret_cast<float*>(smem + 4 * L::kTileBytes);  // [ROWS][D]

  int seq, t_in;
  find_tile(p, ROWS, blockIdx.x, seq, t_in);
  if (seq < 0) return;  // uniform over the block
  const int hkv = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int G = p.group;

  int q_start, q_end;
  seq_range(p, seq, q_start, q_end);
  const int q_len = q_end - q_start;
  const int kv_len = seq_kv_len(p, seq);
  const int prefix = kv_len - q_len;
  const int n_rows = q_len * G;
  const int row0 = t_in * ROWS;

  // Scaled queries as float; rows past the sequence (or past q) are zero.
  const T* q = static_cast<const T*>(p.q);
  for (int i = threadIdx.x; i < ROWS * D; i += kThreads) {
    const int r = i / D, d = i % D, rr = row0 + r;
    const int64_t token = q_start + rr / G;
    float x = 0.0f;
    if (rr < n_rows && token < p.num_tokens) {
      const int head = hkv * G + rr % G;
      x = to_float(q[token * p.q_stride_tok + head * p.q_stride_head + d]) * p.scale_log2;
    }
    q_s[i] = x;
  }

  // This block's positions: the tile's visible range, cut to the split's share.
  const int last_qi = (min(row0 + ROWS, n_rows) - 1) / G;
  int hi = p.tree_mask == nullptr ? prefix + last_qi + 1 : kv_len;
  const int64_t capacity = p.max_pages * p.page_size;
  hi = hi < capacity ? hi : static_cast<int>(capacity);
  const int per_split = (kv_len + p.num_splits - 1) / p.num_splits;
  const int chunk = max(kBlockN, (per_split + kBlockN - 1) / kBlockN * kBlockN);
  const int lo = split * chunk;
  hi = min(hi, lo + chunk);
  const int n_tiles = hi > lo ? (hi - lo + kBlockN - 1) / kBlockN : 0;

  const int32_t* pages = p.block_table + static_cast<int64_t>(seq) * p.max_pages;
  const int64_t row_stride = static_cast<int64_t>(p.num_kv_heads) * D;  // elements per slot
  const T* k_base = static_cast<const T*>(p.k_cache) + static_cast<int64_t>(hkv) * D;
  const T* v_base = static_cast<const T*>(p.v_cache) + static_cast<int64_t>(hkv) * D;

  auto issue_tile = [&](int it) {
    unsigned char* stage = kv_s + (it & 1) * 2 * L::kTileBytes;
    const int start = lo + it * kBlockN;
    for (int i = threadIdx.x; i < kBlockN * L::kVecPerRow; i += kThreads) {
      const int n = i / L::kVecPerRow, c = i % L::kVecPerRow;
      const int pos = start + n;
      int64_t slot = -1;
      if (pos < hi) {
        const int page = pages[pos / p.page_size];
        if (page >= 0 && page < p.num_pages)
          slot = static_cast<int64_t>(page) * p.page_size + pos % p.page_size;
      }
      const int64_t off = (slot < 0 ? 0 : slot * row_stride) + c * L::kVec;
      const int bytes = slot < 0 ? 0 : 16;
      cp_async_16(stage + n * L::kRowBytes + c * 16, k_base + off, bytes);
      cp_async_16(stage + L::kTileBytes + n * L::kRowBytes + c * 16, v_base + off, bytes);
    }
    cp_async_commit();
  };

  float m[RPW], l[RPW], acc[RPW][L::kPerLane];
#pragma unroll
  for (int i = 0; i < RPW; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < L::kPerLane; ++j) acc[i][j] = 0.0f;
  }
  int qi[RPW];
  bool row_ok[RPW];
#pragma unroll
  for (int i = 0; i < RPW; ++i) {
    const int rr = row0 + warp * RPW + i;
    qi[i] = rr / G;
    row_ok[i] = rr < n_rows;
  }

  if (n_tiles > 0) issue_tile(0);
  for (int it = 0; it < n_tiles; ++it) {
    if (it + 1 < n_tiles) {
      issue_tile(it + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // the tile (and, on the first pass, q_s) is visible to every warp
    const unsigned char* k_s = kv_s + (it & 1) * 2 * L::kTileBytes;
    const unsigned char* v_s = k_s + L::kTileBytes;

    // Scores of key `lane` for the warp's rows.
    float s[RPW];
#pragma unroll
    for (int i = 0; i < RPW; ++i) s[i] = 0.0f;
    const unsigned char* k_row = k_s + lane * L::kRowBytes;
#pragma unroll 4
    for (int c = 0; c < L::kVecPerRow; ++c) {
      const uint4 raw = *reinterpret_cast<const uint4*>(k_row + c * 16);
      const T* kv = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < RPW; ++i) {
        const float* qr = q_s + (warp * RPW + i) * D + c * L::kVec;
#pragma unroll
        for (int e = 0; e < L::kVec; e += 4) {
          const float4 qv = *reinterpret_cast<const float4*>(qr + e);
          s[i] += qv.x * to_float(kv[e]) + qv.y * to_float(kv[e + 1]) + qv.z * to_float(kv[e + 2]) +
                  qv.w * to_float(kv[e + 3]);
        }
      }
    }
    const int pos = lo + it * kBlockN + lane;
    bool pos_ok = pos < hi;
    if (pos_ok) {
      const int page = pages[pos / p.page_size];
      pos_ok = page >= 0 && page < p.num_pages;
    }
    const int key = pos - prefix;  // index among the sequence's queries when >= 0
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
      bool seen = pos_ok && row_ok[i];
      if (seen && key >= 0) {
        if (p.tree_mask == nullptr) {
          seen = key <= qi[i];
        } else {
          const int64_t token = q_start + qi[i];
          seen =
              key < p.mask_cols && token < p.num_tokens && p.tree_mask[token * p.mask_cols + key];
        }
      }
      s[i] = seen ? s[i] : -INFINITY;
    }

    // Online softmax (base 2) and P·V for each row.
    const unsigned char* v_col = v_s + lane * L::kPerLane * static_cast<int>(sizeof(T));
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
      const float m_new = fmaxf(m[i], warp_max(s[i]));
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m[i] - m_use);
      const float pr = exp2f(s[i] - m_use);
      l[i] = l[i] * alpha + warp_sum(pr);
      m[i] = m_new;
      s[i] = pr;
#pragma unroll
      for (int j = 0; j < L::kPerLane; ++j) acc[i][j] *= alpha;
    }
#pragma unroll 4
    for (int n = 0; n < kBlockN; ++n) {
      alignas(16) T v[L::kPerLane];
      const unsigned char* src = v_col + n * L::kRowBytes;
      if constexpr (L::kPerLane * sizeof(T) == 16) {
        *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(src);
      } else if constexpr (L::kPerLane * sizeof(T) == 8) {
        *reinterpret_cast<uint2*>(v) = *reinterpret_cast<const uint2*>(src);
      } else if constexpr (L::kPerLane * sizeof(T) == 4) {
        *reinterpret_cast<uint32_t*>(v) = *reinterpret_cast<const uint32_t*>(src);
      } else {
#pragma unroll
        for (int j = 0; j < L::kPerLane; ++j) v[j] = reinterpret_cast<const T*>(src)[j];
      }
#pragma unroll
      for (int i = 0; i < RPW; ++i) {
        const float pn = __shfl_sync(kFullMask, s[i], n);
#pragma unroll
        for (int j = 0; j < L::kPerLane; ++j) acc[i][j] += pn * to_float(v[j]);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

#pragma unroll
  for (int i = 0; i < RPW; ++i) {
    if (!row_ok[i]) continue;
    const int rr = row0 + warp * RPW + i;
    const int64_t token = q_start + qi[i];
    if (token >= p.num_tokens) continue;
    const int64_t idx = token * p.num_q_heads + hkv * G + rr % G;
    const bool empty = l[i] == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / l[i];
    const float lse = empty ? -INFINITY : (m[i] + log2f(l[i])) * kLn2;
    const int d0 = lane * L::kPerLane;
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + idx * D + d0;
#pragma unroll
      for (int j = 0; j < L::kPerLane; ++j) out[j] = from_float<T>(acc[i][j] * inv);
      if (p.lse != nullptr && lane == 0) p.lse[idx] = lse;
    } else {
      const int64_t part = static_cast<int64_t>(split) * p.num_tokens * p.num_q_heads + idx;
      float* out = p.part_out + part * D + d0;
#pragma unroll
      for (int j = 0; j < L::kPerLane; ++j) out[j] = acc[i][j] * inv;
      if (lane == 0) p.part_lse[part] = lse;
    }
  }
}

// One warp per (token, head) row: weights exp(lse_s - max) over the splits, weighted mean of the
// partial outputs, log-sum-exp of the splits' lse.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    paged_attention_merge_kernel(const PagedAttentionParams p) {
  constexpr int kPerLane = D / 32;
  const int64_t rows = p.num_tokens * p.num_q_heads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  float mx = -INFINITY;
  for (int s = lane; s < p.num_splits; s += 32) mx = fmaxf(mx, p.part_lse[s * rows + row]);
  mx = warp_max(mx);
  float acc[kPerLane] = {};
  float total = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < p.num_splits; ++s) {
      const float w = exp2f((p.part_lse[s * rows + row] - mx) * 1.4426950408889634f);
      const float* src = p.part_out + (s * rows + row) * D + lane * kPerLane;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) acc[j] += w * src[j];
      total += w;
    }
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  T* out = static_cast<T*>(p.out) + row * D + lane * kPerLane;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) out[j] = from_float<T>(acc[j] * inv);
  if (p.lse != nullptr && lane == 0) p.lse[row] = total > 0.0f ? mx + logf(total) : -INFINITY;
}

// The merge of p.num_splits partial outputs (also used by attention_prefill.cuh's kernel).
template <typename T, int D>
cudaError_t launch_merge(const PagedAttentionParams& p, cudaStream_t stream) {
  const int64_t rows = p.num_tokens * p.num_q_heads;
  const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(rows, kWarps)));
  paged_attention_merge_kernel<T, D><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// Rows per warp: enough for the queries of an average sequence (decode: the GQA group), up to 4.
inline int rows_per_warp(const PagedAttentionParams& p) {
  const int64_t rows = ceil_div<int64_t>(p.num_tokens * p.group, p.batch > 0 ? p.batch : 1);
  return rows <= kWarps ? 1 : rows <= 2 * kWarps ? 2 : 4;
}

template <typename T, int D, int RPW>
cudaError_t launch_typed(const PagedAttentionParams& p, int num_tiles, cudaStream_t stream) {
  const size_t smem = smem_bytes<T, D, RPW>();
  auto kernel = paged_attention_kernel<T, D, RPW>;
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>(num_tiles), static_cast<unsigned>(p.num_kv_heads),
                  static_cast<unsigned>(p.num_splits));
  kernel<<<grid, kThreads, smem, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || p.num_splits == 1) return err;
  return launch_merge<T, D>(p, stream);
}

template <typename T>
cudaError_t launch_dims(const PagedAttentionParams& p, int num_tiles, int rpw,
                        cudaStream_t stream) {
  auto by_rows = [&]<int D>() {
    switch (rpw) {
      case 1:
        return launch_typed<T, D, 1>(p, num_tiles, stream);
      case 2:
        return launch_typed<T, D, 2>(p, num_tiles, stream);
      default:
        return launch_typed<T, D, 4>(p, num_tiles, stream);
    }
  };
  switch (p.head_dim) {
    case 64:
      return by_rows.template operator()<64>();
    case 128:
      return by_rows.template operator()<128>();
    case 256:
      return by_rows.template operator()<256>();
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace attn

// The KV split count the launcher uses when none is forced: about two blocks per SM, at least 256
// positions of the block table's capacity per split, at most 64. From shapes only.
inline int paged_attention_auto_splits(const PagedAttentionParams& p, int device) {
  const int rows = attn::kWarps * attn::rows_per_warp(p);
  const int64_t tiles = ceil_div<int64_t>(p.num_tokens * p.group, rows) + p.batch;
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) sms = 1;
  const int64_t blocks = tiles * p.num_kv_heads;
  const int64_t want = ceil_div<int64_t>(2 * sms, blocks > 0 ? blocks : 1);
  const int64_t cap = ceil_div<int64_t>(p.max_pages * p.page_size, 256);
  int64_t splits = want < cap ? want : cap;
  splits = splits < 64 ? splits : 64;
  return static_cast<int>(splits > 1 ? splits : 1);
}

// Launches the attention (and, with p.num_splits > 1, the merge: p.part_out / p.part_lse must be
// allocated) on `stream`. Returns the launch status; never synchronises.
inline cudaError_t launch_paged_attention(const PagedAttentionParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0 || p.batch == 0) return cudaSuccess;
  const int rpw = attn::rows_per_warp(p);
  const int64_t tiles = ceil_div<int64_t>(p.num_tokens * p.group, attn::kWarps * rpw) + p.batch;
  return dispatch_dtype(p.dtype, [&]<typename T>() {
    return attn::launch_dims<T>(p, static_cast<int>(tiles), rpw, stream);
  });
}

}  // namespace pipo
