// The float32 GEMV of the linear op (linear.cpp), for other CPU kernels that multiply a few rows
// by a large weight (sample_tokens' LM-head tiles).
#pragma once

#include <cstdint>

namespace pipo::cpu {

// Rows of x handled by gemv_f32; above this the weight is reused enough for a GEMM.
constexpr int64_t kMaxGemvRows = 8;

// out[r, j] = dot(x[r], w[j]) for r < n, j < o (out row-major [n, o], x rows sx floats apart, w
// [o, k] row-major), single-threaded. Returns false, writing nothing, when it does not apply
// (n > kMaxGemvRows or a CPU without AVX-512): the caller then uses a GEMM.
bool gemv_f32(const float* x, int64_t n, int64_t sx, const float* w, int64_t o, int64_t k,
              float* out);

}  // namespace pipo::cpu
