// linear on the CPU: decode-sized products (a few rows against a weight read once) by an
// AVX-512 GEMV that streams the weight rows; everything else by ATen's GEMM.
//
// At one to eight rows a [O, K] float32 weight is read once and each weight value feeds one to
// eight multiply-adds, so the product is bound by the weight's bytes. ATen (MKL sgemv / sgemm on
// this project's AMD machine) reached about half the single-core read bandwidth there
// (docs/engine.md); this kernel reads eight weight rows at a time with one accumulator per (row
// of x, weight row), so eight independent FMA chains hide the FMA latency, and sums the
// accumulators' lanes four at a time. Larger N is compute-bound and goes to ATen's blocked GEMM,
// as do float16 / bfloat16 and CPUs without AVX-512.
#include "../linear.h"

#include <ATen/Parallel.h>
#include <torch/all.h>

#include <algorithm>
#include <cmath>

#include "../ops.h"
#include "gemv.h"
#include "vec.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PIPO_LINEAR_AVX512 1
#endif

namespace pipo {
namespace gemv_cpu {

using cpu::kMaxGemvRows;
// Weight rows per register tile, and rows of x per tile (8 x 3 accumulators + 3 x + 1 weight
// register fit the 32 vector registers).
constexpr int kTileOut = 8;
constexpr int kTileRows = 3;

struct Problem {
  const float* x;  // [n, k], row stride sx
  const float* w;  // [o, k] contiguous
  float* out;      // [n, o_out] contiguous
  int64_t n, k, o, sx;
  bool swiglu;  // o_out = o / 2: out[:, j] = silu(row j) * (row o/2 + j)
};

#ifdef PIPO_LINEAR_AVX512
PIPO_PUSH_TARGET(PIPO_TARGET_AVX512)
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512 {

using cpu::reduce4_avx512;

// acc[r][j] = dot(x row r, w[j]) for R rows of x and kTileOut weight rows.
template <int R>
PIPO_INLINE void tile(const float* x, int64_t sx, const float* const* w, int64_t k,
                      float (*acc)[kTileOut]) {
  __m512 sum[R][kTileOut];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kTileOut; ++j) sum[r][j] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= k; c += 16) {
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(x + r * sx + c);
    for (int j = 0; j < kTileOut; ++j) {
      const __m512 wv = _mm512_loadu_ps(w[j] + c);
      for (int r = 0; r < R; ++r) sum[r][j] = _mm512_fmadd_ps(xv[r], wv, sum[r][j]);
    }
  }
  if (c < k) {  // masked loads read nothing past the row
    const __mmask16 m = static_cast<__mmask16>((1u << (k - c)) - 1);
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_maskz_loadu_ps(m, x + r * sx + c);
    for (int j = 0; j < kTileOut; ++j) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, w[j] + c);
      for (int r = 0; r < R; ++r) sum[r][j] = _mm512_fmadd_ps(xv[r], wv, sum[r][j]);
    }
  }
  for (int r = 0; r < R; ++r) {
    reduce4_avx512(sum[r][0], sum[r][1], sum[r][2], sum[r][3], acc[r]);
    reduce4_avx512(sum[r][4], sum[r][5], sum[r][6], sum[r][7], acc[r] + 4);
  }
}

