// out[b, j] = x[b] . w[j], the tile product of the CPU kernels that multiply a few rows by a
// large weight one tile of rows at a time (sample_tokens' LM head, pair_out's fc1).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pipo::cpu {

// x: [B, H] float32, contiguous; w: [n, H] float32 / bfloat16 / float16 rows (a narrow() of a
// contiguous weight); out: B * n floats, row-major [B, n]. float32 weights go to MKL; 16-bit
// ones are converted a chunk at a time and read once whatever B is. wbuf: scratch, grown here.
void tile_logits(const at::Tensor& x, const at::Tensor& w, float* out, std::vector<float>& wbuf);

}  // namespace pipo::cpu
