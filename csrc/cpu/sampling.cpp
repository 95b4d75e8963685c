// sample_tokens on the CPU.
//
// sample_tokens works over tiles of kTile vocabulary rows: each thread takes a contiguous chunk
// of tiles, computes a tile's [B, kTile] float32 logits with one small GEMM (MKL, single-threaded
// inside the parallel region) into a thread-local buffer, applies the presence penalty and the
// temperature, and folds the tile into per-row running state: max and sum of exponentials (the
// log-normaliser), the greedy argmax / the Gumbel-max winner, and a sorted list of the row's best
// candidates. A second stage merges the chunks of every row and decides its token; the [B, V]
// logits never exist. Rows whose filter needs more than kMaxCandidates sorted entries (top_k >
// 64, or top_k = 0 with a nucleus wider than the 64 best tokens) recompute their row of logits
// and sort it: exact, and slower.
#include "../sampling.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "pipo/rng.h"
#include "tile_logits.h"

namespace pipo {
namespace {

using cpu::tile_logits;

constexpr int64_t kTile = 512;
constexpr float kInf = std::numeric_limits<float>::infinity();

struct Cand {
  float z;
  int32_t id;
};

// The order of every sorted list: larger value first, then lower id.
inline bool better(const Cand& a, const Cand& b) {
  return a.z > b.z || (a.z == b.z && a.id < b.id);
}

// Inserts c into list (sorted by `better`, n entries, capacity k) when it is among the k best.
inline void insert_candidate(Cand* list, int& n, int k, Cand c) {
  if (n == k) {
    if (!better(c, list[k - 1])) return;
    --n;
  }
  int i = n;
  while (i > 0 && better(c, list[i - 1])) {
    list[i] = list[i - 1];
    --i;
  }
  list[i] = c;
  ++n;
}

struct RowPlan {
  float temperature;  // divisor of the logits: 1 for greedy rows
  float penalty;
  float top_p;
  bool greedy;
  bool need_lse;      // log-normaliser over the whole vocabulary
  bool need_winner;   // Gumbel-max over the whole vocabulary
  bool small_k;       // 0 < top_k <= kMaxCandidates (and < V): the fused top-k path
  int k_track;        // candidates kept per chunk
  int64_t k_allowed;  // size of the top-k set (V when top_k is 0 or >= V)
  RngKeys keys;
};

struct RowState {
  float m = -kInf;                                        // running max of z
  float s = 0.0f;                                         // sum of exp(z - m)
  Cand best{-kInf, std::numeric_limits<int32_t>::max()};  // argmax z, or argmax z + noise
  float best_z = -kInf;                                   // z of `best`
  int n = 0;                                              // candidates in the list
};

// Picks the token from a sorted prefix of the row's distribution. `list` holds the len best
// entries of the allowed set of k_allowed entries whose log-normaliser is lse_allowed. Returns
// false when the nucleus does not end within the list (the caller then sorts the whole row).
bool finish_sorted(const Cand* list, int64_t len, int64_t k_allowed, double lse_allowed,
                   float top_p, RngKeys keys, int64_t& token, float& logprob) {
  int64_t n_nuc = std::min(len, k_allowed);
  if (top_p < 1.0f) {
    double mass = 0.0;
    int64_t i = 0;
    for (; i < n_nuc && mass < top_p; ++i) mass += std::exp(list[i].z - lse_allowed);
    if (mass < top_p && len < k_allowed) return false;
    n_nuc = i;
  } else if (len < k_allowed) {
    return false;
  }
  int64_t pick = 0;
  float best = -kInf;
  double m = list[0].z, s = 0.0;
  for (int64_t i = 0; i < n_nuc; ++i) {
    const float score = list[i].z + gumbel_noise(keys, static_cast<uint32_t>(list[i].id));
    if (score > best) {
      best = score;
      pick = i;
    }
    s += std::exp(list[i].z - m);
  }
  token = list[pick].id;
  logprob = static_cast<float>(list[pick].z - (m + std::log(s)));
  return true;
}

double log_sum_exp(const Cand* list, int64_t n) {
  double m = list[0].z, s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(list[i].z - m);
  return m + std::log(s);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_tokens_cpu(
    const at::Tensor& hidden, const at::Tensor& lm_head, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& presence_penalty,
    const std::optional<at::Tensor>& seen, const at::Tensor& seeds, const at::Tensor& offsets,
    int64_t num_candidates) {
  check_sample_args(hidden, lm_head, temperature, top_k, top_p, presence_penalty, seen, seeds,
                    offsets, num_candidates);
  TORCH_CHECK(hidden.device().is_cpu(), "hidden: expected a CPU tensor, got ", hidden.device());
  check_sample_values(temperature, top_k, top_p);
  const int64_t batch = hidden.size(0), vocab = lm_head.size(0);
  const auto long_opts = hidden.options().dtype(at::kLong);
  const auto float_opts = hidden.options().dtype(at::kFloat);
  at::Tensor tokens = at::empty({batch}, long_opts);
  at::Tensor token_logprob = at::empty({batch}, float_opts);
  at::Tensor cand_ids = at::empty({batch, num_candidates}, long_opts);
  at::Tensor cand_logprobs = at::empty({batch, num_candidates}, float_opts);
  if (batch == 0) return {tokens, token_logprob, cand_ids, cand_logprobs};

  const int kc = static_cast<int>(num_candidates);
  std::vector<RowPlan> plans(batch);
  int k_max = 0;
  for (int64_t b = 0; b < batch; ++b) {
    RowPlan& p = plans[b];
    const float t = temperature.data_ptr<float>()[b];
    const int64_t k = top_k.data_ptr<int32_t>()[b];
    p.greedy = t <= 0.0f;
    p.temperature = p.greedy ? 1.0f : t;
    p.penalty = presence_penalty.data_ptr<float>()[b];
    p.top_p = top_p.data_ptr<float>()[b];
    p.keys = rng_keys(seeds.data_ptr<int64_t>()[b], offsets.data_ptr<int64_t>()[b]);
    const bool limit_k = k > 0 && k < vocab;  // top_k >= V is no limit
    p.k_allowed = limit_k ? k : vocab;
    p.small_k = !p.greedy && limit_k && k <= kMaxCandidates;
    const bool nucleus_only = !p.greedy && !limit_k && p.top_p < 1.0f;
    int track = kc;
    if (p.small_k) track = std::max(track, static_cast<int>(k));
    if (nucleus_only) track = static_cast<int>(std::min<int64_t>(kMaxCandidates, vocab));
    p.k_track = track;
    p.need_lse = p.greedy || !limit_k || kc > 0;
    p.need_winner = !p.greedy && !limit_k && p.top_p >= 1.0f;
    k_max = std::max(k_max, track);
  }

  const at::Tensor x = hidden.to(at::kFloat).contiguous();
  const int32_t* seen_ptr = seen.has_value() ? seen->data_ptr<int32_t>() : nullptr;
  const int64_t words = seen_words(vocab);
  const int64_t n_tiles = (vocab + kTile - 1) / kTile;
  const int64_t n_chunks = std::min<int64_t>(n_tiles, std::max(1, at::get_num_threads()));
  std::vector<RowState> states(static_cast<size_t>(n_chunks * batch));
  std::vector<Cand> cands(static_cast<size_t>(n_chunks * batch * std::max(k_max, 1)));

  at::parallel_for(0, n_chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<float> logits(static_cast<size_t>(batch * kTile)), z(kTile), wbuf;
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t t_begin = c * n_tiles / n_chunks, t_end = (c + 1) * n_tiles / n_chunks;
      for (int64_t tile = t_begin; tile < t_end; ++tile) {
        const int64_t v0 = tile * kTile, n = std::min(kTile, vocab - v0);
        tile_logits(x, lm_head.narrow(0, v0, n), logits.data(), wbuf);
        for (int64_t b = 0; b < batch; ++b) {
          const RowPlan& p = plans[b];
          RowState& st = states[c * batch + b];
          const float* l = logits.data() + b * n;
          const int32_t* bits = seen_ptr ? seen_ptr + b * words : nullptr;
          float tile_max = -kInf;
          for (int64_t j = 0; j < n; ++j) {
            const int64_t v = v0 + j;
            float val = l[j];
            if (bits && ((static_cast<uint32_t>(bits[v >> 5]) >> (v & 31)) & 1u)) val -= p.penalty;
            z[j] = val / p.temperature;
            tile_max = std::max(tile_max, z[j]);
          }
          if (p.need_lse && tile_max > -kInf) {
            const float m = std::max(st.m, tile_max);
            float s = st.s * std::exp(st.m - m);
            for (int64_t j = 0; j < n; ++j) s += std::exp(z[j] - m);
            st.m = m;
            st.s = s;
          }
          if (p.greedy) {
            for (int64_t j = 0; j < n; ++j) {
              if (z[j] > st.best.z) {
                st.best = {z[j], static_cast<int32_t>(v0 + j)};
                st.best_z = z[j];
              }
            }
          } else if (p.need_winner) {
            for (int64_t j = 0; j < n; ++j) {
              const float score = z[j] + gumbel_noise(p.keys, static_cast<uint32_t>(v0 + j));
              if (score > st.best.z) {
                st.best = {score, static_cast<int32_t>(v0 + j)};
                st.best_z = z[j];
              }
            }
          }
          if (p.k_track > 0) {
            Cand* list = cands.data() + (c * batch + b) * k_max;
            for (int64_t j = 0; j < n; ++j) {
              if (st.n < p.k_track || z[j] > list[st.n - 1].z) {
                insert_candidate(list, st.n, p.k_track, {z[j], static_cast<int32_t>(v0 + j)});
              }
            }
          }
        }
      }
    }
  });

