// pair_out and group_out on the CPU, one implementation: RMSNorm of [hidden; mtp_hidden[:, j]]
// for every MTP step j, fc1 in tiles of output rows (SiLU, reduced against fc2 as each tile is
// made), sigmoid and the prefix gate. pair_out is the case of one step.
#include "../pair_out.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tile_logits.h"

namespace pipo {
namespace {

using cpu::tile_logits;

// Where a batch row's tokens are: token 1 at tok1[b * stride], token j + 2 at
// tokn[b * stride + j] (pair_out's two [B] tensors, or group_out's [B, 1 + J] rows).
struct TokenRows {
  const int64_t* tok1;
  const int64_t* tokn;
  int64_t stride;
};

// hidden [B, H]; mtp [B, J, H]; writes confidence [B, J] and groups [B, 1 + J].
void gate_groups(const at::Tensor& hidden, const at::Tensor& mtp, const TokenRows& tokens,
                 const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
                 const at::Tensor& fc2_weight, double threshold, int64_t pad_id, double eps,
                 int64_t* groups, float* conf) {
  const int64_t batch = hidden.size(0), steps = mtp.size(1), h = hidden.size(1);
  const int64_t rows = batch * steps;  // one confidence row per (b, j)
  if (rows > 0) {
    // RMSNorm of [hidden[b]; mtp[b, j]] over 2H, times norm_weight, in float32.
    at::Tensor xn = at::cat({hidden.unsqueeze(1).expand({batch, steps, h}), mtp}, 2)
                        .reshape({rows, 2 * h})
                        .to(at::kFloat)
                        .contiguous();
    const at::Tensor nw = norm_weight.to(at::kFloat).contiguous();
    float* xp = xn.data_ptr<float>();
    const float* nwp = nw.data_ptr<float>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float* row = xp + r * 2 * h;
        float ss = 0.0f;
        for (int64_t i = 0; i < 2 * h; ++i) ss += row[i] * row[i];
        const float s = 1.0f / std::sqrt(ss / static_cast<float>(2 * h) + static_cast<float>(eps));
        for (int64_t i = 0; i < 2 * h; ++i) row[i] = row[i] * s * nwp[i];
      }
    });

    // fc1 in tiles of output rows; each tile's SiLU outputs are reduced against fc2 at once, so
    // the [rows, H] activation is never stored. Per-tile partial sums keep the reduction
    // deterministic.
    const at::Tensor w2 = fc2_weight.to(at::kFloat).contiguous();
    const float* w2p = w2.data_ptr<float>();
    constexpr int64_t kRows = 128;
    const int64_t n_tiles = (h + kRows - 1) / kRows;
    std::vector<float> partial(static_cast<size_t>(n_tiles * rows), 0.0f);
    at::parallel_for(0, n_tiles, 1, [&](int64_t t_begin, int64_t t_end) {
      std::vector<float> act(static_cast<size_t>(rows * kRows)), wbuf;
      for (int64_t tile = t_begin; tile < t_end; ++tile) {
        const int64_t i0 = tile * kRows, n = std::min(kRows, h - i0);
        tile_logits(xn, fc1_weight.narrow(0, i0, n), act.data(), wbuf);
        for (int64_t r = 0; r < rows; ++r) {
          float acc = 0.0f;
          for (int64_t i = 0; i < n; ++i) {
            const float a = act[r * n + i];
            acc += a / (1.0f + std::exp(-a)) * w2p[i0 + i];
          }
          partial[tile * rows + r] = acc;
        }
      }
    });
    for (int64_t r = 0; r < rows; ++r) {
      float acc = 0.0f;
      for (int64_t tile = 0; tile < n_tiles; ++tile) acc += partial[tile * rows + r];
      conf[r] = 1.0f / (1.0f + std::exp(-acc));
    }
  }
  // The gate: the longest prefix of passing steps is committed, the rest is PAD.
  for (int64_t b = 0; b < batch; ++b) {
    int64_t* out = groups + b * (1 + steps);
    out[0] = tokens.tok1[b * tokens.stride];
    bool alive = true;
    for (int64_t j = 0; j < steps; ++j) {
      const float c = conf[b * steps + j];
      alive = alive && (threshold < 0.0 || (threshold < 1.0 && c >= threshold));
      out[1 + j] = alive ? tokens.tokn[b * tokens.stride + j] : pad_id;
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pair_out_cpu(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& token1,
    const at::Tensor& token2, const at::Tensor& norm_weight, const at::Tensor& fc1_weight,
    const at::Tensor& fc2_weight, double threshold, int64_t pad_id, double eps) {
  check_pair_out_args(hidden, mtp_hidden, token1, token2, norm_weight, fc1_weight, fc2_weight);
  TORCH_CHECK(hidden.device().is_cpu(), "hidden: expected a CPU tensor, got ", hidden.device());
  const int64_t batch = hidden.size(0);
  at::Tensor pairs = at::empty({batch, 2}, token1.options());
  at::Tensor confidence = at::empty({batch}, hidden.options().dtype(at::kFloat));
  if (batch == 0) return {pairs, confidence};
  // [B, H] is one step of [B, J, H]; pairs [B, 2] and confidence [B] are groups and confidence
  // of J = 1.
  const TokenRows tokens{token1.data_ptr<int64_t>(), token2.data_ptr<int64_t>(), 1};
  gate_groups(hidden, mtp_hidden.unsqueeze(1), tokens, norm_weight, fc1_weight, fc2_weight,
              threshold, pad_id, eps, pairs.data_ptr<int64_t>(), confidence.data_ptr<float>());
  return {pairs, confidence};
}

std::tuple<at::Tensor, at::Tensor> group_out_cpu(
    const at::Tensor& hidden, const at::Tensor& mtp_hidden, const at::Tensor& tokens,
    const at::Tensor& norm_weight, const at::Tensor& fc1_weight, const at::Tensor& fc2_weight,
    double threshold, int64_t pad_id, double eps) {
  check_group_out_args(hidden, mtp_hidden, tokens, norm_weight, fc1_weight, fc2_weight);
  TORCH_CHECK(hidden.device().is_cpu(), "hidden: expected a CPU tensor, got ", hidden.device());
  const int64_t batch = hidden.size(0), steps = mtp_hidden.size(1);
  at::Tensor groups = at::empty({batch, 1 + steps}, tokens.options());
  at::Tensor confidence = at::empty({batch, steps}, hidden.options().dtype(at::kFloat));
  if (batch == 0) return {groups, confidence};
  const int64_t* tok = tokens.data_ptr<int64_t>();
  gate_groups(hidden, mtp_hidden, TokenRows{tok, tok + 1, 1 + steps}, norm_weight, fc1_weight,
              fc2_weight, threshold, pad_id, eps, groups.data_ptr<int64_t>(),
              confidence.data_ptr<float>());
  return {groups, confidence};
}

}  // namespace pipo
