// Fused latent projections on the CPU: fold_pairs (embedding gather of the k tokens of each group
// + concat + linear + bias + activation) and unfold_input (two RMSNorms + concat + linear), one
// tiled GEMM each.
//
// The GEMM body (latent_tiles.h) is compiled three times (vec.h): for AVX-512 with the bfloat16
// dot product, for AVX-512, and for the baseline instruction set, picked at run time. Parallel
// over output blocks, so the weight, the bytes that bound decode, is streamed from memory once
// for all rows.
#include "../latent.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/all.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "vec.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PIPO_LATENT_AVX512 1
#endif

namespace pipo {
namespace latent_cpu {

// Raw 16-bit storage, so that the vectorised loads see plain bits (no torch types inside).
struct Bf16 {
  uint16_t bits;
};
struct Fp16 {
  uint16_t bits;
};

inline float to_float(float x) { return x; }
inline float to_float(Bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline float to_float(Fp16 x) { return c10::detail::fp16_ieee_to_fp32_value(x.bits); }

inline void from_float(float x, float* dst) { *dst = x; }
inline void from_float(float x, Bf16* dst) { dst->bits = c10::BFloat16(x).x; }
inline void from_float(float x, Fp16* dst) { dst->bits = c10::Half(x).x; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows x outputs of one register tile, and the cache blocks around it: a block of kBlockRows rows
// times kBlockOut outputs accumulates in a float tile over chunks of kChunk columns, so the A rows
// of a chunk stay in L1 (4 x 1024 x 4 bytes at most) and the weight block of a chunk in L2.
constexpr int kTileRows = 4;
constexpr int kTileOut = 4;
constexpr int64_t kBlockRows = 64;
constexpr int64_t kBlockOut = 64;
constexpr int64_t kChunk = 1024;
constexpr int64_t kAccStride = kBlockOut;

struct Problem {
  const void* const* src;  // [N, parts] row pointers: the parts of each input, in column order
  const float* scale;      // [N, parts] RMSNorm scale of each part (unfold) or nullptr
  const float* gamma;      // [parts * H] norm weights of every part (unfold) or nullptr
  const void* weight;      // [O, parts * H]
  const float* bias;       // [O] or nullptr
  void* out;               // [N, O]
  int64_t n, h, o;
  int64_t parts;  // k tokens of a fold group; 2 for unfold_input (embedding, hidden)
  bool silu;
};

template <typename T>
void store_block(const Problem& p, const float* acc, int64_t row0, int64_t rows, int64_t out0,
                 int64_t outs) {
  T* out = static_cast<T*>(p.out);
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = acc + r * kAccStride;
    T* dst = out + (row0 + r) * p.o + out0;
    for (int64_t j = 0; j < outs; ++j) {
      float v = a[j] + (p.bias != nullptr ? p.bias[out0 + j] : 0.0f);
      if (p.silu) v = v / (1.0f + std::exp(-v));
      from_float(v, dst + j);
    }
  }
}

#ifdef PIPO_LATENT_AVX512
PIPO_PUSH_TARGET(PIPO_TARGET_AVX512)
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512 {

struct Vec {
  using V = __m512;
  static constexpr int kWidth = 16;
  static constexpr bool kPairDot = false;
  static inline __attribute__((always_inline)) V zero() { return _mm512_setzero_ps(); }
  static inline __attribute__((always_inline)) V load(const float* p) { return _mm512_loadu_ps(p); }
  static inline __attribute__((always_inline)) V load(const Bf16* p) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  static inline __attribute__((always_inline)) V load(const Fp16* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline __attribute__((always_inline)) V set1(float x) { return _mm512_set1_ps(x); }
  static inline __attribute__((always_inline)) void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static inline __attribute__((always_inline)) V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static inline __attribute__((always_inline)) V fma(V a, V b, V c) {
    return _mm512_fmadd_ps(a, b, c);
  }
  // out[j] = sum of the 16 lanes of v[j]: one interleaving tree for all four (about half the
  // shuffles of four separate reductions).
  static inline __attribute__((always_inline)) void reduce4(const V (&v)[4], float* out) {
    const V ab = _mm512_add_ps(_mm512_unpacklo_ps(v[0], v[1]), _mm512_unpackhi_ps(v[0], v[1]));
    const V cd = _mm512_add_ps(_mm512_unpacklo_ps(v[2], v[3]), _mm512_unpackhi_ps(v[2], v[3]));
    const __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
    // Each 128-bit lane now holds (a, b, c, d) partial sums.
    const V abcd = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
    const __m128 lo = _mm_add_ps(_mm512_castps512_ps128(abcd), _mm512_extractf32x4_ps(abcd, 1));
    const __m128 hi = _mm_add_ps(_mm512_extractf32x4_ps(abcd, 2), _mm512_extractf32x4_ps(abcd, 3));
    _mm_storeu_ps(out, _mm_add_ps(lo, hi));
  }
};

#include "latent_tiles.h"

}  // namespace avx512

PIPO_PUSH_TARGET(PIPO_TARGET_AVX512_BF16)
// AVX-512 plus the bfloat16 dot product (Zen 4, Cooper Lake, Sapphire Rapids and later).
namespace avx512_bf16 {

struct Vec : avx512::Vec {
  using P = __m512bh;  // 32 bfloat16
  static constexpr bool kPairDot = true;
  static inline __attribute__((always_inline)) P load_pairs(const Bf16* p) {
    return reinterpret_cast<P>(_mm512_loadu_si512(p));
  }
  static inline __attribute__((always_inline)) void store_pairs(Bf16* p, P v) {
    _mm512_storeu_si512(p, reinterpret_cast<__m512i>(v));
  }
  // Rounds lo (elements 0-15) and hi (16-31) to bfloat16, nearest even.
  static inline __attribute__((always_inline)) P to_pairs(V lo, V hi) {
    return _mm512_cvtne2ps_pbh(hi, lo);
  }
  static inline __attribute__((always_inline)) V pair_dot(P a, P b, V c) {
    return _mm512_dpbf16_ps(c, a, b);
  }
};

#include "latent_tiles.h"

}  // namespace avx512_bf16
PIPO_POP_TARGET()

#pragma GCC diagnostic pop
PIPO_POP_TARGET()
#endif

namespace generic {

// One float at a time: the portable fallback, which the compiler may still vectorise.
struct Vec {
  using V = float;
  static constexpr int kWidth = 1;
  static constexpr bool kPairDot = false;
  static V zero() { return 0.0f; }
  template <typename T>
  static V load(const T* p) {
    return to_float(*p);
  }
  static V set1(float x) { return x; }
  static void store(float* p, V v) { *p = v; }
  static V mul(V a, V b) { return a * b; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static void reduce4(const V (&v)[4], float* out) {
    for (int j = 0; j < 4; ++j) out[j] = v[j];
  }
};

#include "latent_tiles.h"

}  // namespace generic

template <typename T, bool kNorm>
void run(const Problem& p) {
  const int64_t row_blocks = ceil_div(p.n, kBlockRows);
  const int64_t tasks = ceil_div(p.o, kBlockOut) * row_blocks;
  // A task is worth a thread only with enough multiply-adds to hide the fork (~1M).
  const int64_t task_macs = std::min(p.n, kBlockRows) * kBlockOut * p.parts * p.h;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(task_macs, 1));
  const cpu::Isa isa = cpu::cpu_isa();  // no AVX2 copy: below AVX-512 the generic one runs
  const bool avx512 = isa >= cpu::Isa::kAvx512;
  const bool bf16_dot = std::is_same_v<T, Bf16> && isa == cpu::Isa::kAvx512Bf16;
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
#ifdef PIPO_LATENT_AVX512
    if constexpr (std::is_same_v<T, Bf16>)
      if (bf16_dot) return avx512_bf16::run_blocks<T, kNorm>(p, begin, end);
    if (avx512) return avx512::run_blocks<T, kNorm>(p, begin, end);
#endif
    generic::run_blocks<T, kNorm>(p, begin, end);
  });
}

template <bool kNorm>
void dispatch(const Problem& p, at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return run<float, kNorm>(p);
    case at::kBFloat16:
      return run<Bf16, kNorm>(p);
    default:
      return run<Fp16, kNorm>(p);
  }
}

// dst[(i / every) * parts + first + i % every] = the table row of ids[i]: the `every` ids of an
// input fill its parts from `first` on.
template <typename Id>
void row_pointers(const at::Tensor& ids, const at::Tensor& table, int64_t stride, int64_t every,
                  int64_t parts, int64_t first, const void** dst) {
  const Id* id = ids.data_ptr<Id>();
  const auto* base = static_cast<const char*>(table.data_ptr());
  const int64_t row_bytes = stride * table.element_size();
  at::parallel_for(0, ids.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      dst[(i / every) * parts + first + i % every] = base + static_cast<int64_t>(id[i]) * row_bytes;
  });
}

