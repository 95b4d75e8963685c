// Argument checks shared by the CPU and CUDA launch glue. Every message names the argument and
// what was expected, so a user can fix the call without reading this file.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <string>

namespace pipo {

inline std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got shape ", shape_str(t));
}

inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ",
              t.scalar_type());
}

inline void check_float(const at::Tensor& t, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kHalf || d == at::kBFloat16, name,
              ": expected float32, float16 or bfloat16, got ", d);
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* name,
                             const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, ": expected the device of ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor, got strides ",
              c10::str(t.strides()), " for shape ", shape_str(t));
}

// An index tensor the kernels read by flat position: dim, dtype, and contiguous (a strided view
// would be read as raw storage; copying it instead would allocate behind a CUDA graph's back).
inline void check_index(const at::Tensor& t, int64_t dim, at::ScalarType dtype, const char* name) {
  check_dim(t, dim, name);
  check_dtype(t, dtype, name);
  check_contiguous(t, name);
}

inline void check_size(const at::Tensor& t, int64_t dim, int64_t size, const char* name,
                       const char* what) {
  TORCH_CHECK(t.size(dim) == size, name, ": expected size ", size, " in dim ", dim, " (", what,
              "), got shape ", shape_str(t));
}

// PIPO_VALIDATE=1 turns on the range checks that would need a device-to-host sync on CUDA.
inline bool validate_enabled() {
  const char* v = std::getenv("PIPO_VALIDATE");
  return v != nullptr && v[0] != '\0' && v[0] != '0';
}

}  // namespace pipo
