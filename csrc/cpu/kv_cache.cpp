// KV-cache append and compaction on the CPU: parallel over tokens, one memcpy per row.
#include "../kv_cache.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>

namespace pipo {
namespace {

// Rows are small (a few KiB): a task copies at least 256 KiB, so small batches stay on one
// thread instead of paying for a parallel region.
int64_t grain(int64_t row_bytes) {
  return std::max<int64_t>(1, (int64_t{1} << 18) / (2 * row_bytes));
}

}  // namespace

void kv_cache_append_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                         at::Tensor& v_cache, const at::Tensor& slot_mapping) {
  check_kv_append_args(key, value, k_cache, v_cache, slot_mapping);
  TORCH_CHECK(key.device().is_cpu(), "key: expected a CPU tensor, got ", key.device());
  const int64_t n_slots = num_slots(k_cache);
  check_slot_values(slot_mapping, n_slots, "slot_mapping");

  const int64_t elem = k_cache.element_size();
  const int64_t row_bytes = k_cache.size(2) * k_cache.size(3) * elem;
  const int64_t k_stride = key.stride(0) * elem, v_stride = value.stride(0) * elem;
  const auto* k_src = static_cast<const char*>(key.data_ptr());
  const auto* v_src = static_cast<const char*>(value.data_ptr());
  auto* k_dst = static_cast<char*>(k_cache.data_ptr());
  auto* v_dst = static_cast<char*>(v_cache.data_ptr());
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();

  at::parallel_for(0, key.size(0), grain(row_bytes), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;
      std::memcpy(k_dst + slot * row_bytes, k_src + t * k_stride, row_bytes);
      std::memcpy(v_dst + slot * row_bytes, v_src + t * v_stride, row_bytes);
    }
  });
}

void kv_cache_compact_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_slots,
                          const at::Tensor& dst_slots) {
  check_kv_compact_args(k_cache, v_cache, src_slots, dst_slots);
  TORCH_CHECK(k_cache.device().is_cpu(), "k_cache: expected a CPU tensor, got ", k_cache.device());
  const int64_t n_slots = num_slots(k_cache);
  check_compact_values(src_slots, dst_slots, n_slots);

  const int64_t moves = src_slots.size(0);
  const int64_t row_bytes = k_cache.size(2) * k_cache.size(3) * k_cache.element_size();
  const int64_t* src = src_slots.data_ptr<int64_t>();
  const int64_t* dst = dst_slots.data_ptr<int64_t>();
  auto* k = static_cast<char*>(k_cache.data_ptr());
  auto* v = static_cast<char*>(v_cache.data_ptr());
  // Read every source before writing any destination: sources and destinations may overlap.
  // Uninitialised staging buffer: zero-filling it would cost as much as the moves themselves.
  const std::unique_ptr<char[]> rows(new char[static_cast<size_t>(moves * 2 * row_bytes)]);
  auto skip = [&](int64_t m) { return src[m] < 0 || dst[m] < 0; };
  at::parallel_for(0, moves, grain(row_bytes), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      if (skip(m)) continue;
      std::memcpy(rows.get() + m * 2 * row_bytes, k + src[m] * row_bytes, row_bytes);
      std::memcpy(rows.get() + (m * 2 + 1) * row_bytes, v + src[m] * row_bytes, row_bytes);
    }
  });
  at::parallel_for(0, moves, grain(row_bytes), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      if (skip(m)) continue;
      std::memcpy(k + dst[m] * row_bytes, rows.get() + m * 2 * row_bytes, row_bytes);
      std::memcpy(v + dst[m] * row_bytes, rows.get() + (m * 2 + 1) * row_bytes, row_bytes);
    }
  });
}

}  // namespace pipo