// Output columns [col0, col0 + cols) of every row of x. A tile covers kTileOut output columns
// ("none") or kTileOut / 2 columns, i.e. their gate and up rows ("swiglu"); rows past the end
// repeat the last valid row and are not stored.
inline void run_cols(const Problem& p, int64_t col0, int64_t col1) {
  const int64_t per_tile = p.swiglu ? kTileOut / 2 : kTileOut;
  const int64_t out_cols = p.swiglu ? p.o / 2 : p.o;
  float acc[kTileRows][kTileOut];
  for (int64_t c0 = col0; c0 < col1; c0 += per_tile) {
    const int64_t cols = std::min(per_tile, col1 - c0);
    const float* w[kTileOut];
    for (int j = 0; j < kTileOut; ++j) {
      const int64_t jj = p.swiglu ? j % per_tile : j;
      const int64_t row = c0 + std::min<int64_t>(jj, cols - 1);
      w[j] = p.w + (p.swiglu && j >= per_tile ? row + out_cols : row) * p.k;
    }
    for (int64_t r0 = 0; r0 < p.n; r0 += kTileRows) {
      const int64_t rows = std::min<int64_t>(kTileRows, p.n - r0);
      const float* x = p.x + r0 * p.sx;
      if (rows == 3)
        tile<3>(x, p.sx, w, p.k, acc);
      else if (rows == 2)
        tile<2>(x, p.sx, w, p.k, acc);
      else
        tile<1>(x, p.sx, w, p.k, acc);
      for (int64_t r = 0; r < rows; ++r) {
        float* dst = p.out + (r0 + r) * out_cols + c0;
        if (p.swiglu) {
          for (int64_t j = 0; j < cols; ++j) {
            const float g = acc[r][j];
            dst[j] = g / (1.0f + std::exp(-g)) * acc[r][per_tile + j];
          }
        } else {
          for (int64_t j = 0; j < cols; ++j) dst[j] = acc[r][j];
        }
      }
    }
  }
}

}  // namespace avx512
#pragma GCC diagnostic pop
PIPO_POP_TARGET()
#endif

// Whether the GEMV kernel runs this call (else ATen's GEMM does).
inline bool use_gemv(const at::Tensor& x, int64_t n) {
#ifdef PIPO_LINEAR_AVX512
  return x.scalar_type() == at::kFloat && n <= kMaxGemvRows && cpu::cpu_isa() >= cpu::Isa::kAvx512;
#else
  (void)x;
  (void)n;
  return false;
#endif
}

}  // namespace gemv_cpu

bool cpu::gemv_f32(const float* x, int64_t n, int64_t sx, const float* w, int64_t o, int64_t k,
                   float* out) {
#ifdef PIPO_LINEAR_AVX512
  if (n > kMaxGemvRows || k == 0 || cpu::cpu_isa() < cpu::Isa::kAvx512) return false;
  if (n == 0 || o == 0) return true;
  gemv_cpu::avx512::run_cols(gemv_cpu::Problem{x, w, out, n, k, o, sx, false}, 0, o);
  return true;
#else
  (void)x, (void)n, (void)sx, (void)w, (void)o, (void)k, (void)out;
  return false;
#endif
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, c10::string_view activation) {
  using namespace gemv_cpu;
  const bool swiglu = check_linear_args(x, weight, activation);
  TORCH_CHECK(x.device().is_cpu(), "x: expected a CPU tensor, got ", x.device());
  const int64_t n = x.size(0), k = x.size(1), o = weight.size(0);
  if (!use_gemv(x, n) || k == 0) return linear_aten(x, weight, swiglu);
  const int64_t out_cols = swiglu ? o / 2 : o;
  at::Tensor out = at::empty({n, out_cols}, x.options());
  if (n == 0 || out_cols == 0) return out;
#ifdef PIPO_LINEAR_AVX512
  const Problem p{x.data_ptr<float>(),
                  weight.data_ptr<float>(),
                  out.data_ptr<float>(),
                  n,
                  k,
                  o,
                  n > 1 ? x.stride(0) : k,
                  swiglu};
  // Threads split the output columns (each reads its own weight rows); a share below ~64K
  // multiply-adds costs more to fork than it saves.
  const int64_t per_tile = swiglu ? kTileOut / 2 : kTileOut;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(n * k, 1));
  const int64_t tiles = (out_cols + per_tile - 1) / per_tile;
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    avx512::run_cols(p, begin * per_tile, std::min(out_cols, end * per_tile));
  });
#endif
  return out;
}

}  // namespace pipo
