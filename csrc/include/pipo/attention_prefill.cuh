// Paged attention on tensor cores for prefill and draft-tree shapes (float16 / bfloat16): a
// torch-free kernel and its launcher, next to the CUDA-core kernel of attention.cuh (decode, and
// every float32 call). UNTESTED ON GPU: written and compiled without a GPU
// (tests/test_attention_prefill.py checks it against the float64 reference on the next one).
//
// A thread block of 4 warps handles (query tile, kv head, KV split). The tile holds kRows = 64
// query rows of one sequence, a row being a (query, head of the kv head's GQA group) pair (query
// tokens consecutive, the group's heads inside), so each K/V tile serves the whole group; warp w
// owns rows 16w .. 16w + 15. K/V tiles of kBlockN positions (64; 32 at head_dim 256) are gathered
// through the block table (each position's slot from its own page, so a tile may span pages) with
// 16-byte cp.async copies into double-buffered shared memory; positions on pages outside the
// cache are zero-filled and masked, never read. Both products are mma.sync.m16n8k16 with float32
// accumulation: S = Q K^T with Q and K fragments by ldmatrix, then O += P V with P taken from the
// S accumulators (rounded to the input dtype) and V fragments by ldmatrix.trans.
// The online softmax (base 2) keeps each row's max and sum in the 4 lanes that hold the row.
// Causal tiles stop at the tile's last query; the per-element mask (causal or tree) is evaluated
// only on the KV tiles past the ones every row fully sees; the last queries of a sequence (the
// most keys) are launched first. KV splits (float32 partials merged by attention.cuh's merge
// kernel) only when the grid has fewer blocks than SMs. Shapes only decide the grid, the splits
// and the workspace: no host sync, capturable in a CUDA graph.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "pipo/attention.cuh"
#include "pipo/common.cuh"

namespace pipo {

// Which kernel a call runs (PIPO_ATTN_KERNEL in the launch glue): kAuto picks the tensor cores
// for float16 / bfloat16 prefill and tree shapes (a tree mask, or more queries than sequences).
enum class AttnKernel { kAuto, kSplit, kTensorCore };

namespace attn_tc {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kWarps * 16;  // query rows per block: one m16 tile per warp

template <typename T, int D>
struct Tile {
  static constexpr int kBlockN = D <= 128 ? 64 : 32;  // KV positions per tile
  static constexpr int kLd = D + 8;  // padded row (elements): fragment reads hit 32 banks
  static constexpr int kRowBytes = kLd * static_cast<int>(sizeof(T));
  static constexpr int kChunks = D * static_cast<int>(sizeof(T)) / 16;  // 16-byte copies a row
  static constexpr int kKvElems = kBlockN * kLd;                        // one K or V tile
  static constexpr size_t kSmem =
      (static_cast<size_t>(kRows) * kLd + 4 * static_cast<size_t>(kKvElems)) * sizeof(T) +
      2 * kBlockN;  // Q, two stages of K and V, the stages' key-valid flags
};

template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// c += a (16x16, row-major) * b (16x8, column-major), float32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Four 8x8 16-bit matrices from shared memory; lane l gives the address of row l % 8 of matrix
// l / 8. Plain: lane l receives in r[i] the elements (row l / 4, columns 2 * (l % 4) + {0, 1}) of
// matrix i, an A fragment quarter or, for a [n][k] matrix, a B fragment. Transposed: it receives
// (rows 2 * (l % 4) + {0, 1}, column l / 4): the B fragment of a [k][n] matrix.
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) paged_prefill_kernel(const PagedAttentionParams p) {
  using L = Tile<T, D>;
  constexpr int BN = L::kBlockN;
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem);                           // [kRows][kLd]
  T* kv_s = q_s + kRows * L::kLd;                                // [stage][K, V][BN][kLd]
  bool* ok_s = reinterpret_cast<bool*>(kv_s + 4 * L::kKvElems);  // [stage][BN]

