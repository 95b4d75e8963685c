// Helpers shared by the torch-free CUDA kernels under csrc/include/pipo/.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pipo {

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
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
