// The CPU paged-attention tile kernel, compiled once per instruction set: attention.cpp includes
// this file several times, each time under a different `#pragma GCC target` and with PIPO_ISA
// naming the namespace, and picks the variant the running CPU supports. No include guard, on
// purpose.
//
// A task is (sequence, kv head, tile of up to kMaxRows query rows, KV split). A query row is one
// (query, head of the GQA group) pair, so every K/V row converted to float is used by all the
// group's heads and all the tile's queries. Scores are kept key-major ([key][row]) and the output
// transposed ([dim][row]), so both products are "broadcast one K/V element, multiply a vector of
// 16 rows": no horizontal sums, and the online softmax is vectorised over rows too.
//
// With AVX512-BF16 (PIPO_ISA_BF16_DOT), bfloat16 inputs skip the conversion to float: both
// products use vdpbf16ps on pairs (of head dims for Q·K, of keys for P·V, P rounded to bfloat16
// as GPU flash kernels do), with float32 accumulation, twice the multiply rate of float FMAs.

namespace pipo::cpu_attention::PIPO_ISA {
namespace {

using vf = cpu::vf16;
using vi = cpu::vi16;
using vu = cpu::vu16;
using cpu::load16;
using cpu::store16;

// Broadcasts, defined inside this file's target region (see vec.h). AVX-512: a shuffle of lane
// 0, one vbroadcastss / vpbroadcastd or a broadcast operand of the FMA. The narrower copies
// split a 16-lane shuffle into slow pieces (3x slower prefill on AVX2), so they build the
// vector from its lanes.
#ifdef PIPO_ISA_AVX512
template <typename V, typename S>
PIPO_INLINE V splat_lanes(S x) {
  return __builtin_shuffle(V{x}, vi{});
}
#else
template <typename V, typename S>
PIPO_INLINE V splat_lanes(S x) {
  return V{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}
#endif
PIPO_INLINE vf splat16(float x) { return splat_lanes<vf>(x); }
PIPO_INLINE vu splat16(uint32_t x) { return splat_lanes<vu>(x); }
PIPO_INLINE vi splat16(int32_t x) { return splat_lanes<vi>(x); }

PIPO_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }

// 2^x for x <= 126 (scores minus the running maximum); 0 below -126, including -inf.
// Round-to-nearest range reduction and a degree-6 Taylor polynomial: relative error ~2e-7.
PIPO_INLINE vf exp2v(vf x) {
  const vi tiny = x < -126.0f;
  x = x < -126.0f ? splat16(-126.0f) : x;
  const vf shifted = x + 0.5f;
  vi n = __builtin_convertvector(shifted, vi);
  n += __builtin_convertvector(n, vf) > shifted ? vi{} - 1 : vi{};  // trunc -> floor
  const vf f = x - __builtin_convertvector(n, vf);
  vf poly = splat16(1.5403530393381606e-4f);
  poly = poly * f + 1.3333558146428443e-3f;
  poly = poly * f + 9.618129107628477e-3f;
  poly = poly * f + 5.550410866482158e-2f;
  poly = poly * f + 2.402265069591007e-1f;
  poly = poly * f + 6.931471805599453e-1f;
  poly = poly * f + 1.0f;
  const vi bits = (n + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const vf r = poly * scale;
  return tiny ? vf{} : r;
}

// Converts n values to float.
PIPO_INLINE void to_float(const float* src, float* dst, int64_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}
PIPO_INLINE void to_float(const c10::BFloat16* src, float* dst, int64_t n) {
  const auto* bits = reinterpret_cast<const uint16_t*>(src);
  auto* out = reinterpret_cast<uint32_t*>(dst);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint32_t>(bits[i]) << 16;
}
PIPO_INLINE void to_float(const c10::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
#ifdef PIPO_ISA_F16C
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

#ifdef PIPO_ISA_BF16_DOT
constexpr bool kBf16Dot = true;
// acc + a[2i] * b[2i] + a[2i+1] * b[2i+1] per float lane i; a and b hold bfloat16 pairs.
PIPO_INLINE vf dot2(vf acc, vu a, vu b) {
  return reinterpret_cast<vf>(_mm512_dpbf16_ps(
      reinterpret_cast<__m512>(acc), reinterpret_cast<__m512bh>(a), reinterpret_cast<__m512bh>(b)));
}
// Round-to-nearest-even float -> bfloat16 bits, in the low 16 bits of each lane.
PIPO_INLINE vu bf16_bits(vf x) {
  vu u;
  std::memcpy(&u, &x, sizeof(u));
  const vu lsb = (u >> 16) & 1;
  return (u + 0x7fff + lsb) >> 16 & 0xffff;
}
#else
constexpr bool kBf16Dot = false;
#endif

struct Scratch {
  explicit Scratch(int64_t head_dim)
      : qt(head_dim * kMaxRows, 0.0f),
        ot(head_dim * kMaxRows, 0.0f),
        s(kBlockN * kMaxRows, 0.0f),
        kv(kBlockN * head_dim, 0.0f) {}
  std::vector<float> qt;  // [D][rows] scaled queries, transposed
  std::vector<float> ot;  // [D][rows] output accumulator, transposed
  std::vector<float> s;   // [kBlockN][rows] scores, then probabilities
  std::vector<float> kv;  // [kBlockN][D] the block's K rows, then its V rows, as float
};

#ifdef PIPO_ISA_BF16_DOT
// s[n][:] = scale * sum_i kpair[n][i] . qp[i][:] for the block's nv keys, read straight from the
// cache: [num_pages, page_size, Hkv, D] bfloat16, a pair of dims = one 32-bit word.
template <int C>
void scores_bf16(const Params& p, const c10::BFloat16* k_cache, const int32_t* pages, int64_t blk,
                 int64_t nv, int64_t hkv, const float* qt, float* s) {
  constexpr int R = C * 16;
  const int64_t D = p.head_dim, S = p.page_size, half = D / 2;
  const uint32_t* qp = reinterpret_cast<const uint32_t*>(qt);
  const uint32_t* rows[kBlockN];
  for (int64_t n = 0; n < nv; ++n) {
    const int64_t pos = blk + n;
    const int64_t slot = static_cast<int64_t>(pages[pos / S]) * S + pos % S;
    rows[n] = reinterpret_cast<const uint32_t*>(k_cache + (slot * p.num_kv_heads + hkv) * D);
  }
  for (int64_t n = nv; n < kBlockN; ++n) rows[n] = rows[0];  // computed, then masked
  const vf scale = splat16(p.scale_log2);
  for (int64_t n = 0; n < nv; n += 4) {
    vf acc[4][C] = {};
    for (int64_t i = 0; i < half; ++i) {
      vu qv[C];
      for (int c = 0; c < C; ++c) qv[c] = load16(qp + i * R + c * 16);
      for (int j = 0; j < 4; ++j) {
        const vu kb = splat16(rows[n + j][i]);
        for (int c = 0; c < C; ++c) acc[j][c] = dot2(acc[j][c], qv[c], kb);
      }
    }
    for (int j = 0; j < 4 && n + j < nv; ++j)
      for (int c = 0; c < C; ++c) store16(s + (n + j) * R + c * 16, acc[j][c] * scale);
  }
}

// Output dims [d, d + N) of pv_bf16, accumulated in registers over every key pair (N fixed, so
// nothing spills: a run-time count of dims kept the accumulators on the stack).
template <int N, int C>
PIPO_INLINE void pv_dims_bf16(int64_t d, int64_t D, int64_t pairs, const vf* alpha,
                              const uint32_t* pp, const uint32_t* vp, float* ot) {
  constexpr int R = C * 16;
  vf acc[N][C];
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c) acc[i][c] = load16(ot + (d + i) * R + c * 16) * alpha[c];
  for (int64_t m = 0; m < pairs; ++m) {
    vu pv[C];
    for (int c = 0; c < C; ++c) pv[c] = load16(pp + m * R + c * 16);
    for (int i = 0; i < N; ++i) {
      const vu vb = splat16(vp[m * D + d + i]);
      for (int c = 0; c < C; ++c) acc[i][c] = dot2(acc[i][c], pv[c], vb);
    }
  }
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c) store16(ot + (d + i) * R + c * 16, acc[i][c]);
}

// ot[d][:] = alpha * ot[d][:] + sum_j v[j][d] * s[j][:] over key pairs: the probabilities are
// packed in place into [kBlockN / 2][R] bfloat16 pairs, V rows 2m and 2m+1 into vp[m][D].
template <int C>
void pv_bf16(const Params& p, const c10::BFloat16* v_cache, const int32_t* pages, int64_t blk,
             int64_t nv, int64_t hkv, const vf* alpha, float* s, uint32_t* vp, float* ot) {
  constexpr int R = C * 16;
  const int64_t D = p.head_dim, S = p.page_size, pairs = (nv + 1) / 2;
  auto v_row = [&](int64_t j) {
    const int64_t pos = blk + j;
    const int64_t slot = static_cast<int64_t>(pages[pos / S]) * S + pos % S;
    return reinterpret_cast<const uint16_t*>(v_cache + (slot * p.num_kv_heads + hkv) * D);
  };
  uint32_t* pp = reinterpret_cast<uint32_t*>(s);
  for (int64_t m = 0; m < pairs; ++m) {
    const uint16_t* v0 = v_row(2 * m);
    uint32_t* dst = vp + m * D;
    if (2 * m + 1 < nv) {
      const uint16_t* v1 = v_row(2 * m + 1);
      for (int64_t d = 0; d < D; ++d) dst[d] = v0[d] | static_cast<uint32_t>(v1[d]) << 16;
    } else {
      for (int64_t d = 0; d < D; ++d) dst[d] = v0[d];
    }
    for (int c = 0; c < C; ++c) {  // rows 2m, 2m+1 of s are read before row m is written
      const vu lo = bf16_bits(load16(s + 2 * m * R + c * 16));
      const vu hi = 2 * m + 1 < nv ? bf16_bits(load16(s + (2 * m + 1) * R + c * 16)) : vu{};
      store16(pp + m * R + c * 16, lo | hi << 16);
    }
  }
  int64_t d = 0;
  for (; d + 4 <= D; d += 4) pv_dims_bf16<4, C>(d, D, pairs, alpha, pp, vp, ot);
  for (; d < D; ++d) pv_dims_bf16<1, C>(d, D, pairs, alpha, pp, vp, ot);
}
#endif

// One task: C vectors of 16 rows. Writes the normalised output rows and their log-sum-exp
// (natural log), either to the final tensors or to the split's partial buffers.
template <typename T, int C>
void attend_tile(const Params& p, const Task& task, int64_t hkv, int64_t split, Scratch& w) {
  constexpr int R = C * 16;
  // Pairs of bfloat16 need an even head_dim; the float path handles the rest.
  const bool pairs = kBf16Dot && std::is_same_v<T, c10::BFloat16> && p.head_dim % 2 == 0;
  const int64_t D = p.head_dim, G = p.group, S = p.page_size;
  const int64_t b = task.seq;
  const int64_t q_start = p.q_indptr[b], q_len = p.q_indptr[b + 1] - q_start;
  const int64_t kv_len = p.kv_lens[b], prefix = kv_len - q_len;
  const int64_t nrows = task.rows;
  float* qt = w.qt.data();
  float* ot = w.ot.data();
  float* s = w.s.data();
  float* kv = w.kv.data();
  const T* q = static_cast<const T*>(p.q);
  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  const int32_t* pages = p.block_table + b * p.max_pages;

  // Query index of each row; padding rows copy the last real one (their results are dropped).
  int32_t qi_of[R];
  const int64_t first_qi = task.row0 / G, last_qi = (task.row0 + nrows - 1) / G;
  for (int64_t r = 0; r < R; ++r) {
    if (r >= nrows) {
      qi_of[r] = static_cast<int32_t>(last_qi);
      for (int64_t d = 0; d < D; ++d) qt[d * R + r] = 0.0f;  // zero bits: float or bf16 pairs
      continue;
    }
    const int64_t rr = task.row0 + r, qi = rr / G, head = hkv * G + rr % G;
    qi_of[r] = static_cast<int32_t>(qi);
    const T* q_row = q + (q_start + qi) * p.q_stride_tok + head * p.q_stride_head;
    if (pairs) {  // qt holds [D / 2][R] bfloat16 pairs, unscaled (scaled as scores)
      uint32_t* qp = reinterpret_cast<uint32_t*>(qt);
      for (int64_t i = 0; i < D / 2; ++i) std::memcpy(qp + i * R + r, q_row + 2 * i, 4);
      continue;
    }
    float* row = kv;  // scratch for the converted query row
    to_float(q_row, row, D);
    for (int64_t d = 0; d < D; ++d) qt[d * R + r] = row[d] * p.scale_log2;
  }
  std::fill(ot, ot + D * R, 0.0f);
  vf m[C], l[C];
  for (int c = 0; c < C; ++c) {
    m[c] = splat16(-INFINITY);
    l[c] = vf{};
  }

  // The tile's visible range, cut to this split's share of the sequence.
  const int64_t hi_tile = p.tree_mask == nullptr ? prefix + last_qi + 1 : kv_len;
  const int64_t chunk = split_chunk(kv_len, p.num_splits);
  const int64_t lo = split * chunk, hi = std::min(hi_tile, lo + chunk);
  const int64_t row_bytes = p.num_kv_heads * D;

  for (int64_t blk = lo; blk < hi; blk += kBlockN) {
    const int64_t nv = std::min<int64_t>(kBlockN, hi - blk);
    bool scored = false;
#ifdef PIPO_ISA_BF16_DOT
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (pairs) {
        scores_bf16<C>(p, k_cache, pages, blk, nv, hkv, qt, s);
        scored = true;
      }
    }
#endif
    if (!scored) {
      for (int64_t n = 0; n < nv; ++n) {
        const int64_t pos = blk + n;
        const int64_t slot = static_cast<int64_t>(pages[pos / S]) * S + pos % S;
        to_float(k_cache + slot * row_bytes + hkv * D, kv + n * D, D);
      }
      // s[n][:] = sum_d kv[n][d] * qt[d][:], four keys at a time.
      int64_t n = 0;
      for (; n + 4 <= nv; n += 4) {
        vf acc[4][C] = {};
        const float* k0 = kv + n * D;
        for (int64_t d = 0; d < D; ++d) {
          vf qv[C];
          for (int c = 0; c < C; ++c) qv[c] = load16(qt + d * R + c * 16);
          for (int i = 0; i < 4; ++i) {
            const vf kb = splat16(k0[i * D + d]);
            for (int c = 0; c < C; ++c) acc[i][c] += kb * qv[c];
          }
        }
        for (int i = 0; i < 4; ++i)
          for (int c = 0; c < C; ++c) store16(s + (n + i) * R + c * 16, acc[i][c]);
      }
      for (; n < nv; ++n) {
        vf acc[C] = {};
        for (int64_t d = 0; d < D; ++d) {
          const vf kb = splat16(kv[n * D + d]);
          for (int c = 0; c < C; ++c) acc[c] += kb * load16(qt + d * R + c * 16);
        }
        for (int c = 0; c < C; ++c) store16(s + n * R + c * 16, acc[c]);
      }
    }
    // Mask the query part of the range (the prefix is seen by every query). Causal: only the
    // blocks that reach past the tile's first query (one or two per tile in a long prefill) have
    // anything to mask, 16 rows per compare.
    const int64_t j0 = std::max<int64_t>(0, prefix - blk);
    if (p.tree_mask == nullptr) {
      if (blk + nv - 1 - prefix > first_qi) {
        vi qv[C];
        std::memcpy(qv, qi_of, sizeof(qv));
        for (int64_t j = j0; j < nv; ++j) {
          const vi key = splat16(static_cast<int32_t>(blk + j - prefix));
          for (int c = 0; c < C; ++c) {
            float* sj = s + j * R + c * 16;
            store16(sj, key > qv[c] ? splat16(-INFINITY) : load16(sj));
          }
        }
      }
    } else {
      for (int64_t r = 0; r < nrows; ++r) {
        const bool* row = p.tree_mask + (q_start + qi_of[r]) * p.mask_stride;
        for (int64_t j = j0; j < nv; ++j)
          if (!row[blk + j - prefix]) s[j * R + r] = -INFINITY;
      }
    }
    // Online softmax over the block, vectorised over rows (base 2: scores carry log2(e)).
    vf alpha[C];
    for (int c = 0; c < C; ++c) {
      vf mx = m[c];
      for (int64_t j = 0; j < nv; ++j) mx = vmax(mx, load16(s + j * R + c * 16));
      const vf m_use = mx == -INFINITY ? vf{} : mx;
      alpha[c] = exp2v(m[c] - m_use);
      vf sum = vf{};
      for (int64_t j = 0; j < nv; ++j) {
        const vf pj = exp2v(load16(s + j * R + c * 16) - m_use);
        store16(s + j * R + c * 16, pj);
        sum += pj;
      }
      l[c] = l[c] * alpha[c] + sum;
      m[c] = mx;
    }
#ifdef PIPO_ISA_BF16_DOT
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (pairs) {
        pv_bf16<C>(p, v_cache, pages, blk, nv, hkv, alpha, s, reinterpret_cast<uint32_t*>(kv), ot);
        continue;
      }
    }
#endif
    for (int64_t j = 0; j < nv; ++j) {
      const int64_t pos = blk + j;
      const int64_t slot = static_cast<int64_t>(pages[pos / S]) * S + pos % S;
      to_float(v_cache + slot * row_bytes + hkv * D, kv + j * D, D);
    }
    // ot[d][:] = alpha * ot[d][:] + sum_j kv[j][d] * s[j][:], four dims at a time.
    int64_t d = 0;
    for (; d + 4 <= D; d += 4) {
      vf acc[4][C];
      for (int i = 0; i < 4; ++i)
        for (int c = 0; c < C; ++c) acc[i][c] = load16(ot + (d + i) * R + c * 16) * alpha[c];
      for (int64_t j = 0; j < nv; ++j) {
        vf pv[C];
        for (int c = 0; c < C; ++c) pv[c] = load16(s + j * R + c * 16);
        for (int i = 0; i < 4; ++i) {
          const vf vb = splat16(kv[j * D + d + i]);
          for (int c = 0; c < C; ++c) acc[i][c] += vb * pv[c];
        }
      }
      for (int i = 0; i < 4; ++i)
        for (int c = 0; c < C; ++c) store16(ot + (d + i) * R + c * 16, acc[i][c]);
    }
    for (; d < D; ++d) {
      for (int c = 0; c < C; ++c) {
        vf acc = load16(ot + d * R + c * 16) * alpha[c];
        for (int64_t j = 0; j < nv; ++j) acc += splat16(kv[j * D + d]) * load16(s + j * R + c * 16);
        store16(ot + d * R + c * 16, acc);
      }
    }
  }