  int seq, t_in;
  attn::find_tile(p, kRows, blockIdx.x, seq, t_in);
  if (seq < 0) return;  // uniform over the block
  const int hkv = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tig = lane % 4;  // the fragment's row group and column pair
  const int G = p.group;

  int q_start, q_end;
  attn::seq_range(p, seq, q_start, q_end);
  const int q_len = q_end - q_start;
  const int kv_len = attn::seq_kv_len(p, seq);
  const int prefix = kv_len - q_len;
  const int n_rows = q_len * G;
  t_in = (n_rows + kRows - 1) / kRows - 1 - t_in;  // the last queries (most keys) first
  const int row0 = t_in * kRows;

  // Q tile, element by element: q's token and head strides are free (no 16-byte alignment).
  const T* q = static_cast<const T*>(p.q);
  for (int i = threadIdx.x; i < kRows * D; i += kThreads) {
    const int r = i / D, d = i % D, rr = row0 + r;
    const int64_t token = q_start + rr / G;
    T x = from_float<T>(0.0f);
    if (rr < n_rows && token < p.num_tokens)
      x = q[token * p.q_stride_tok + (hkv * G + rr % G) * p.q_stride_head + d];
    q_s[r * L::kLd + d] = x;
  }

  // [lo, hi): the positions this block reads; tiles ending at or before `full` are seen by every
  // row of the tile (the prefix; causal: the keys up to the tile's first query) and skip the mask.
  const int first_qi = row0 / G;
  const int last_qi = (min(row0 + kRows, n_rows) - 1) / G;
  int hi = p.tree_mask == nullptr ? prefix + last_qi + 1 : kv_len;
  const int full = p.tree_mask == nullptr ? prefix + first_qi + 1 : prefix;
  const int per_split = (kv_len + p.num_splits - 1) / p.num_splits;
  const int chunk = max(BN, (per_split + BN - 1) / BN * BN);
  const int lo = split * chunk;
  hi = min(hi, lo + chunk);
  const int n_tiles = hi > lo ? (hi - lo + BN - 1) / BN : 0;

  const int32_t* pages = p.block_table + static_cast<int64_t>(seq) * p.max_pages;
  const int64_t row_stride = static_cast<int64_t>(p.num_kv_heads) * D;  // elements per slot
  const T* k_base = static_cast<const T*>(p.k_cache) + static_cast<int64_t>(hkv) * D;
  const T* v_base = static_cast<const T*>(p.v_cache) + static_cast<int64_t>(hkv) * D;

  auto issue_tile = [&](int it) {
    T* k_st = kv_s + (it & 1) * 2 * L::kKvElems;
    T* v_st = k_st + L::kKvElems;
    const int start = lo + it * BN;
    for (int i = threadIdx.x; i < BN * L::kChunks; i += kThreads) {
      const int n = i / L::kChunks, c = i % L::kChunks;
      const int pos = start + n;
      int64_t slot = -1;
      if (pos < hi) {
        const int page = pages[pos / p.page_size];
        if (page >= 0 && page < p.num_pages)
          slot = static_cast<int64_t>(page) * p.page_size + pos % p.page_size;
      }
      const int64_t off = (slot < 0 ? 0 : slot * row_stride) + c * (16 / sizeof(T));
      const int bytes = slot < 0 ? 0 : 16;
      attn::cp_async_16(k_st + n * L::kLd + c * (16 / sizeof(T)), k_base + off, bytes);
      attn::cp_async_16(v_st + n * L::kLd + c * (16 / sizeof(T)), v_base + off, bytes);
      if (c == 0) ok_s[(it & 1) * BN + n] = slot >= 0;
    }
    attn::cp_async_commit();
  };

  // This lane's two rows (g and g + 8 of the warp's 16) and their queries.
  int qi[2];
  bool row_ok[2];
  int64_t token[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int rr = row0 + warp * 16 + g + 8 * h;
    qi[h] = rr / G;
    token[h] = q_start + qi[h];
    row_ok[h] = rr < n_rows && token[h] < p.num_tokens;
  }
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

