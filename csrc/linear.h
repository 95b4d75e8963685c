// Argument checks of the linear op and its ATen formulation, shared by the CPU and CUDA glue.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "checks.h"

namespace pipo {

// "none": out = x @ weight.T; "swiglu": weight holds [gate; up] rows and out = silu(x @ gate.T)
// * (x @ up.T). Returns whether the activation is swiglu.
inline bool parse_linear_activation(c10::string_view activation) {
  TORCH_CHECK(activation == "none" || activation == "swiglu",
              "activation: expected 'none' or 'swiglu', got '", std::string(activation), "'");
  return activation == "swiglu";
}

// x [N, K] float (rows may be strided, each row contiguous); weight [O, K] contiguous, x's dtype
// and device; O even for swiglu.
inline bool check_linear_args(const at::Tensor& x, const at::Tensor& weight,
                              c10::string_view activation) {
  const bool swiglu = parse_linear_activation(activation);
  check_dim(x, 2, "x");
  check_float(x, "x");
  TORCH_CHECK(x.size(1) <= 1 || x.stride(1) == 1,
              "x: expected each row contiguous (stride(1) == 1), got strides ",
              c10::str(x.strides()));
  check_dim(weight, 2, "weight");
  check_size(weight, 1, x.size(1), "weight", "in_features of x");
  check_same_dtype(weight, x, "weight", "x");
  check_same_device(weight, x, "weight", "x");
  check_contiguous(weight, "weight");
  TORCH_CHECK(!swiglu || weight.size(0) % 2 == 0,
              "weight: expected an even number of rows ([gate; up]) for swiglu, got shape ",
              shape_str(weight));
  return swiglu;
}

// The op in ATen ops (cuBLAS / MKL GEMM), rounded like the model's eager layers: the matmul in
// the dtype, silu(gate) and the product each rounded to the dtype.
inline at::Tensor linear_aten(const at::Tensor& x, const at::Tensor& weight, bool swiglu) {
  at::Tensor y = at::matmul(x, weight.t());
  if (!swiglu) return y;
  const int64_t half = weight.size(0) / 2;
  return at::silu(y.narrow(1, 0, half)) * y.narrow(1, half, half);
}

}  // namespace pipo
