// pair_out on the CPU: RMSNorm of [hidden; mtp_hidden], fc1 in tiles of output rows (SiLU,
// reduced against fc2 as each tile is made), sigmoid and the gate.
#include "../pair_out.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tile_logits.h"

namespace pipo {

using cpu::tile_logits;

std::tuple<at::Tensor, at::Tensor> pair_out_cpu(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& token1,
    const at::Tensor& token2, const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
    const at::Tensor& fc2_weight, double threshold, int64_t pad_id, double eps) {
  check_pair_out_args(hidden, mtp_hidden, token1, token2, norm_weight, fc1_weight, fc2_weight);
  TORCH_CHECK(hidden.device().is_cpu(), "hidden: expected a CPU tensor, got ", hidden.device());
  const int64_t batch = hidden.size(0), h = hidden.size(1);
  at::Tensor pairs = at::empty({batch, 2}, token1.options());
  at::Tensor confidence = at::empty({batch}, hidden.options().dtype(at::kFloat));
  if (batch == 0) return {pairs, confidence};

  // RMSNorm of [hidden; mtp_hidden] over 2H, times norm_weight, in float32.
  at::Tensor xn = at::cat({hidden, mtp_hidden}, 1).to(at::kFloat).contiguous();
  const at::Tensor nw = norm_weight.to(at::kFloat).contiguous();
  float* xp = xn.data_ptr<float>();
  const float* nwp = nw.data_ptr<float>();
  at::parallel_for(0, batch, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* row = xp + b * 2 * h;
      float ss = 0.0f;
      for (int64_t j = 0; j < 2 * h; ++j) ss += row[j] * row[j];
      const float r = 1.0f / std::sqrt(ss / static_cast<float>(2 * h) + static_cast<float>(eps));
      for (int64_t j = 0; j < 2 * h; ++j) row[j] = row[j] * r * nwp[j];
    }
  });

  // fc1 in tiles of output rows; each tile's SiLU outputs are reduced against fc2 at once, so the
  // [B, H] activation is never stored. Per-chunk partial sums keep the reduction deterministic.
  const at::Tensor w2 = fc2_weight.to(at::kFloat).contiguous();
  const float* w2p = w2.data_ptr<float>();
  constexpr int64_t kRows = 128;
  const int64_t n_tiles = (h + kRows - 1) / kRows;
  std::vector<float> partial(static_cast<size_t>(n_tiles * batch), 0.0f);
  at::parallel_for(0, n_tiles, 1, [&](int64_t t_begin, int64_t t_end) {
    std::vector<float> act(static_cast<size_t>(batch * kRows)), wbuf;
    for (int64_t tile = t_begin; tile < t_end; ++tile) {
      const int64_t j0 = tile * kRows, n = std::min(kRows, h - j0);
      tile_logits(xn, fc1_weight.narrow(0, j0, n), act.data(), wbuf);
      for (int64_t b = 0; b < batch; ++b) {
        float acc = 0.0f;
        for (int64_t j = 0; j < n; ++j) {
          const float a = act[b * n + j];
          acc += a / (1.0f + std::exp(-a)) * w2p[j0 + j];
        }
        partial[tile * batch + b] = acc;
      }
    }
  });
  const int64_t* t1 = token1.data_ptr<int64_t>();
  const int64_t* t2 = token2.data_ptr<int64_t>();
  int64_t* out = pairs.data_ptr<int64_t>();
  float* conf = confidence.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    float acc = 0.0f;
    for (int64_t tile = 0; tile < n_tiles; ++tile) acc += partial[tile * batch + b];
    conf[b] = 1.0f / (1.0f + std::exp(-acc));
    const bool commit = threshold < 0.0 || (threshold < 1.0 && conf[b] >= threshold);
    out[2 * b] = t1[b];
    out[2 * b + 1] = commit ? t2[b] : pad_id;
  }
  return {pairs, confidence};
}

}  // namespace pipo
