// Tiled GEMM body of the fused latent projections, included once per instruction set by
// latent.cpp, inside a namespace that defines `Vec` (the vector type, its width and its loads) and
// after `#pragma GCC target` where the set needs one. Nothing here calls torch: every call must
// be inlined or compiled for the same instruction set.
//
// out[n, o] = act(sum_part dot(A_part[n], W[o, part*H : part*H+H]) + bias[o])
// where A_part[n] is the row src[parts*n + part] (a gathered embedding row, one per token of a
// fold group, or unfold_input's embedding and hidden rows), for unfold_input times its RMSNorm
// scale and norm weight. fold_pairs reads A rows straight from the
// table; unfold_input stages the normalised rows of one block and one column chunk at a time
// (at most kBlockRows x kChunk values, cache-resident), so neither the gathered rows nor their
// concatenation ever exists in memory.

// Pairs of bfloat16 products (Vec::kPairDot) for bfloat16 inputs, else float FMAs.
template <typename T>
constexpr bool kUsePairs = Vec::kPairDot && std::is_same_v<T, Bf16>;
// The element type of staged (normalised) A rows: bfloat16 for the pair path, else float.
template <typename T>
using StagedOf = std::conditional_t<kUsePairs<T>, Bf16, float>;

// One register tile: acc[r][j] += dot(a[r][0:len], w[j][0:len]).
template <typename TA, typename TW, int R>
inline __attribute__((always_inline)) void tile_dot(const TA* const* a, const TW* const* w,
                                                    int64_t len, float* acc, int64_t acc_stride) {
  typename Vec::V sum[R][kTileOut];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kTileOut; ++j) sum[r][j] = Vec::zero();
  int64_t k = 0;
  // VecT: Vec as a name that depends on TA, so the pair members are only looked up when used.
  using VecT = std::conditional_t<sizeof(TA) != 0, Vec, void>;
  if constexpr (kUsePairs<TA> && std::is_same_v<TW, Bf16>) {
    // Pairs of bfloat16 products straight into float32 sums: no conversions, half the
    // instructions.
    constexpr int kStep = 2 * Vec::kWidth;
    for (; k + kStep <= len; k += kStep) {
      typename VecT::P wv[kTileOut];
      for (int j = 0; j < kTileOut; ++j) wv[j] = VecT::load_pairs(w[j] + k);
      for (int r = 0; r < R; ++r) {
        const typename VecT::P av = VecT::load_pairs(a[r] + k);
        for (int j = 0; j < kTileOut; ++j) sum[r][j] = VecT::pair_dot(av, wv[j], sum[r][j]);
      }
    }
  }
  for (; k + Vec::kWidth <= len; k += Vec::kWidth) {
    typename Vec::V wv[kTileOut];
    for (int j = 0; j < kTileOut; ++j) wv[j] = Vec::load(w[j] + k);
    for (int r = 0; r < R; ++r) {
      const typename Vec::V av = Vec::load(a[r] + k);
      for (int j = 0; j < kTileOut; ++j) sum[r][j] = Vec::fma(av, wv[j], sum[r][j]);
    }
  }
  float tail[R][kTileOut] = {};
  for (; k < len; ++k) {
    for (int j = 0; j < kTileOut; ++j) {
      const float wk = to_float(w[j][k]);
      for (int r = 0; r < R; ++r) tail[r][j] += to_float(a[r][k]) * wk;
    }
  }
  static_assert(kTileOut == 4, "Vec::reduce4 sums four accumulators at once");
  for (int r = 0; r < R; ++r) {
    float sums[kTileOut];
    Vec::reduce4(sum[r], sums);
    for (int j = 0; j < kTileOut; ++j) acc[r * acc_stride + j] += sums[j] + tail[r][j];
  }
}

// Every R-row tile of `rows` A rows (pointers already at the chunk's first column) against the
// block's outputs, over one chunk of one part.
template <typename TA, typename TW, int R>
inline __attribute__((always_inline)) void block_chunk(const Problem& p, const TA* const* a_rows,
                                                       int64_t rows, int64_t out0, int64_t outs,
                                                       int part, int64_t k0, int64_t len,
                                                       float* acc) {
  const TW* weight = static_cast<const TW*>(p.weight);
  for (int64_t r = 0; r + R <= rows; r += R) {
    for (int64_t j = 0; j < outs; j += kTileOut) {
      // A partial output tile repeats its last weight row; those sums land in padding columns.
      const TW* w[kTileOut];
      for (int i = 0; i < kTileOut; ++i) {
        const int64_t o = out0 + std::min<int64_t>(j + i, outs - 1);
        w[i] = weight + o * p.parts * p.h + part * p.h + k0;
      }
      tile_dot<TA, TW, R>(a_rows + r, w, len, acc + r * kAccStride + j, kAccStride);
    }
  }
}

