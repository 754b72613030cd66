// The entmtp op schemas (registered once, here, for every device) and the
// extension module's init.
//
// No pybind11: `import entmtp._C` only needs to load this library so the static
// TORCH_LIBRARY registrations below run; the ops are then reached through
// torch.ops.entmtp.* (dispatcher ops trace under torch.compile(fullgraph=True)).
// CPU kernels: csrc/cpu/*.cpp; CUDA kernels: csrc/cuda/*.cu.
#include <Python.h>
#include <torch/library.h>

#include "cpu/isa_select.h"

TORCH_LIBRARY(entmtp, m) {
  // q [B, T, Hq, D], k/v [B, Hkv, L + T, D], tree_bits int64 [T, ceil(T/64)] or
  // None (causal) -> [B, T, Hq, D]. See entmtp/reference.py:tree_attention_ref.
  m.def("tree_attention(Tensor q, Tensor k, Tensor v, Tensor? tree_bits, float scale) -> Tensor");
  // logits [N, V] -> entropy f32 [N], argmax i64 [N], max_prob f32 [N],
  // topk_ids i64 [N, k], topk_probs f32 [N, k].
  m.def("token_entropy(Tensor logits, int k=0) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // [T] node arrays -> path i64 [max_depth + 1], accept_len i64 [], bonus i64 [].
  m.def(
      "tree_accept(Tensor node_tokens, Tensor parents, Tensor target_ids, int max_depth, "
      "Tensor? draft_probs=None, Tensor? entropy=None, float epsilon=0.09, float alpha=0.3) "
      "-> (Tensor, Tensor, Tensor)");
  // In place on kv [n_layers, 2, B, Hkv, S_max, D].
  m.def("kv_commit(Tensor(a!) kv, Tensor src_slots, int dst_start) -> ()");
  // x [M, K] bf16/fp32, weight [N, K] bf16, bias [N] -> [M, N] in x's dtype;
  // fp32 math (CPU only: CUDA uses cuBLAS through F.linear).
  m.def("linear_bf16w(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
  // x [M, K] bf16/fp32, weight uint8 [N, K / 32 * block bytes] of GGUF blocks
  // (qtype 0 = Q4_1, 20-byte blocks; 1 = Q8_0, 34-byte blocks), bias [N] -> [M, N]
  // in x's dtype (CPU only). See entmtp/reference.py:linear_quant_ref.
  m.def("linear_quant(Tensor x, Tensor weight, int qtype, Tensor? bias=None) -> Tensor");
  // Fused element-wise pieces of a decoder layer (CPU only; on CUDA the model
  // runs their torch composites in entmtp/reference.py).
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def(
      "rotary_qkv(Tensor qkv, Tensor cos, Tensor sin, int n_q_heads, int n_kv_heads, "
      "Tensor(a!) k_cache, Tensor(b!) v_cache, int start) -> Tensor");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  // Every decoder layer of one forward in one call: the ops above in the order
  // LlamaModel.forward_embeds runs them (so the result is bit for bit the same).
  // inputs [B T, H]; weights 7 per layer (input_norm, qkv, qkv_bias or an empty
  // tensor, o, post_norm, gate_up, down); qtypes 4 per layer (qkv, o, gate_up,
  // down: -1 float, else linear_quant's qtype); cos, sin [B T, D]; kv as for
  // kv_commit, written at [cache_len, cache_len + T) -> hidden after final_norm
  // [B T, H] (CPU only).
  m.def(
      "decoder_layers(Tensor inputs, Tensor[] weights, int[] qtypes, Tensor cos, Tensor sin, Tensor(a!) kv, "
      "int cache_len, int batch, Tensor? tree_bits, int n_q_heads, int n_kv_heads, float eps, float scale, "
      "Tensor final_norm) -> Tensor");
  // The CPU kernels' code path chosen at run time (csrc/cpu/isa_select.h):
  // "portable", "avx2", "avx512", "avx512bf16" or "amx"; ENTMTP_ISA forces a
  // lower one. No tensor arguments, so these are catch-all kernels defined here.
  m.def("cpu_isa() -> str", &entmtp::cpu_isa_name);
  // Every path this CPU can run, lowest first.
  m.def("cpu_isa_available() -> str[]", &entmtp::cpu_isa_available);
  // Up to how many bf16 rows linear_quant takes its int8 kernel on the active
  // path (reference.linear_quant_int8_ref is its spec; 0: none).
  m.def("linear_quant_int8_rows() -> int", &entmtp::linear_quant_int8_rows);
}

static struct PyModuleDef entmtp_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&entmtp_module); }
