// KV-cache append and compaction: torch-free CUDA kernels and their launchers.
//
// The cache is paged and NHD: [num_pages, page_size, num_kv_heads, head_dim], contiguous, so a
// slot (page * page_size + offset) is one row of row_bytes = num_kv_heads * head_dim * elem_size
// bytes. Both ops only move rows, so the kernels are dtype-agnostic and copy in the widest vector
// (up to 16 bytes) that every pointer, stride and the row length allow.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "pipo/common.cuh"

namespace pipo {

struct KVAppendParams {
  const char* key;              // [num_tokens] rows, key_stride bytes apart
  const char* value;            // [num_tokens] rows, value_stride bytes apart
  int64_t key_stride;           // bytes between consecutive tokens of key
  int64_t value_stride;         // bytes between consecutive tokens of value
  char* k_cache;                // [num_slots] rows, row_bytes apart
  char* v_cache;                // [num_slots] rows, row_bytes apart
  const int64_t* slot_mapping;  // [num_tokens]; negative or >= num_slots: skipped
  int64_t num_tokens;
  int64_t num_slots;
  int64_t row_bytes;
};

struct KVCompactParams {
  char* k_cache;       // [num_slots] rows, row_bytes apart
  char* v_cache;       // [num_slots] rows, row_bytes apart
  const int64_t* src;  // [num_moves] source slots
  const int64_t* dst;  // [num_moves] destination slots
  char* workspace;     // [num_moves, 2, row_bytes]: K row then V row of every move
  int64_t num_moves;
  int64_t num_slots;
  int64_t row_bytes;
};

namespace detail {

__device__ __forceinline__ bool valid_slot(int64_t slot, int64_t num_slots) {
  return slot >= 0 && slot < num_slots;
}

// Block = (threads over one row's vectors) x (rows per block); grid over rows.
template <typename Vec>
__global__ void kv_cache_append_kernel(KVAppendParams p) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (token >= p.num_tokens) return;
  const int64_t slot = p.slot_mapping[token];
  if (!valid_slot(slot, p.num_slots)) return;
  const int64_t n = p.row_bytes / static_cast<int64_t>(sizeof(Vec));
  const Vec* ks = reinterpret_cast<const Vec*>(p.key + token * p.key_stride);
  const Vec* vs = reinterpret_cast<const Vec*>(p.value + token * p.value_stride);
  Vec* kd = reinterpret_cast<Vec*>(p.k_cache + slot * p.row_bytes);
  Vec* vd = reinterpret_cast<Vec*>(p.v_cache + slot * p.row_bytes);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const Vec k = __ldg(ks + i);
    const Vec v = __ldg(vs + i);
    kd[i] = k;
    vd[i] = v;
  }
}

// Pass 1 of compaction: copy every source row (K and V) into the workspace.
template <typename Vec>
__global__ void kv_cache_gather_kernel(KVCompactParams p) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (m >= p.num_moves) return;
  const int64_t src = p.src[m];
  if (!valid_slot(src, p.num_slots) || !valid_slot(p.dst[m], p.num_slots)) return;
  const int64_t n = p.row_bytes / static_cast<int64_t>(sizeof(Vec));
  const Vec* ks = reinterpret_cast<const Vec*>(p.k_cache + src * p.row_bytes);
  const Vec* vs = reinterpret_cast<const Vec*>(p.v_cache + src * p.row_bytes);
  Vec* w = reinterpret_cast<Vec*>(p.workspace + m * 2 * p.row_bytes);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const Vec k = ks[i];
    const Vec v = vs[i];
    w[i] = k;
    w[n + i] = v;
  }
}

// Pass 2 of compaction: write the workspace rows to their destinations. A separate launch, so
// every source is read before any destination is written, whatever the overlap.
template <typename Vec>
__global__ void kv_cache_scatter_kernel(KVCompactParams p) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (m >= p.num_moves) return;
  const int64_t dst = p.dst[m];
  if (!valid_slot(p.src[m], p.num_slots) || !valid_slot(dst, p.num_slots)) return;
  const int64_t n = p.row_bytes / static_cast<int64_t>(sizeof(Vec));
  const Vec* w = reinterpret_cast<const Vec*>(p.workspace + m * 2 * p.row_bytes);
  Vec* kd = reinterpret_cast<Vec*>(p.k_cache + dst * p.row_bytes);
  Vec* vd = reinterpret_cast<Vec*>(p.v_cache + dst * p.row_bytes);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const Vec k = w[i];
    const Vec v = w[n + i];
    kd[i] = k;
    vd[i] = v;
  }
}

// 256 threads per block: x covers one row's vectors (a power of two), y packs several rows when
// rows are short, so small head counts still fill the block.
inline dim3 row_block(int64_t row_vectors) {
  unsigned x = 1;
  while (x < 256 && static_cast<int64_t>(x) < row_vectors) x *= 2;
  return dim3(x, 256 / x);
}

inline uint64_t addr(const void* p) { return reinterpret_cast<uint64_t>(p); }

}  // namespace detail

// Launches the append on `stream`. Returns the launch status; never synchronises.
inline cudaError_t launch_kv_cache_append(const KVAppendParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  const int bytes = widest_vector_bytes(
      {detail::addr(p.key), detail::addr(p.value), detail::addr(p.k_cache), detail::addr(p.v_cache),
       static_cast<uint64_t>(p.key_stride), static_cast<uint64_t>(p.value_stride),
       static_cast<uint64_t>(p.row_bytes)});
  return dispatch_vector_bytes(bytes, [&]<int Bytes>() {
    const dim3 block = detail::row_block(p.row_bytes / Bytes);
    const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(p.num_tokens, block.y)));
    detail::kv_cache_append_kernel<typename VecOf<Bytes>::type><<<grid, block, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

// Launches both compaction passes on `stream` (p.workspace must hold num_moves * 2 * row_bytes).
inline cudaError_t launch_kv_cache_compact(const KVCompactParams& p, cudaStream_t stream) {
  if (p.num_moves == 0) return cudaSuccess;
  const int bytes =
      widest_vector_bytes({detail::addr(p.k_cache), detail::addr(p.v_cache),
                           detail::addr(p.workspace), static_cast<uint64_t>(p.row_bytes)});
  return dispatch_vector_bytes(bytes, [&]<int Bytes>() {
    using Vec = typename VecOf<Bytes>::type;
    const dim3 block = detail::row_block(p.row_bytes / Bytes);
    const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(p.num_moves, block.y)));
    detail::kv_cache_gather_kernel<Vec><<<grid, block, 0, stream>>>(p);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    detail::kv_cache_scatter_kernel<Vec><<<grid, block, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace pipo
