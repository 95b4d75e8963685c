// Draft-tree verification on the CPU: one task per sequence, each walking its tree in node order
// (parents come before children, so one forward pass settles every node).
#include "../verify.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "pipo/rng.h"

namespace pipo {
namespace {

using VerifyOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Sequences per parallel task: enough that a task does ~256k elementary steps, since a tree is
// tiny and waking threads for a few microseconds of work costs more than it saves.
int64_t sequences_per_task(int64_t batch, int64_t work) {
  constexpr int64_t kTaskWork = int64_t{1} << 18;
  const int64_t per_sequence = std::max<int64_t>(1, work / std::max<int64_t>(1, batch));
  return std::max<int64_t>(1, kTaskWork / per_sequence);
}

VerifyOutputs empty_outputs(const at::Tensor& like, int64_t batch, int64_t max_depth) {
  return {at::zeros({batch}, like.options().dtype(at::kInt)),
          at::full({batch, max_depth + 1}, -1, like.options().dtype(at::kInt)),
          at::full({batch}, -1, like.options().dtype(at::kLong))};
}

// Writes the path root -> `last` (depth `depth`) into row[0..depth].
void write_path(int32_t* row, const int32_t* par, int64_t last, int64_t depth) {
  int64_t cur = last;
  for (int64_t d = depth; d > 0; --d) {
    row[d] = static_cast<int32_t>(cur);
    cur = par[cur];
  }
  row[0] = static_cast<int32_t>(cur);
}

// The residual max(0, t - scale * q) of one vocabulary entry; the product is rounded before the
// subtraction (no fused multiply-add), as in every other backend.
inline float residual_at(const float* t, const float* q, float scale, int64_t v) {
  const float prod = scale * q[v];
  return std::max(0.0f, t[v] - prod);
}

// Mass of the residual: summed in double and rounded once, so it matches the other backends'
// (differently ordered) sums except in vanishingly rare rounding ties. Four independent partial
// sums let the adds overlap (and vectorise).
float residual_mass(const float* t, const float* q, float scale, int64_t vocab) {
  double sum[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t v = 0;
  for (; v + 4 <= vocab; v += 4) {
    for (int k = 0; k < 4; ++k) sum[k] += residual_at(t, q, scale, v + k);
  }
  for (; v < vocab; ++v) sum[0] += residual_at(t, q, scale, v);
  return static_cast<float>((sum[0] + sum[1]) + (sum[2] + sum[3]));
}

// Inverse-CDF sample: the first v whose running sum exceeds `target`; when rounding leaves the
// total at or below `target`, the last v with positive mass; -1 for an all-zero residual.
int64_t sample_residual(const float* t, const float* q, float scale, int64_t vocab, double target) {
  double cum = 0.0;
  int64_t last_positive = -1;
  for (int64_t v = 0; v < vocab; ++v) {
    const float p = residual_at(t, q, scale, v);
    cum += p;
    if (cum > target) return v;
    if (p > 0.0f) last_positive = v;
  }
  return last_positive;
}

}  // namespace

VerifyOutputs verify_tree_cpu(const at::Tensor& draft_tokens, const at::Tensor& parents,
                              const at::Tensor& q_indptr, const at::Tensor& target_tokens,
                              int64_t max_depth) {
  check_verify_tree_args(draft_tokens, parents, q_indptr, max_depth);
  check_token_tensor(target_tokens, draft_tokens, "target_tokens");
  TORCH_CHECK(draft_tokens.device().is_cpu(), "draft_tokens: expected a CPU tensor, got ",
              draft_tokens.device());
  check_tree_values(draft_tokens, parents, q_indptr, max_depth);

  const int64_t batch = q_indptr.size(0) - 1;
  auto [accept_len, accept_index, bonus_token] = empty_outputs(draft_tokens, batch, max_depth);
  const int32_t* ip = q_indptr.data_ptr<int32_t>();
  const int32_t* par = parents.data_ptr<int32_t>();
  const int64_t* draft = draft_tokens.data_ptr<int64_t>();
  const int64_t* target = target_tokens.data_ptr<int64_t>();
  int32_t* len_out = accept_len.data_ptr<int32_t>();
  int32_t* index_out = accept_index.data_ptr<int32_t>();
  int64_t* bonus_out = bonus_token.data_ptr<int64_t>();

  const int64_t grain = sequences_per_task(batch, draft_tokens.size(0));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> depth;  // -1: not accepted
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = ip[b], n = ip[b + 1] - ip[b];
      if (n == 0) continue;
      const int32_t* p = par + start;
      depth.assign(static_cast<size_t>(n), -1);
      depth[0] = 0;
      int64_t best = 0;
      for (int64_t i = 1; i < n; ++i) {
        if (depth[p[i]] < 0 || draft[start + i] != target[start + p[i]]) continue;
        depth[i] = depth[p[i]] + 1;
        if (depth[i] > depth[best]) best = i;
      }
      len_out[b] = depth[best];
      write_path(index_out + b * (max_depth + 1), p, best, depth[best]);
      bonus_out[b] = target[start + best];
    }
  });
  return {accept_len, accept_index, bonus_token};
}