template <typename TA, typename TW>
void block_chunk_all(const Problem& p, const TA* const* a_rows, int64_t rows, int64_t out0,
                     int64_t outs, int part, int64_t k0, int64_t len, float* acc) {
  const int64_t full = rows / kTileRows * kTileRows;
  block_chunk<TA, TW, kTileRows>(p, a_rows, full, out0, outs, part, k0, len, acc);
  const TA* const* rest_rows = a_rows + full;
  float* rest = acc + full * kAccStride;
  switch (rows - full) {
    case 1:
      return block_chunk<TA, TW, 1>(p, rest_rows, 1, out0, outs, part, k0, len, rest);
    case 2:
      return block_chunk<TA, TW, 2>(p, rest_rows, 2, out0, outs, part, k0, len, rest);
    case 3:
      return block_chunk<TA, TW, 3>(p, rest_rows, 3, out0, outs, part, k0, len, rest);
    default:
      return;
  }
}

// Stages rows [row0, row0 + rows) of one part, columns [k0, k0 + len), times the norm weight and
// the row's RMSNorm scale, into `dst` (rows kChunk apart).
template <typename T, typename S>
void stage_rows(const Problem& p, int64_t row0, int64_t rows, int part, int64_t k0, int64_t len,
                S* dst) {
  using VecT = std::conditional_t<sizeof(S) != 0, Vec, void>;
  const float* gamma = p.gamma + part * p.h + k0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = row0 + r;
    const T* src = static_cast<const T*>(p.src[p.parts * n + part]) + k0;
    const float s = p.scale[p.parts * n + part];
    const typename Vec::V sv = Vec::set1(s);
    S* out = dst + r * kChunk;
    int64_t k = 0;
    if constexpr (std::is_same_v<S, float>) {
      for (; k + Vec::kWidth <= len; k += Vec::kWidth)
        Vec::store(out + k, Vec::mul(Vec::mul(Vec::load(src + k), Vec::load(gamma + k)), sv));
    } else {
      // Rounded to bfloat16 (nearest even), as an eager RMSNorm's output would be.
      constexpr int kStep = 2 * Vec::kWidth;
      for (; k + kStep <= len; k += kStep) {
        const typename Vec::V lo = Vec::mul(Vec::mul(Vec::load(src + k), Vec::load(gamma + k)), sv);
        const typename Vec::V hi = Vec::mul(
            Vec::mul(Vec::load(src + k + Vec::kWidth), Vec::load(gamma + k + Vec::kWidth)), sv);
        VecT::store_pairs(out + k, VecT::to_pairs(lo, hi));
      }
    }
    for (; k < len; ++k) from_float(to_float(src[k]) * gamma[k] * s, out + k);
  }
}

// Tasks [task_begin, task_end) of the flat list (output block major, row block minor), so one
// thread's consecutive tasks reuse the weight block from its cache.
template <typename T, bool kNorm>
void run_blocks(const Problem& p, int64_t task_begin, int64_t task_end) {
  using S = StagedOf<T>;
  alignas(64) float acc[kBlockRows * kAccStride];
  // Uninitialised, and only as large as the rows of one block: small calls stay off mmap.
  const std::unique_ptr<S[]> staged(kNorm ? new S[std::min(p.n, kBlockRows) * kChunk] : nullptr);
  const S* staged_rows[kBlockRows];
  const T* table_rows[kBlockRows];
  const int64_t row_blocks = ceil_div(p.n, kBlockRows);
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t out0 = (task / row_blocks) * kBlockOut;
    const int64_t row0 = (task % row_blocks) * kBlockRows;
    const int64_t outs = std::min(kBlockOut, p.o - out0);
    const int64_t rows = std::min(kBlockRows, p.n - row0);
    std::fill(acc, acc + rows * kAccStride, 0.0f);
    for (int part = 0; part < p.parts; ++part) {
      for (int64_t k0 = 0; k0 < p.h; k0 += kChunk) {
        const int64_t len = std::min(kChunk, p.h - k0);
        if constexpr (kNorm) {
          stage_rows<T>(p, row0, rows, part, k0, len, staged.get());
          for (int64_t r = 0; r < rows; ++r) staged_rows[r] = staged.get() + r * kChunk;
          block_chunk_all<S, T>(p, staged_rows, rows, out0, outs, part, k0, len, acc);
        } else {
          for (int64_t r = 0; r < rows; ++r)
            table_rows[r] = static_cast<const T*>(p.src[p.parts * (row0 + r) + part]) + k0;
          block_chunk_all<T, T>(p, table_rows, rows, out0, outs, part, k0, len, acc);
        }
      }
    }
    store_block<T>(p, acc, row0, rows, out0, outs);
  }
}
