// Tiled GEMM body of the fused latent projections, included once per instruction set by
// latent.cpp, inside a namespace that defines `Vec` (the vector type, its width and its loads) and
// after `#pragma GCC target` where the set needs one. Nothing here calls torch: every call must
// be inlined or compiled for the same instruction set.
//
// out[n, o] = act(sum_half scale[n, half] * dot(A_half[n] * gamma_half, W[o, half*H : half*H+H])
//                 + bias[o])
// where A_half[n] is the row src[2n + half] (a gathered embedding row or a hidden row). A row is
// read straight from its table, converted to float one vector at a time: the gathered rows and
// their concatenation never exist in memory.

// One register tile: acc[r][j] += scale[r] * dot(a[r][0:len] * gamma[0:len], w[j][0:len]).
template <typename T, bool kNorm, int R>
inline __attribute__((always_inline)) void tile_dot(const T* const* a, const T* const* w,
                                                    const float* gamma, const float* scale,
                                                    int64_t len, float* acc, int64_t acc_stride) {
  typename Vec::V sum[R][kTileOut];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kTileOut; ++j) sum[r][j] = Vec::zero();
  int64_t k = 0;
  // VecT: Vec as a name that depends on T, so the pair members are only looked up when used.
  using VecT = std::conditional_t<sizeof(T) != 0, Vec, void>;
  if constexpr (Vec::kPairDot && std::is_same_v<T, Bf16>) {
    // Pairs of bfloat16 products straight into float32 sums: no conversion of the weight, half
    // the instructions. Norm-weighted rows are rounded to bfloat16 first, as an eager RMSNorm's
    // output would be.
    constexpr int kStep = 2 * Vec::kWidth;
    for (; k + kStep <= len; k += kStep) {
      typename VecT::P wv[kTileOut];
      for (int j = 0; j < kTileOut; ++j) wv[j] = VecT::load_pairs(w[j] + k);
      typename VecT::V g0, g1;
      if constexpr (kNorm) {
        g0 = Vec::load(gamma + k);
        g1 = Vec::load(gamma + k + Vec::kWidth);
      }
      for (int r = 0; r < R; ++r) {
        typename VecT::P av;
        if constexpr (kNorm)
          av = VecT::to_pairs(Vec::mul(Vec::load(a[r] + k), g0),
                              Vec::mul(Vec::load(a[r] + k + Vec::kWidth), g1));
        else
          av = VecT::load_pairs(a[r] + k);
        for (int j = 0; j < kTileOut; ++j) sum[r][j] = VecT::pair_dot(av, wv[j], sum[r][j]);
      }
    }
  }
  for (; k + Vec::kWidth <= len; k += Vec::kWidth) {
    typename Vec::V wv[kTileOut];
    for (int j = 0; j < kTileOut; ++j) wv[j] = Vec::load(w[j] + k);
    if constexpr (kNorm) {
      const typename Vec::V g = Vec::load(gamma + k);
      for (int j = 0; j < kTileOut; ++j) wv[j] = Vec::mul(wv[j], g);
    }
    for (int r = 0; r < R; ++r) {
      const typename Vec::V av = Vec::load(a[r] + k);
      for (int j = 0; j < kTileOut; ++j) sum[r][j] = Vec::fma(av, wv[j], sum[r][j]);
    }
  }
  float tail[R][kTileOut] = {};
  for (; k < len; ++k) {
    for (int j = 0; j < kTileOut; ++j) {
      float wk = to_float(w[j][k]);
      if constexpr (kNorm) wk *= gamma[k];
      for (int r = 0; r < R; ++r) tail[r][j] += to_float(a[r][k]) * wk;
    }
  }
  for (int r = 0; r < R; ++r) {
    const float s = kNorm ? scale[r] : 1.0f;
    for (int j = 0; j < kTileOut; ++j)
      acc[r * acc_stride + j] += s * (Vec::reduce(sum[r][j]) + tail[r][j]);
  }
}

// Every row tile of one row block against one chunk of one half.
template <typename T, bool kNorm, int R>
inline __attribute__((always_inline)) void block_chunk(const Problem& p, int64_t row0, int64_t rows,
                                                       int64_t out0, int64_t outs, int half,
                                                       int64_t k0, int64_t len, float* acc) {
  const T* weight = static_cast<const T*>(p.weight);
  const int64_t h = p.h;
  for (int64_t r = 0; r + R <= rows; r += R) {
    const T* a[R];
    float scale[R];
    for (int i = 0; i < R; ++i) {
      const int64_t n = row0 + r + i;
      a[i] = static_cast<const T*>(p.src[2 * n + half]) + k0;
      scale[i] = kNorm ? p.scale[2 * n + half] : 1.0f;
    }
    for (int64_t j = 0; j < outs; j += kTileOut) {
      // A partial output tile repeats its last weight row; those sums land in padding columns.
      const T* w[kTileOut];
      for (int i = 0; i < kTileOut; ++i) {
        const int64_t o = out0 + std::min<int64_t>(j + i, outs - 1);
        w[i] = weight + o * 2 * h + half * h + k0;
      }
      tile_dot<T, kNorm, R>(a, w, kNorm ? p.gamma + half * h + k0 : nullptr, scale, len,
                            acc + r * kAccStride + j, kAccStride);
    }
  }
}

// Tasks [task_begin, task_end) of the flat list (output block major, row block minor), so one
// thread's consecutive tasks reuse the weight block from its cache.
template <typename T, bool kNorm>
void run_blocks(const Problem& p, int64_t task_begin, int64_t task_end) {
  alignas(64) float acc[kBlockRows * kAccStride];
  const int64_t row_blocks = ceil_div(p.n, kBlockRows);
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t out0 = (task / row_blocks) * kBlockOut;
    const int64_t row0 = (task % row_blocks) * kBlockRows;
    const int64_t outs = std::min(kBlockOut, p.o - out0);
    const int64_t rows = std::min(kBlockRows, p.n - row0);
    std::fill(acc, acc + rows * kAccStride, 0.0f);
    for (int half = 0; half < 2; ++half) {
      for (int64_t k0 = 0; k0 < p.h; k0 += kChunk) {
        const int64_t len = std::min(kChunk, p.h - k0);
        const int64_t full = rows / kTileRows * kTileRows;
        block_chunk<T, kNorm, kTileRows>(p, row0, full, out0, outs, half, k0, len, acc);
        const int64_t rest = rows - full;
        float* acc_rest = acc + full * kAccStride;
        if (rest == 1)
          block_chunk<T, kNorm, 1>(p, row0 + full, 1, out0, outs, half, k0, len, acc_rest);
        if (rest == 2)
          block_chunk<T, kNorm, 2>(p, row0 + full, 2, out0, outs, half, k0, len, acc_rest);
        if (rest == 3)
          block_chunk<T, kNorm, 3>(p, row0 + full, 3, out0, outs, half, k0, len, acc_rest);
      }
    }
    store_block<T>(p, acc, row0, rows, out0, outs);
  }
}