VerifyOutputs verify_tree_stochastic_cpu(const at::Tensor& draft_tokens, const at::Tensor& parents,
                                         const at::Tensor& q_indptr, const at::Tensor& draft_probs,
                                         const at::Tensor& target_probs, const at::Tensor& seeds,
                                         const at::Tensor& offsets, int64_t max_depth) {
  check_verify_tree_args(draft_tokens, parents, q_indptr, max_depth);
  check_verify_stochastic_args(draft_tokens, q_indptr, draft_probs, target_probs, seeds, offsets);
  TORCH_CHECK(draft_tokens.device().is_cpu(), "draft_tokens: expected a CPU tensor, got ",
              draft_tokens.device());
  const int64_t vocab = draft_probs.size(1);
  check_tree_values(draft_tokens, parents, q_indptr, max_depth, vocab);

  const int64_t batch = q_indptr.size(0) - 1;
  auto [accept_len, accept_index, bonus_token] = empty_outputs(draft_tokens, batch, max_depth);
  const int32_t* ip = q_indptr.data_ptr<int32_t>();
  const int32_t* par = parents.data_ptr<int32_t>();
  const int64_t* draft = draft_tokens.data_ptr<int64_t>();
  const float* dprobs = draft_probs.data_ptr<float>();
  const float* tprobs = target_probs.data_ptr<float>();
  const int64_t* seed = seeds.data_ptr<int64_t>();
  const int64_t* offset = offsets.data_ptr<int64_t>();
  int32_t* len_out = accept_len.data_ptr<int32_t>();
  int32_t* index_out = accept_index.data_ptr<int32_t>();
  int64_t* bonus_out = bonus_token.data_ptr<int64_t>();

  // Each sequence makes a few passes over two [V] rows per node on its path.
  const int64_t grain = sequences_per_task(batch, 4 * batch * std::max<int64_t>(1, vocab));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = ip[b], n = ip[b + 1] - ip[b];
      if (n == 0) continue;
      const int32_t* p = par + start;
      const uint64_t stream = verify_stream(seed[b], offset[b]);
      int32_t* row = index_out + b * (max_depth + 1);
      int64_t step = 0, u = 0, depth = 0;
      float scale = 0.0f, mass = 0.0f;
      row[0] = 0;
      while (true) {
        const float* t = tprobs + (start + u) * vocab;
        const float* q = dprobs + (start + u) * vocab;
        scale = 0.0f;
        mass = residual_mass(t, q, scale, vocab);
        int64_t next = -1;
        // Children in index order; those deeper than max_depth could not be reported.
        for (int64_t c = u + 1; c < n && depth < max_depth; ++c) {
          const int64_t x = draft[start + c];
          if (p[c] != u || x < 0 || x >= vocab) continue;
          const float r = verify_uniform(stream, step++);
          if (r * q[x] * mass < residual_at(t, q, scale, x)) {
            next = c;
            break;
          }
          // Rejected: the residual becomes max(0, t - (scale + mass) * q) renormalised; an
          // all-zero residual (p == q, a token outside the draft's support) keeps the old one.
          const float new_scale = scale + mass;
          const float new_mass = residual_mass(t, q, new_scale, vocab);
          if (new_mass > 0.0f) {
            scale = new_scale;
            mass = new_mass;
          }
        }
        if (next < 0) break;
        u = next;
        row[++depth] = static_cast<int32_t>(u);
      }
      len_out[b] = static_cast<int32_t>(depth);
      const float* t = tprobs + (start + u) * vocab;
      const float* q = dprobs + (start + u) * vocab;
      const float target = verify_uniform(stream, step) * mass;
      bonus_out[b] = sample_residual(t, q, scale, vocab, static_cast<double>(target));
    }
  });
  return {accept_len, accept_index, bonus_token};
}

}  // namespace pipo
