// Fused per-layer ops on the CPU: residual add + RMSNorm, and q/k-norm + RoPE + KV-cache append.
// Parallel over tokens; each row is staged in a float32 buffer so the inner loops are plain
// float loops the compiler vectorises. Every rounding step matches the model's PyTorch code.
#include "../fused.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace pipo {
namespace {

// Round a float32 value through the storage dtype (identity for float).
template <typename T>
inline float round_to(float x) {
  return static_cast<float>(static_cast<T>(x));
}

// Sum of squares in kLanes independent partial sums: a single running sum is a serial
// dependency the compiler may not reorder (no -ffast-math), so it would not vectorise.
constexpr int64_t kLanes = 16;

inline float sum_squares(const float* x, int64_t n) {
  float part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] += x[i + l] * x[i + l];
  for (; i < n; ++i) part[0] += x[i] * x[i];
  float total = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) total += part[l];
  return total;
}

// Rows per task: about 64 KiB of work each, so decode-sized batches stay on one thread.
int64_t row_grain(int64_t row_elems) {
  return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(row_elems, 1));
}

template <typename T>
void add_rmsnorm(T* x, T* residual, const T* weight, int64_t n, int64_t h, float eps) {
  at::parallel_for(0, n, row_grain(h), [&](int64_t begin, int64_t end) {
    std::vector<float> buf(static_cast<size_t>(h));
    for (int64_t row = begin; row < end; ++row) {
      T* xr = x + row * h;
      T* rr = residual + row * h;
      for (int64_t i = 0; i < h; ++i)
        buf[i] = round_to<T>(static_cast<float>(rr[i]) + static_cast<float>(xr[i]));
      const float inv = 1.f / std::sqrt(sum_squares(buf.data(), h) / static_cast<float>(h) + eps);
      for (int64_t i = 0; i < h; ++i) {
        rr[i] = static_cast<T>(buf[i]);
        xr[i] = static_cast<T>(round_to<T>(buf[i] * inv) * static_cast<float>(weight[i]));
      }
    }
  });
}

// One head: optional RMSNorm, then rotate-half RoPE over the first 2 * half channels.
// src and dst may be the same row (q is rotated in place): the row is staged first.
template <typename T>
void norm_rope_head(const T* src, T* dst, const T* weight, const float* cos, const float* sin,
                    int64_t d, int64_t half, float eps, float* buf) {
  for (int64_t i = 0; i < d; ++i) buf[i] = static_cast<float>(src[i]);
  if (weight != nullptr) {
    const float inv = 1.f / std::sqrt(sum_squares(buf, d) / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i)
      buf[i] = round_to<T>(round_to<T>(buf[i] * inv) * static_cast<float>(weight[i]));
  }
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = buf[i], x2 = buf[i + half];
    dst[i] = static_cast<T>(x1 * cos[i] - x2 * sin[i]);
    dst[i + half] = static_cast<T>(x2 * cos[i] + x1 * sin[i]);
  }
  for (int64_t i = 2 * half; i < d; ++i) dst[i] = static_cast<T>(buf[i]);
}

struct QKRopeArgs {
  int64_t n, q_heads, kv_heads, d, half;
  int64_t q_stride, k_stride, v_stride;  // elements between tokens
  float eps;
};

template <typename T>
void qk_norm_rope_append_impl(const QKRopeArgs& a, T* q, const T* k, const T* v, const T* wq,
                              const T* wk, const float* table, const int64_t* positions, T* k_cache,
                              T* v_cache, const int64_t* slots) {
  const int64_t row = a.kv_heads * a.d;
  at::parallel_for(0, a.n, row_grain((a.q_heads + 2 * a.kv_heads) * a.d),
                   [&](int64_t begin, int64_t end) {
                     std::vector<float> buf(static_cast<size_t>(a.d));
                     for (int64_t t = begin; t < end; ++t) {
                       const float* cos = table + positions[t] * 2 * a.half;
                       const float* sin = cos + a.half;
                       T* qt = q + t * a.q_stride;
                       for (int64_t h = 0; h < a.q_heads; ++h) {
                         norm_rope_head(qt + h * a.d, qt + h * a.d, wq, cos, sin, a.d, a.half,
                                        a.eps, buf.data());
                       }
                       const int64_t slot = slots[t];
                       if (slot < 0) continue;
                       const T* kt = k + t * a.k_stride;
                       T* kd = k_cache + slot * row;
                       for (int64_t h = 0; h < a.kv_heads; ++h) {
                         norm_rope_head(kt + h * a.d, kd + h * a.d, wk, cos, sin, a.d, a.half,
                                        a.eps, buf.data());
                       }
                       std::memcpy(v_cache + slot * row, v + t * a.v_stride, row * sizeof(T));
                     }
                   });
}

template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

}  // namespace

void fused_add_rmsnorm_cpu(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                           double eps) {
  check_add_rmsnorm_args(x, residual, weight);
  TORCH_CHECK(x.device().is_cpu(), "x: expected a CPU tensor, got ", x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fused_add_rmsnorm", [&] {
        add_rmsnorm(x.mutable_data_ptr<scalar_t>(), residual.mutable_data_ptr<scalar_t>(),
                    weight.const_data_ptr<scalar_t>(), x.size(0), x.size(1),
                    static_cast<float>(eps));
      });
}

void qk_norm_rope_append_cpu(at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const std::optional<at::Tensor>& q_norm_weight,
                             const std::optional<at::Tensor>& k_norm_weight,
                             const at::Tensor& cos_sin_cache, const at::Tensor& positions,
                             at::Tensor& k_cache, at::Tensor& v_cache,
                             const at::Tensor& slot_mapping, double eps) {
  check_qk_rope_args(q, k, v, q_norm_weight, k_norm_weight, cos_sin_cache, positions, k_cache,
                     v_cache, slot_mapping);
  TORCH_CHECK(q.device().is_cpu(), "q: expected a CPU tensor, got ", q.device());
  check_position_values(positions, cos_sin_cache.size(0));
  check_slot_values(slot_mapping, num_slots(k_cache), "slot_mapping");
  const QKRopeArgs a{k.size(0),
                     q.size(1),
                     k.size(1),
                     k.size(2),
                     cos_sin_cache.size(1) / 2,
                     q.stride(0),
                     k.stride(0),
                     v.stride(0),
                     static_cast<float>(eps)};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "qk_norm_rope_append", [&] {
        qk_norm_rope_append_impl<scalar_t>(
            a, q.mutable_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
            v.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(q_norm_weight),
            optional_ptr<scalar_t>(k_norm_weight), cos_sin_cache.const_data_ptr<float>(),
            positions.const_data_ptr<int64_t>(), k_cache.mutable_data_ptr<scalar_t>(),
            v_cache.mutable_data_ptr<scalar_t>(), slot_mapping.const_data_ptr<int64_t>());
      });
}

}  // namespace pipo