void gather_rows(const at::Tensor& ids, const at::Tensor& table, int64_t every, int64_t parts,
                 int64_t first, const void** dst) {
  if (ids.scalar_type() == at::kInt)
    row_pointers<int32_t>(ids, table, table.stride(0), every, parts, first, dst);
  else
    row_pointers<int64_t>(ids, table, table.stride(0), every, parts, first, dst);
}

// Appends a contiguous float tensor's values as float32 (plain loops: a torch conversion costs
// more than the whole decode-sized GEMM of a small model).
void append_floats(const at::Tensor& t, std::vector<float>& dst) {
  const int64_t n = t.numel();
  const size_t at0 = dst.size();
  dst.resize(at0 + n);
  float* out = dst.data() + at0;
  const void* src = t.data_ptr();
  switch (t.scalar_type()) {
    case at::kFloat:
      std::memcpy(out, src, n * sizeof(float));
      break;
    case at::kBFloat16:
      for (int64_t i = 0; i < n; ++i) out[i] = to_float(static_cast<const Bf16*>(src)[i]);
      break;
    default:
      for (int64_t i = 0; i < n; ++i) out[i] = to_float(static_cast<const Fp16*>(src)[i]);
  }
}

// 1 / sqrt(mean(x^2) + eps) of one row, in float32.
template <typename T>
float rms_scale(const T* x, int64_t h, double eps) {
  float ss = 0.0f;
  for (int64_t k = 0; k < h; ++k) {
    const float v = to_float(x[k]);
    ss += v * v;
  }
  return 1.0f / std::sqrt(ss / static_cast<float>(h) + static_cast<float>(eps));
}

