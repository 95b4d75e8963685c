// paged_attention on the CPU: argument checks, task list, ISA dispatch and the merge of KV splits.
// The tile kernel itself is attention_kernel.h, compiled once per instruction set below.
#include "../attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "vec.h"

namespace pipo::cpu_attention {

constexpr int64_t kMaxRows = 64;  // query rows (query, head) per task: 4 vectors of 16
constexpr int64_t kBlockN = 32;   // KV positions per step of the online softmax
constexpr float kLn2 = 0.6931471805599453f;

struct Params {
  at::ScalarType dtype;
  const void* q;  // [num_tokens, num_q_heads, head_dim], rows q_stride_tok / q_stride_head apart
  int64_t q_stride_tok, q_stride_head;
  const void* k_cache;  // [num_pages, page_size, num_kv_heads, head_dim]
  const void* v_cache;
  const int32_t* block_table;  // [batch, max_pages]
  const int32_t* kv_lens;      // [batch]
  const int32_t* q_indptr;     // [batch + 1]
  const bool* tree_mask;       // [num_tokens, mask_stride] or null (causal)
  int64_t mask_stride, max_pages;
  int64_t num_tokens, num_q_heads, num_kv_heads, group, head_dim, page_size;
  float scale_log2;  // sm_scale * log2(e)
  int64_t num_splits;
  void* out;        // [num_tokens, num_q_heads, head_dim], q's dtype
  float* lse;       // [num_tokens, num_q_heads] or null
  float* part_out;  // [num_splits, num_tokens, num_q_heads, head_dim] when num_splits > 1
  float* part_lse;  // [num_splits, num_tokens, num_q_heads]
};

// Rows [row0, row0 + rows) of sequence seq, a row being query (row / group) with head
// (row % group) of the kv head's group.
struct Task {
  int64_t seq, row0, rows;
};

// Positions of one split: split s covers [s * chunk, (s + 1) * chunk), a multiple of kBlockN.
inline int64_t split_chunk(int64_t kv_len, int64_t splits) {
  const int64_t per = (kv_len + splits - 1) / splits;
  return std::max<int64_t>(kBlockN, (per + kBlockN - 1) / kBlockN * kBlockN);
}

}  // namespace pipo::cpu_attention

// One copy of the kernel per instruction set; the pragma reaches the templates defined inside.
// The 64-byte vector types never cross a non-inlined call, so GCC's ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
PIPO_PUSH_TARGET(PIPO_TARGET_AVX512_BF16)
#define PIPO_ISA avx512bf16
#define PIPO_ISA_AVX512
#define PIPO_ISA_F16C
#define PIPO_ISA_BF16_DOT
#include "attention_kernel.h"
#undef PIPO_ISA_BF16_DOT
#undef PIPO_ISA_F16C
#undef PIPO_ISA_AVX512
#undef PIPO_ISA
PIPO_POP_TARGET()

PIPO_PUSH_TARGET(PIPO_TARGET_AVX512)
#define PIPO_ISA avx512
#define PIPO_ISA_AVX512
#define PIPO_ISA_F16C
#include "attention_kernel.h"
#undef PIPO_ISA_F16C
#undef PIPO_ISA_AVX512
#undef PIPO_ISA
PIPO_POP_TARGET()

PIPO_PUSH_TARGET(PIPO_TARGET_AVX2)
#define PIPO_ISA avx2
#define PIPO_ISA_F16C
#include "attention_kernel.h"
#undef PIPO_ISA_F16C
#undef PIPO_ISA
PIPO_POP_TARGET()

#define PIPO_ISA generic
#include "attention_kernel.h"
#undef PIPO_ISA