  // ldmatrix row addresses. Q (A fragments): matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15) in the
  // order a0..a3. K (B fragments of key tiles nt, nt + 1): (k 0-7 | 8-15) x (keys of nt | nt + 1).
  // V (transposed, B fragments of d tiles dt, dt + 1): (keys 0-7 | 8-15) x (d of dt | dt + 1).
  const int mat = lane / 8, mrow = lane % 8;
  const T* q_lm = q_s + (warp * 16 + (mat % 2) * 8 + mrow) * L::kLd + (mat / 2) * 8;
  const int k_lm = ((mat / 2) * 8 + mrow) * L::kLd + (mat % 2) * 8;
  const int v_lm = ((mat % 2) * 8 + mrow) * L::kLd + (mat / 2) * 8;
  if (n_tiles > 0) issue_tile(0);
  for (int it = 0; it < n_tiles; ++it) {
    if (it + 1 < n_tiles) {
      issue_tile(it + 1);
      attn::cp_async_wait<1>();
    } else {
      attn::cp_async_wait<0>();
    }
    __syncthreads();  // the tile (and, on the first pass, q_s) is visible to every warp
    const T* k_st = kv_s + (it & 1) * 2 * L::kKvElems;
    const T* v_st = k_st + L::kKvElems;
    const bool* ok = ok_s + (it & 1) * BN;
    const int start = lo + it * BN;

    // S = Q K^T for the warp's 16 rows and the tile's BN keys.
    float s[BN / 8][4];
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4<false>(a, q_lm + kk * 16);
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt += 2) {
        uint32_t b[4];
        ldmatrix_x4<false>(b, k_st + nt * 8 * L::kLd + k_lm + kk * 16);
        mma16816<T>(s[nt], a, b[0], b[1]);
        mma16816<T>(s[nt + 1], a, b[2], b[3]);
      }
    }

    // Scale, mask, online softmax. Element e of s[nt] is row g + 8 * (e / 2), key
    // nt * 8 + 2 * tig + e % 2.
    const bool masked = start + BN > full;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e / 2, n = nt * 8 + 2 * tig + e % 2;
        bool seen = ok[n];
        if (masked && seen) {
          const int key = start + n - prefix;  // index among the queries when >= 0
          if (key >= 0) {
            if (p.tree_mask == nullptr) {
              seen = key <= qi[h];
            } else {
              seen = row_ok[h] && key < p.mask_cols && p.tree_mask[token[h] * p.mask_cols + key];
            }
          }
        }
        const float x = seen ? s[nt][e] * p.scale_log2 : -INFINITY;
        s[nt][e] = x;
        mx[h] = fmaxf(mx[h], x);
      }
    }
    float alpha[2], m_use[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(kFullMask, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(kFullMask, mx[h], 2));
      const float m_new = fmaxf(m[h], mx[h]);
      m_use[h] = m_new == -INFINITY ? 0.0f : m_new;
      alpha[h] = exp2f(m[h] - m_use[h]);
      m[h] = m_new;
      l[h] *= alpha[h];  // this lane's share of the row sum; the 4 lanes are summed at the end
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pr = exp2f(s[nt][e] - m_use[e / 2]);
        s[nt][e] = pr;
        l[e / 2] += pr;
      }
    }
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][0] *= alpha[0];
      o[j][1] *= alpha[0];
      o[j][2] *= alpha[1];
      o[j][3] *= alpha[1];
    }

    // O += P V: the S accumulators of keys 16 kk .. 16 kk + 15 are the A fragment.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                             pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                             pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dt = 0; dt < D / 8; dt += 2) {
        uint32_t b[4];
        ldmatrix_x4<true>(b, v_st + kk * 16 * L::kLd + v_lm + dt * 8);
        mma16816<T>(o[dt], a, b[0], b[1]);
        mma16816<T>(o[dt + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(kFullMask, l[h], 1);
    l[h] += __shfl_xor_sync(kFullMask, l[h], 2);
    if (!row_ok[h]) continue;
    const int rr = row0 + warp * 16 + g + 8 * h;
    const int64_t idx = token[h] * p.num_q_heads + hkv * G + rr % G;
    const bool empty = l[h] == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / l[h];
    const float lse = empty ? -INFINITY : (m[h] + log2f(l[h])) * attn::kLn2;
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + idx * D + 2 * tig;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<uint32_t*>(out + j * 8) =
            pack2<T>(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
      }
      if (p.lse != nullptr && tig == 0) p.lse[idx] = lse;
    } else {
      const int64_t part = static_cast<int64_t>(split) * p.num_tokens * p.num_q_heads + idx;
      float* out = p.part_out + part * D + 2 * tig;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<float2*>(out + j * 8) =
            make_float2(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
      }
      if (tig == 0) p.part_lse[part] = lse;
    }
  }
}

