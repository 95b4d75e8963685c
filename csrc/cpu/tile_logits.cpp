// The row-dot tile of the CPU kernels that multiply a few rows by a weight (tile_logits.h).
#include "tile_logits.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gemv.h"
#include "vec.h"

namespace pipo::cpu {
namespace {

// out[b, j] = x[b] . w[j] for 16-bit weight rows w [n, H] (bfloat16 or float16). Four rows at a
// time, in chunks of kChunk features: the chunk is converted to float32 once and dotted with
// every row of x while both sit in L1, so the weight is read once whatever B is. GCC vector
// types (vec.h) keep the partial sums in registers; one copy per instruction set below, picked
// at run time. Everything here is internal and inlined into the copies, so GCC's -Wpsabi note
// about passing 64-byte vectors by value does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
using cpu::load16;
using Vec16 = cpu::vf16;

template <typename T>
__attribute__((always_inline)) inline void rows_dot_impl(const float* x, int64_t batch, int64_t h,
                                                         const T* w, int64_t n, float* out,
                                                         float* wbuf, Vec16* acc) {
  constexpr int64_t kRows = 4, kLanes = 16, kChunk = 256;
  const int64_t h16 = h / kLanes * kLanes;
  for (int64_t j0 = 0; j0 < n; j0 += kRows) {
    const int64_t nj = std::min(kRows, n - j0);
    for (int64_t i = 0; i < batch * kRows; ++i) acc[i] = Vec16{};
    for (int64_t c0 = 0; c0 < h16; c0 += kChunk) {
      const int64_t c1 = std::min(h16, c0 + kChunk);
      for (int64_t r = 0; r < kRows; ++r) {
        float* dst = wbuf + r * kChunk;
        const T* src = w + std::min(j0 + r, n - 1) * h;  // rows past n: ignored copies
        for (int64_t i = c0; i < c1; ++i) dst[i - c0] = static_cast<float>(src[i]);
      }
      int64_t b = 0;
      // Four rows of x against the four weight rows: 16 sums, 8 loads per 16 FMAs.
      for (; b + 4 <= batch; b += 4) {
        Vec16 a[4][4];
        for (int q = 0; q < 4; ++q)
          for (int r = 0; r < 4; ++r) a[q][r] = acc[4 * (b + q) + r];
        for (int64_t i = c0; i < c1; i += kLanes) {
          const float* wc = wbuf + (i - c0);
          const Vec16 w0 = load16(wc), w1 = load16(wc + kChunk), w2 = load16(wc + 2 * kChunk),
                      w3 = load16(wc + 3 * kChunk);
          for (int q = 0; q < 4; ++q) {
            const Vec16 xv = load16(x + (b + q) * h + i);
            a[q][0] += w0 * xv;
            a[q][1] += w1 * xv;
            a[q][2] += w2 * xv;
            a[q][3] += w3 * xv;
          }
        }
        for (int q = 0; q < 4; ++q)
          for (int r = 0; r < 4; ++r) acc[4 * (b + q) + r] = a[q][r];
      }
      for (; b < batch; ++b) {
        const float* xb = x + b * h;
        Vec16 a0 = acc[4 * b], a1 = acc[4 * b + 1], a2 = acc[4 * b + 2], a3 = acc[4 * b + 3];
        for (int64_t i = c0; i < c1; i += kLanes) {
          const Vec16 xv = load16(xb + i);
          const float* wc = wbuf + (i - c0);
          a0 += load16(wc) * xv;
          a1 += load16(wc + kChunk) * xv;
          a2 += load16(wc + 2 * kChunk) * xv;
          a3 += load16(wc + 3 * kChunk) * xv;
        }
        acc[4 * b] = a0;
        acc[4 * b + 1] = a1;
        acc[4 * b + 2] = a2;
        acc[4 * b + 3] = a3;
      }
    }
    for (int64_t b = 0; b < batch; ++b) {
      const float* xb = x + b * h;
      for (int64_t r = 0; r < nj; ++r) {
        float total = 0.0f;
        for (int l = 0; l < kLanes; ++l) total += acc[4 * b + r][l];
        const T* src = w + (j0 + r) * h;
        for (int64_t i = h16; i < h; ++i) total += static_cast<float>(src[i]) * xb[i];
        out[b * n + j0 + r] = total;
      }
    }
  }
}

// One copy of the tile kernel per instruction set (vec.h), for both 16-bit weight dtypes.
template <typename T>
PIPO_TARGET(PIPO_TARGET_AVX512)
void rows_dot_avx512(const float* x, int64_t batch, int64_t h, const T* w, int64_t n, float* out,
                     float* wbuf, Vec16* acc) {
  rows_dot_impl(x, batch, h, w, n, out, wbuf, acc);
}
template <typename T>
PIPO_TARGET(PIPO_TARGET_AVX2)
void rows_dot_avx2(const float* x, int64_t batch, int64_t h, const T* w, int64_t n, float* out,
                   float* wbuf, Vec16* acc) {
  rows_dot_impl(x, batch, h, w, n, out, wbuf, acc);
}
template <typename T>
void rows_dot_generic(const float* x, int64_t batch, int64_t h, const T* w, int64_t n, float* out,
                      float* wbuf, Vec16* acc) {
  rows_dot_impl(x, batch, h, w, n, out, wbuf, acc);
}

template <typename T>
void rows_dot(const float* x, int64_t batch, int64_t h, const T* w, int64_t n, float* out,
              float* wbuf, Vec16* acc) {
  switch (cpu::cpu_isa()) {
    case cpu::Isa::kAvx512Bf16:
    case cpu::Isa::kAvx512:
      return rows_dot_avx512(x, batch, h, w, n, out, wbuf, acc);
    case cpu::Isa::kAvx2:
      return rows_dot_avx2(x, batch, h, w, n, out, wbuf, acc);
    default:
      return rows_dot_generic(x, batch, h, w, n, out, wbuf, acc);
  }
}
#pragma GCC diagnostic pop

}  // namespace

void tile_logits(const at::Tensor& x, const at::Tensor& w, float* out, std::vector<float>& wbuf) {
  const int64_t n = w.size(0), h = w.size(1), batch = x.size(0);
  if (w.scalar_type() == at::kFloat) {
    // A few rows (decode): the weight-streaming GEMV of the linear op, about twice MKL's rate on
    // these tiles (docs/engine.md).
    if (x.is_contiguous() && w.stride(1) == 1 && w.stride(0) == h &&
        gemv_f32(x.data_ptr<float>(), batch, h, w.data_ptr<float>(), n, h, out))
      return;
    // Kernels run below autograd: weights that require grad (model parameters) are fine here.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto out_t = at::from_blob(out, {batch, n}, x.options());
    at::mm_out(out_t, x, w.t());
    return;
  }
  // wbuf: 4 x 256 converted weights, then 4 * B Vec16 partial sums (64-byte aligned).
  wbuf.resize(static_cast<size_t>(4 * 256 + 16 + batch * 4 * 16));
  float* conv = wbuf.data();
  auto* acc =
      reinterpret_cast<Vec16*>((reinterpret_cast<uintptr_t>(conv + 4 * 256) + 63) / 64 * 64);
  if (w.scalar_type() == at::kBFloat16) {
    rows_dot(x.data_ptr<float>(), batch, h, w.data_ptr<c10::BFloat16>(), n, out, conv, acc);
  } else {
    rows_dot(x.data_ptr<float>(), batch, h, w.data_ptr<c10::Half>(), n, out, conv, acc);
  }
}

}  // namespace pipo::cpu