namespace pipo {
namespace {

using cpu_attention::kMaxRows;
using cpu_attention::Params;
using cpu_attention::Task;

void run_kernel(const Params& p, const std::vector<Task>& tasks) {
  switch (cpu::cpu_isa()) {
    case cpu::Isa::kAvx512Bf16:
      return cpu_attention::avx512bf16::run(p, tasks);
    case cpu::Isa::kAvx512:
      return cpu_attention::avx512::run(p, tasks);
    case cpu::Isa::kAvx2:
      return cpu_attention::avx2::run(p, tasks);
    default:
      return cpu_attention::generic::run(p, tasks);
  }
}

// out[t, h] = sum_s w_s * part_out[s, t, h] with w_s = exp(part_lse[s] - lse), lse the
// log-sum-exp of the splits' lse; a row no split saw gets 0 and -inf.
template <typename T>
void merge_splits(const Params& p) {
  const int64_t rows = p.num_tokens * p.num_q_heads, D = p.head_dim;
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> acc(D);
    for (int64_t r = r0; r < r1; ++r) {
      float mx = -INFINITY;
      for (int64_t s = 0; s < p.num_splits; ++s) mx = std::max(mx, p.part_lse[s * rows + r]);
      std::fill(acc.begin(), acc.end(), 0.0f);
      float total = 0.0f;
      if (mx != -INFINITY) {
        for (int64_t s = 0; s < p.num_splits; ++s) {
          const float w = std::exp(p.part_lse[s * rows + r] - mx);
          const float* src = p.part_out + (s * rows + r) * D;
          for (int64_t d = 0; d < D; ++d) acc[d] += w * src[d];
          total += w;
        }
      }
      const float inv = total > 0.0f ? 1.0f / total : 0.0f;
      T* out = static_cast<T*>(p.out) + r * D;
      for (int64_t d = 0; d < D; ++d) out[d] = static_cast<T>(acc[d] * inv);
      if (p.lse != nullptr) p.lse[r] = total > 0.0f ? mx + std::log(total) : -INFINITY;
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> paged_attention_cpu(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const at::Tensor& q_indptr,
    const std::optional<at::Tensor>& tree_mask, std::optional<double> sm_scale, bool return_lse,
    int64_t num_splits) {
  check_paged_attention_args(q, k_cache, v_cache, block_table, kv_lens, q_indptr, tree_mask,
                             num_splits);
  TORCH_CHECK(q.device().is_cpu(), "q: expected a CPU tensor, got ", q.device());
  check_paged_attention_values(q, k_cache, block_table, kv_lens, q_indptr, tree_mask);
  auto [out, lse] = paged_attention_outputs(q, return_lse);

  Params p{};
  p.dtype = q.scalar_type();
  p.q = q.data_ptr();
  p.q_stride_tok = q.stride(0);
  p.q_stride_head = q.stride(1);
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.block_table = block_table.data_ptr<int32_t>();
  p.kv_lens = kv_lens.data_ptr<int32_t>();
  p.q_indptr = q_indptr.data_ptr<int32_t>();
  p.tree_mask = tree_mask.has_value() ? tree_mask->data_ptr<bool>() : nullptr;
  p.mask_stride = tree_mask.has_value() ? tree_mask->size(1) : 0;
  p.max_pages = block_table.size(1);
  p.num_tokens = q.size(0);
  p.num_q_heads = q.size(1);
  p.num_kv_heads = k_cache.size(2);
  p.group = p.num_q_heads / p.num_kv_heads;
  p.head_dim = q.size(2);
  p.page_size = k_cache.size(1);
  const double scale = sm_scale.has_value() ? *sm_scale : 1.0 / std::sqrt(double(p.head_dim));
  p.scale_log2 = static_cast<float>(scale * M_LOG2E);
  p.out = out.data_ptr();
  p.lse = return_lse ? lse.data_ptr<float>() : nullptr;

  std::vector<Task> tasks;
  int64_t max_kv = 0;
  for (int64_t b = 0; b < block_table.size(0); ++b) {
    const int64_t rows = (p.q_indptr[b + 1] - p.q_indptr[b]) * p.group;
    for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows)
      tasks.push_back({b, r0, std::min(kMaxRows, rows - r0)});
    if (rows > 0) max_kv = std::max<int64_t>(max_kv, p.kv_lens[b]);
  }
  if (tasks.empty()) return {out, lse};
  // Longest first (the positions a tile visits), for the kernel's one-at-a-time hand-out.
  auto visited = [&](const Task& t) {
    const int64_t kv_len = p.kv_lens[t.seq], q_len = p.q_indptr[t.seq + 1] - p.q_indptr[t.seq];
    return p.tree_mask != nullptr ? kv_len : kv_len - q_len + (t.row0 + t.rows - 1) / p.group + 1;
  };
  std::stable_sort(tasks.begin(), tasks.end(),
                   [&](const Task& a, const Task& b) { return visited(a) > visited(b); });
  // Automatic: split long sequences only when there are too few tasks for the threads, keeping
  // at least 512 positions per split.
  const int64_t base = static_cast<int64_t>(tasks.size()) * p.num_kv_heads;
  const int64_t threads = at::get_num_threads();
  p.num_splits = num_splits > 0 ? num_splits
                                : std::clamp<int64_t>((2 * threads + base - 1) / base, 1,
                                                      std::max<int64_t>(1, max_kv / 512));
  at::Tensor part_out, part_lse;
  if (p.num_splits > 1) {
    const auto f32 = q.options().dtype(at::kFloat);
    part_out = at::empty({p.num_splits, p.num_tokens, p.num_q_heads, p.head_dim}, f32);
    part_lse = at::empty({p.num_splits, p.num_tokens, p.num_q_heads}, f32);
    p.part_out = part_out.data_ptr<float>();
    p.part_lse = part_lse.data_ptr<float>();
  }
  run_kernel(p, tasks);
  if (p.num_splits > 1) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "paged_attention",
                                    [&] { merge_splits<scalar_t>(p); });
  }
  return {out, lse};
}

}  // namespace pipo
