// Helpers shared by the torch-free CUDA kernels under csrc/include/pipo/: element conversions and
// vector loads, warp and block reductions, and the dtype / vector-width dispatch of the launchers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

namespace pipo {

constexpr unsigned kFullMask = 0xffffffffu;  // every lane of a warp

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Conversions between the storage dtypes and float32 (torch builds disable the implicit ones).
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// How a vector load reaches memory: a plain load (global or shared memory), the read-only cache
// (__ldg: global data no kernel writes while it runs) or streaming (__ldcs: read once, do not keep
// in L1/L2).
enum class Load { kPlain, kReadOnly, kStream };

template <Load kHow, typename V>
__device__ __forceinline__ V load_raw(const V* p) {
  if constexpr (kHow == Load::kStream) {
    return __ldcs(p);
  } else if constexpr (kHow == Load::kReadOnly) {
    return __ldg(p);
  } else {
    return *p;
  }
}

// Loads kVec consecutive elements of T as floats: one 16-byte load when kVec * sizeof(T) == 16
// (src 16-byte aligned), element by element otherwise.
template <int kVec, Load kHow = Load::kPlain, typename T>
__device__ __forceinline__ void load_floats(const T* src, float* dst) {
  if constexpr (kVec * sizeof(T) == 16) {
    const uint4 raw = load_raw<kHow>(reinterpret_cast<const uint4*>(src));
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) dst[i] = to_float(v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) dst[i] = to_float(src[i]);
  }
}

// Binary operators of the reductions.
struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};
struct MinOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a < b ? a : b;
  }
};

// Butterfly reduction over the 32 lanes of a warp; every lane gets the result.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, SumOp{}); }
// CUDA's max: fmaxf for floats (a NaN lane loses to a number), the integer max otherwise.
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// Reduction over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. `sh` holds one entry per warp; `identity` pads the second round. Call it from
// every thread of the block: it synchronises before writing `sh` (earlier readers may still be
// reading it) and after reading it (so the caller may write `sh` as soon as it returns).
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity, T* sh) {
  v = warp_reduce(v, op);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? sh[lane] : identity;
  __syncthreads();
  return warp_reduce(v, op);
}

// The storage dtypes of the kernels, named without torch; the launch glue maps at::ScalarType
// onto it (csrc/cuda/dtype.h).
enum class DType { kFloat, kHalf, kBFloat16 };

// Calls f.template operator()<T>() with T the CUDA element type of `dtype` (float, __half or
// __nv_bfloat16): the one dtype dispatch of the launchers.
template <typename F>
__host__ __forceinline__ cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat:
      return f.template operator()<float>();
    case DType::kHalf:
      return f.template operator()<__half>();
    default:
      return f.template operator()<__nv_bfloat16>();
  }
}

// Largest power of two <= 16 that divides every value: the widest vector access that keeps all
// pointers and strides aligned.
inline int widest_vector_bytes(std::initializer_list<uint64_t> values) {
  int bytes = 16;
  for (uint64_t v : values) {
    while (bytes > 1 && v % static_cast<uint64_t>(bytes) != 0) bytes /= 2;
  }
  return bytes;
}

// Plain-old-data vector types for byte-exact copies of 1, 2, 4, 8 or 16 bytes.
template <int Bytes>
struct VecOf;
template <>
struct VecOf<16> {
  using type = uint4;
};
template <>
struct VecOf<8> {
  using type = uint2;
};
template <>
struct VecOf<4> {
  using type = uint32_t;
};
template <>
struct VecOf<2> {
  using type = uint16_t;
};
template <>
struct VecOf<1> {
  using type = uint8_t;
};

// Calls f.template operator()<Bytes>() with Bytes a compile-time vector width.
template <typename F>
cudaError_t dispatch_vector_bytes(int bytes, F&& f) {
  switch (bytes) {
    case 16:
      return f.template operator()<16>();
    case 8:
      return f.template operator()<8>();
    case 4:
      return f.template operator()<4>();
    case 2:
      return f.template operator()<2>();
    default:
      return f.template operator()<1>();
  }
}

}  // namespace pipo