  float m_row[R], l_row[R];
  for (int c = 0; c < C; ++c) {
    store16(m_row + c * 16, m[c]);
    store16(l_row + c * 16, l[c]);
  }
  for (int64_t r = 0; r < nrows; ++r) {
    const int64_t rr = task.row0 + r;
    const int64_t token = q_start + rr / G, head = hkv * G + rr % G;
    const int64_t idx = token * p.num_q_heads + head;
    const bool empty = l_row[r] == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / l_row[r];
    const float lse = empty ? -INFINITY : (m_row[r] + std::log2(l_row[r])) * kLn2;
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + idx * D;
      for (int64_t dd = 0; dd < D; ++dd) out[dd] = static_cast<T>(ot[dd * R + r] * inv);
      if (p.lse != nullptr) p.lse[idx] = lse;
    } else {
      const int64_t part = split * p.num_tokens * p.num_q_heads + idx;
      float* out = p.part_out + part * D;
      for (int64_t dd = 0; dd < D; ++dd) out[dd] = ot[dd * R + r] * inv;
      p.part_lse[part] = lse;
    }
  }
}

template <typename T>
void run_typed(const Params& p, const std::vector<Task>& tasks) {
  const int64_t per_head = static_cast<int64_t>(tasks.size()) * p.num_splits;
  const int64_t total = per_head * p.num_kv_heads;
  // Handed out one at a time, kv head major (consecutive items reuse one head's K/V from the
  // cache), each head's tasks longest first (the caller's order): the tiles of a causal prefill
  // differ in length up to q_len-fold, so equal static shares would leave threads idle.
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(total, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    Scratch w(p.head_dim);
    for (int64_t i = next++; i < total; i = next++) {
      const Task& task = tasks[(i % per_head) / p.num_splits];
      const int64_t hkv = i / per_head, split = i % p.num_splits;
      switch ((task.rows + 15) / 16) {
        case 1:
          attend_tile<T, 1>(p, task, hkv, split, w);
          break;
        case 2:
          attend_tile<T, 2>(p, task, hkv, split, w);
          break;
        case 3:
          attend_tile<T, 3>(p, task, hkv, split, w);
          break;
        default:
          attend_tile<T, 4>(p, task, hkv, split, w);
          break;
      }
    }
  });
}

}  // namespace

void run(const Params& p, const std::vector<Task>& tasks) {
  switch (p.dtype) {
    case at::kFloat:
      return run_typed<float>(p, tasks);
    case at::kHalf:
      return run_typed<c10::Half>(p, tasks);
    default:
      return run_typed<c10::BFloat16>(p, tasks);
  }
}

}  // namespace pipo::cpu_attention::PIPO_ISA