template <typename T>
void rms_scales(const void* const* src, int64_t n, int64_t h, double eps, float* scale) {
  at::parallel_for(0, 2 * n, std::max<int64_t>(1, 16384 / std::max<int64_t>(h, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t i = begin; i < end; ++i)
                       scale[i] = rms_scale(static_cast<const T*>(src[i]), h, eps);
                   });
}

}  // namespace latent_cpu

at::Tensor fold_pairs_cpu(const at::Tensor& pair_ids, const at::Tensor& embedding,
                          const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          c10::string_view activation) {
  using namespace latent_cpu;
  check_fold_args(pair_ids, embedding, weight, bias, activation);
  TORCH_CHECK(embedding.device().is_cpu(), "embedding: expected a CPU tensor, got ",
              embedding.device());
  check_token_values(pair_ids, embedding.size(0), "pair_ids");
  const int64_t n = pair_ids.size(0), k = pair_ids.size(1), h = embedding.size(1);
  const int64_t o = weight.size(0);
  at::Tensor out = at::empty({n, o}, embedding.options());
  if (n == 0 || o == 0) return out;
  std::vector<const void*> src(k * n);
  gather_rows(pair_ids, embedding, k, k, 0, src.data());
  std::vector<float> bias_f;
  if (bias.has_value()) append_floats(*bias, bias_f);
  Problem p{src.data(),
            nullptr,
            nullptr,
            weight.data_ptr(),
            bias.has_value() ? bias_f.data() : nullptr,
            out.data_ptr(),
            n,
            h,
            o,
            k,
            parse_activation(activation)};
  dispatch<false>(p, embedding.scalar_type());
  return out;
}

at::Tensor unfold_input_cpu(const at::Tensor& token_ids, const at::Tensor& hidden,
                            const at::Tensor& embedding, const at::Tensor& embed_norm_weight,
                            const at::Tensor& hidden_norm_weight, const at::Tensor& weight,
                            double eps) {
  using namespace latent_cpu;
  check_unfold_args(token_ids, hidden, embedding, embed_norm_weight, hidden_norm_weight, weight);
  TORCH_CHECK(embedding.device().is_cpu(), "embedding: expected a CPU tensor, got ",
              embedding.device());
  check_token_values(token_ids, embedding.size(0), "token_ids");
  const int64_t n = token_ids.size(0), h = embedding.size(1), o = weight.size(0);
  at::Tensor out = at::empty({n, o}, embedding.options());
  if (n == 0 || o == 0) return out;
  std::vector<const void*> src(2 * n);
  gather_rows(token_ids, embedding, 1, 2, 0, src.data());
  const auto* hid = static_cast<const char*>(hidden.data_ptr());
  for (int64_t i = 0; i < n; ++i)
    src[2 * i + 1] = hid + i * hidden.stride(0) * hidden.element_size();
  std::vector<float> gamma;
  append_floats(embed_norm_weight, gamma);
  append_floats(hidden_norm_weight, gamma);
  std::vector<float> scale(2 * n);
  switch (embedding.scalar_type()) {
    case at::kFloat:
      rms_scales<float>(src.data(), n, h, eps, scale.data());
      break;
    case at::kBFloat16:
      rms_scales<Bf16>(src.data(), n, h, eps, scale.data());
      break;
    default:
      rms_scales<Fp16>(src.data(), n, h, eps, scale.data());
  }
  Problem p{
      src.data(), scale.data(), gamma.data(), weight.data_ptr(), nullptr, out.data_ptr(), n, h, o,
      2,          false};
  dispatch<true>(p, embedding.scalar_type());
  return out;
}

}  // namespace pipo