  // Second stage: merge the chunks of each row and decide its token.
  std::vector<int64_t> needs_full;
  int64_t* tok = tokens.data_ptr<int64_t>();
  float* tok_lp = token_logprob.data_ptr<float>();
  int64_t* cid = cand_ids.data_ptr<int64_t>();
  float* clp = cand_logprobs.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    const RowPlan& p = plans[b];
    double m = -kInf;
    Cand best{-kInf, std::numeric_limits<int32_t>::max()};
    float best_z = -kInf;
    std::vector<Cand> merged;
    for (int64_t c = 0; c < n_chunks; ++c) {
      const RowState& st = states[c * batch + b];
      m = std::max<double>(m, st.m);
      if (better(st.best, best)) {
        best = st.best;
        best_z = st.best_z;
      }
      const Cand* list = cands.data() + (c * batch + b) * k_max;
      merged.insert(merged.end(), list, list + st.n);
    }
    double s = 0.0;
    for (int64_t c = 0; c < n_chunks; ++c) {
      const RowState& st = states[c * batch + b];
      if (st.s > 0.0f) s += st.s * std::exp(st.m - m);
    }
    const double lse = m + std::log(s);
    const auto len = std::min<int64_t>(p.k_track, static_cast<int64_t>(merged.size()));
    std::partial_sort(merged.begin(), merged.begin() + len, merged.end(), better);
    for (int i = 0; i < kc; ++i) {
      cid[b * kc + i] = merged[i].id;
      clp[b * kc + i] = static_cast<float>(merged[i].z - lse);
    }
    if (p.greedy || p.need_winner) {
      tok[b] = best.id;
      tok_lp[b] = static_cast<float>(best_z - lse);
    } else if (p.small_k) {
      const double lse_k = log_sum_exp(merged.data(), p.k_allowed);
      finish_sorted(merged.data(), p.k_allowed, p.k_allowed, lse_k, p.top_p, p.keys, tok[b],
                    tok_lp[b]);
    } else if (p.k_allowed < vocab ||
               !finish_sorted(merged.data(), len, vocab, lse, p.top_p, p.keys, tok[b], tok_lp[b])) {
      needs_full.push_back(b);  // top_k > kMaxCandidates, or a nucleus beyond the candidates
    }
  }

