// SIMD helpers of the CPU kernels (paged attention, latent projections, sampling): the one scheme
// by which a kernel is compiled once per instruction set and picked at run time.
//
//  - A kernel body is compiled several times, each copy under a target: a whole file included
//    between PIPO_PUSH_TARGET(PIPO_TARGET_...) and PIPO_POP_TARGET() (attention_kernel.h,
//    latent_tiles.h), or a function marked PIPO_TARGET(PIPO_TARGET_...) around an always-inline
//    body (sampling's LM-head tile).
//  - cpu_isa() names the best copy the running CPU supports; PIPO_CPU_ISA=generic|avx2|avx512|
//    avx512bf16 caps it, so the tests run every copy the CPU has.
//  - Portable 16-float vectors (GCC vector extensions, 64 bytes) for code that is written once and
//    vectorised by each target: AVX-512 registers, AVX2 pairs or scalar code in the generic copy.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

// Target strings of the copies, for PIPO_PUSH_TARGET and PIPO_TARGET.
#define PIPO_TARGET_AVX512_BF16 "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,avx2"
#define PIPO_TARGET_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx2"
#define PIPO_TARGET_AVX2 "avx2,fma,f16c"

#define PIPO_PRAGMA_(x) _Pragma(#x)
#define PIPO_PRAGMA_TARGET_(t) PIPO_PRAGMA_(GCC target(t))
// Everything up to PIPO_POP_TARGET() is compiled for target t (templates included).
#define PIPO_PUSH_TARGET(t) _Pragma("GCC push_options") PIPO_PRAGMA_TARGET_(t)
#define PIPO_POP_TARGET() _Pragma("GCC pop_options")
// One function compiled for target t.
#define PIPO_TARGET(t) __attribute__((target(t)))
#define PIPO_INLINE inline __attribute__((always_inline))

namespace pipo::cpu {

// The copies, in increasing order of what they need.
enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

// The best copy this CPU runs (detected once).
inline Isa best_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const Isa isa = [] {
    __builtin_cpu_init();
    const bool fma = __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return __builtin_cpu_supports("avx512bf16") ? Isa::kAvx512Bf16 : Isa::kAvx512;
    if (fma && __builtin_cpu_supports("avx2")) return Isa::kAvx2;
    return Isa::kGeneric;
  }();
  return isa;
#else
  return Isa::kGeneric;
#endif
}

// best_isa(), capped by PIPO_CPU_ISA (read at every call, so a test can change it).
inline Isa cpu_isa() {
  Isa isa = best_isa();
  if (const char* env = std::getenv("PIPO_CPU_ISA"); env != nullptr && env[0] != '\0') {
    const std::string name(env);
    const Isa cap = name == "generic"  ? Isa::kGeneric
                    : name == "avx2"   ? Isa::kAvx2
                    : name == "avx512" ? Isa::kAvx512
                                       : Isa::kAvx512Bf16;
    TORCH_CHECK(cap != Isa::kAvx512Bf16 || name == "avx512bf16",
                "PIPO_CPU_ISA: expected generic, avx2, avx512 or avx512bf16, got ", name);
    if (static_cast<int>(cap) < static_cast<int>(isa)) isa = cap;
  }
  return isa;
}

// 16 floats / int32 / uint32 lanes. Values of these types never cross a call that is not inlined,
// so GCC's -Wpsabi note (the ABI of 64-byte vectors) does not apply: silenced here, and by the
// files that pass them between their own inlined functions.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
using vf16 = float __attribute__((vector_size(64)));
using vi16 = int32_t __attribute__((vector_size(64)));
using vu16 = uint32_t __attribute__((vector_size(64)));

PIPO_INLINE vf16 load16(const float* p) {
  vf16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
PIPO_INLINE void store16(float* p, const vf16& v) { std::memcpy(p, &v, sizeof(v)); }
PIPO_INLINE vu16 load16(const uint32_t* p) {
  vu16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
PIPO_INLINE void store16(uint32_t* p, const vu16& v) { std::memcpy(p, &v, sizeof(v)); }
// No broadcast (scalar -> vector) helper here: one must be defined inside the target region of
// the kernel that uses it (attention_kernel.h's splat16). Defined out here, it is lowered for the
// generic target before it is inlined, and GCC rebuilt every broadcast of the attention kernel's
// inner loops from 16 masked single-lane loads (prefill 3-4x slower). Loads and stores (memcpy)
// are unaffected.
#pragma GCC diagnostic pop

#if defined(__x86_64__) && defined(__GNUC__)
// out[j] = sum of the 16 lanes of v_j: one interleaving tree for all four (about half the
// shuffles of four separate reductions). For AVX-512 copies (latent projections, linear).
PIPO_TARGET(PIPO_TARGET_AVX512)
PIPO_INLINE void reduce4_avx512(__m512 v0, __m512 v1, __m512 v2, __m512 v3, float* out) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(v0, v1), _mm512_unpackhi_ps(v0, v1));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(v2, v3), _mm512_unpackhi_ps(v2, v3));
  const __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
  // Each 128-bit lane now holds (a, b, c, d) partial sums.
  const __m512 abcd = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                                    _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
  const __m128 lo = _mm_add_ps(_mm512_castps512_ps128(abcd), _mm512_extractf32x4_ps(abcd, 1));
  const __m128 hi = _mm_add_ps(_mm512_extractf32x4_ps(abcd, 2), _mm512_extractf32x4_ps(abcd, 3));
  _mm_storeu_ps(out, _mm_add_ps(lo, hi));
}
#endif

}  // namespace pipo::cpu