template <typename T, int D>
cudaError_t launch_typed(const PagedAttentionParams& p, int num_tiles, cudaStream_t stream) {
  constexpr size_t smem = Tile<T, D>::kSmem;
  auto kernel = paged_prefill_kernel<T, D>;
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>(num_tiles), static_cast<unsigned>(p.num_kv_heads),
                  static_cast<unsigned>(p.num_splits));
  kernel<<<grid, kThreads, smem, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || p.num_splits == 1) return err;
  return attn::launch_merge<T, D>(p, stream);
}

template <typename T>
cudaError_t launch_dims(const PagedAttentionParams& p, int num_tiles, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64:
      return launch_typed<T, 64>(p, num_tiles, stream);
    case 128:
      return launch_typed<T, 128>(p, num_tiles, stream);
    case 256:
      return launch_typed<T, 256>(p, num_tiles, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

inline int64_t num_tiles(const PagedAttentionParams& p) {
  return ceil_div<int64_t>(p.num_tokens * p.group, kRows) + p.batch;
}

}  // namespace attn_tc

// Whether a call runs on the tensor-core kernel: float16 / bfloat16 only (float32 stays on the
// CUDA-core kernel), and with kAuto only for tree and prefill shapes (from shapes, no sync).
inline bool paged_attention_uses_tensor_cores(const PagedAttentionParams& p, AttnKernel kernel) {
  if (p.dtype == DType::kFloat || kernel == AttnKernel::kSplit) return false;
  return kernel == AttnKernel::kTensorCore || p.tree_mask != nullptr || p.num_tokens > p.batch;
}

// KV splits of the tensor-core kernel when none is forced: one split unless the grid has fewer
// blocks than SMs, then about two blocks per SM, at least 256 positions of the block table's
// capacity per split, at most 64. From shapes only.
inline int paged_prefill_auto_splits(const PagedAttentionParams& p, int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) sms = 1;
  const int64_t blocks = attn_tc::num_tiles(p) * p.num_kv_heads;
  if (blocks >= sms) return 1;
  const int64_t want = ceil_div<int64_t>(2 * sms, blocks > 0 ? blocks : 1);
  const int64_t cap = ceil_div<int64_t>(p.max_pages * p.page_size, 256);
  int64_t splits = want < cap ? want : cap;
  splits = splits < 64 ? splits : 64;
  return static_cast<int>(splits > 1 ? splits : 1);
}

// Launches the tensor-core kernel (and, with p.num_splits > 1, the merge: p.part_out / p.part_lse
// must be allocated) on `stream`; p.dtype float16 or bfloat16. Never synchronises.
inline cudaError_t launch_paged_prefill(const PagedAttentionParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0 || p.batch == 0) return cudaSuccess;
  const int tiles = static_cast<int>(attn_tc::num_tiles(p));
  if (p.dtype == DType::kHalf) return attn_tc::launch_dims<__half>(p, tiles, stream);
  if (p.dtype == DType::kBFloat16) return attn_tc::launch_dims<__nv_bfloat16>(p, tiles, stream);
  return cudaErrorInvalidValue;
}

}  // namespace pipo