  // Exact slow path: the whole row of logits, sorted.
  for (const int64_t b : needs_full) {
    const RowPlan& p = plans[b];
    std::vector<Cand> row(static_cast<size_t>(vocab));
    const at::Tensor xb = x.narrow(0, b, 1);
    const int32_t* bits = seen_ptr ? seen_ptr + b * words : nullptr;
    at::parallel_for(0, n_tiles, 1, [&](int64_t t_begin, int64_t t_end) {
      std::vector<float> logits(kTile), wbuf;
      for (int64_t tile = t_begin; tile < t_end; ++tile) {
        const int64_t v0 = tile * kTile, n = std::min(kTile, vocab - v0);
        tile_logits(xb, lm_head.narrow(0, v0, n), logits.data(), wbuf);
        for (int64_t j = 0; j < n; ++j) {
          const int64_t v = v0 + j;
          float val = logits[j];
          if (bits && ((static_cast<uint32_t>(bits[v >> 5]) >> (v & 31)) & 1u)) val -= p.penalty;
          row[v] = {val / p.temperature, static_cast<int32_t>(v)};
        }
      }
    });
    std::partial_sort(row.begin(), row.begin() + p.k_allowed, row.end(), better);
    const double lse_allowed = log_sum_exp(row.data(), p.k_allowed);
    finish_sorted(row.data(), p.k_allowed, p.k_allowed, lse_allowed, p.top_p, p.keys, tok[b],
                  tok_lp[b]);
  }
  return {tokens, token_logprob, cand_ids, cand_logprobs};
}

}  // namespace pipo
