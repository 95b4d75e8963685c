// Helpers shared by the torch-free CUDA kernels under csrc/include/pipo/.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pipo {

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
