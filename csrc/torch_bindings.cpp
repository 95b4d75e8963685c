// Every schema of the `pipo` namespace, and the CPU / CUDA implementations registered for it.
// docs/ops.md documents each op; the Python wrappers live in pipo_kernels/.
#include <torch/library.h>

#include "ops.h"

#ifdef PIPO_PYTHON_EXTENSION
#include <Python.h>

// Importing pipo_kernels._C runs the static registrations below; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#endif

TORCH_LIBRARY(pipo, m) {
  // Writes key[n] / value[n] to slot slot_mapping[n] of the paged caches; negative slots skip.
  m.def(
      "kv_cache_append(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, "
      "Tensor slot_mapping) -> ()");
  // cache[dst[m]] = cache[src[m]] for K and V, reading every source before writing.
  m.def(
      "kv_cache_compact(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor src_slots, "
      "Tensor dst_slots) -> ()");
  // act(weight @ [embedding[pair_ids[n, 0]]; ...; embedding[pair_ids[n, k-1]]] + bias), pair_ids
  // [N, k]: the pair-in fold (k = 2) and its k-token generalisation.
  m.def(
      "fold_pairs(Tensor pair_ids, Tensor embedding, Tensor weight, Tensor? bias, "
      "str activation) -> Tensor");
  // weight @ [rmsnorm(embedding[token_ids[n]]) * w_e; rmsnorm(hidden[n]) * w_h]: the MTP input.
  m.def(
      "unfold_input(Tensor token_ids, Tensor hidden, Tensor embedding, Tensor embed_norm_weight, "
      "Tensor hidden_norm_weight, Tensor weight, float eps) -> Tensor");
  // Ragged query blocks attend over the paged cache (causal or tree mask) -> (out, lse or [0]).
  m.def(
      "paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, "
      "Tensor kv_lens, Tensor q_indptr, Tensor? tree_mask=None, float? sm_scale=None, "
      "bool return_lse=False, int num_splits=0) -> (Tensor, Tensor)");
  // Greedy draft-tree verification: accepted path, its length and the bonus token per sequence.
  m.def(
      "verify_tree(Tensor draft_tokens, Tensor parents, Tensor q_indptr, Tensor target_tokens, "
      "int max_depth) -> (Tensor accept_len, Tensor accept_index, Tensor bonus_token)");
  // Speculative sampling on a draft tree (target distribution preserved), counter-based RNG.
  m.def(
      "verify_tree_stochastic(Tensor draft_tokens, Tensor parents, Tensor q_indptr, "
      "Tensor draft_probs, Tensor target_probs, Tensor seeds, Tensor offsets, int max_depth) "
      "-> (Tensor accept_len, Tensor accept_index, Tensor bonus_token)");
  // Fused LM head + sampler over vocabulary tiles: (tokens, token_logprob, cand_ids,
  // cand_logprobs).
  m.def(
      "sample_tokens(Tensor hidden, Tensor lm_head, Tensor temperature, Tensor top_k, "
      "Tensor top_p, Tensor presence_penalty, Tensor? seen, Tensor seeds, Tensor offsets, "
      "int num_candidates=0) -> (Tensor, Tensor, Tensor, Tensor)");
  // PIPO confidence head (RMSNorm, fc1, SiLU, fc2, sigmoid) and threshold gate: (pairs,
  // confidence).
  m.def(
      "pair_out(Tensor hidden, Tensor mtp_hidden, Tensor token1, Tensor token2, "
      "Tensor norm_weight, Tensor fc1_weight, Tensor fc2_weight, float threshold, int pad_id, "
      "float eps) -> (Tensor, Tensor)");
  // pair_out's head per MTP step j of [hidden; mtp_hidden[:, j]] and the longest passing prefix
  // of each group: (groups [B, 1+J], confidence [B, J]).
  m.def(
      "group_out(Tensor hidden, Tensor mtp_hidden, Tensor tokens, Tensor norm_weight, "
      "Tensor fc1_weight, Tensor fc2_weight, float threshold, int pad_id, float eps) "
      "-> (Tensor, Tensor)");
  // In place: residual += x; x = rmsnorm(residual) * weight (the layer's add + next norm).
  m.def("fused_add_rmsnorm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  // Per-head q/k RMSNorm + RoPE from a cos/sin table; q rotated in place, k/v appended to cache.
  m.def(
      "qk_norm_rope_append(Tensor(a!) q, Tensor k, Tensor v, Tensor? q_norm_weight, "
      "Tensor? k_norm_weight, Tensor cos_sin_cache, Tensor positions, Tensor(b!) k_cache, "
      "Tensor(c!) v_cache, Tensor slot_mapping, float eps) -> ()");
}

TORCH_LIBRARY_IMPL(pipo, CPU, m) {
  m.impl("kv_cache_append", &pipo::kv_cache_append_cpu);
  m.impl("kv_cache_compact", &pipo::kv_cache_compact_cpu);
  m.impl("fold_pairs", &pipo::fold_pairs_cpu);
  m.impl("unfold_input", &pipo::unfold_input_cpu);
  m.impl("paged_attention", &pipo::paged_attention_cpu);
  m.impl("verify_tree", &pipo::verify_tree_cpu);
  m.impl("verify_tree_stochastic", &pipo::verify_tree_stochastic_cpu);
  m.impl("sample_tokens", &pipo::sample_tokens_cpu);
  m.impl("pair_out", &pipo::pair_out_cpu);
  m.impl("group_out", &pipo::group_out_cpu);
  m.impl("fused_add_rmsnorm", &pipo::fused_add_rmsnorm_cpu);
  m.impl("qk_norm_rope_append", &pipo::qk_norm_rope_append_cpu);
}

#ifdef PIPO_WITH_CUDA
TORCH_LIBRARY_IMPL(pipo, CUDA, m) {
  m.impl("kv_cache_append", &pipo::kv_cache_append_cuda);
  m.impl("kv_cache_compact", &pipo::kv_cache_compact_cuda);
  m.impl("fold_pairs", &pipo::fold_pairs_cuda);
  m.impl("unfold_input", &pipo::unfold_input_cuda);
  m.impl("paged_attention", &pipo::paged_attention_cuda);
  m.impl("verify_tree", &pipo::verify_tree_cuda);
  m.impl("verify_tree_stochastic", &pipo::verify_tree_stochastic_cuda);
  m.impl("sample_tokens", &pipo::sample_tokens_cuda);
  m.impl("pair_out", &pipo::pair_out_cuda);
  m.impl("group_out", &pipo::group_out_cuda);
  m.impl("fused_add_rmsnorm", &pipo::fused_add_rmsnorm_cuda);
  m.impl("qk_norm_rope_append", &pipo::qk_norm_rope_append_cuda);
}
#endif
