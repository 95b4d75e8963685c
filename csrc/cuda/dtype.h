// The torch side of the CUDA dtype dispatch: at::ScalarType -> pipo::DType (common.cuh).
#pragma once

#include <ATen/ATen.h>

#include "pipo/common.cuh"

namespace pipo {

// float32, float16 or bfloat16 (the argument checks have rejected every other dtype).
inline DType cuda_dtype(at::ScalarType t) {
  return t == at::kFloat ? DType::kFloat : t == at::kHalf ? DType::kHalf : DType::kBFloat16;
}

}  // namespace pipo
