// Boundary checks of the entmtp ops, shared by the CPU and CUDA launchers so
// both devices reject the same inputs with the same messages (each names the
// offending argument). Only shapes, dtypes, strides and devices are checked
// here; value checks that need the data live in the CPU launchers (on CUDA
// they would need a host sync).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace entmtp {

struct AttnShape {
  int64_t B, T, Hq, Hkv, Lk, D, words;
};

inline AttnShape check_tree_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const c10::optional<at::Tensor>& tree_bits) {
  TORCH_CHECK(q.dim() == 4, "tree_attention: q must be 4-D [B, T, Hq, D], got ", q.dim(), "-D");
  TORCH_CHECK(k.dim() == 4, "tree_attention: k must be 4-D [B, Hkv, Lk, D], got ", k.dim(), "-D");
  TORCH_CHECK(v.dim() == 4, "tree_attention: v must be 4-D [B, Hkv, Lk, D], got ", v.dim(), "-D");
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "tree_attention: q must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(k.scalar_type() == dt, "tree_attention: k must have q's dtype ", dt, ", got ",
              k.scalar_type());
  TORCH_CHECK(v.scalar_type() == dt, "tree_attention: v must have q's dtype ", dt, ", got ",
              v.scalar_type());
  TORCH_CHECK(k.device() == q.device(), "tree_attention: k is on ", k.device(), " but q on ", q.device());
  TORCH_CHECK(v.device() == q.device(), "tree_attention: v is on ", v.device(), " but q on ", q.device());
  TORCH_CHECK(k.sizes() == v.sizes(), "tree_attention: v must have k's shape ", k.sizes(), ", got ",
              v.sizes());
  AttnShape s;
  s.B = q.size(0);
  s.T = q.size(1);
  s.Hq = q.size(2);
  s.D = q.size(3);
  s.Hkv = k.size(1);
  s.Lk = k.size(2);
  TORCH_CHECK(k.size(0) == s.B, "tree_attention: k has batch ", k.size(0), " but q has ", s.B);
  TORCH_CHECK(k.size(3) == s.D, "tree_attention: k has head dim ", k.size(3), " but q has ", s.D);
  TORCH_CHECK(s.Hkv > 0 && s.Hq % s.Hkv == 0, "tree_attention: q heads (", s.Hq,
              ") must be a multiple of k heads (", s.Hkv, ")");
  TORCH_CHECK(s.Lk >= s.T, "tree_attention: k holds Lk=", s.Lk, " keys, fewer than the T=", s.T,
              " new tokens");
  TORCH_CHECK(s.D > 0 && s.D % 8 == 0, "tree_attention: head dim D must be a positive multiple of 8, got ",
              s.D);
  TORCH_CHECK(q.stride(3) == 1, "tree_attention: q's last dim must be contiguous (stride 1)");
  TORCH_CHECK(k.stride(3) == 1, "tree_attention: k's last dim must be contiguous (stride 1)");
  TORCH_CHECK(v.stride(3) == 1, "tree_attention: v's last dim must be contiguous (stride 1)");
  s.words = 0;
  if (tree_bits.has_value()) {
    const at::Tensor& tb = *tree_bits;
    const int64_t W = (s.T + 63) / 64;
    TORCH_CHECK(tb.scalar_type() == at::kLong, "tree_attention: tree_bits must be int64, got ",
                tb.scalar_type());
    TORCH_CHECK(tb.dim() == 2 && tb.size(0) == s.T && tb.size(1) == W,
                "tree_attention: tree_bits must be [T, ceil(T/64)] = [", s.T, ", ", W, "], got ",
                tb.sizes());
    TORCH_CHECK(tb.device() == q.device(), "tree_attention: tree_bits is on ", tb.device(),
                " but q on ", q.device());
    s.words = W;
  }
  return s;
}

inline void check_token_entropy(const at::Tensor& logits, int64_t k) {
  TORCH_CHECK(logits.dim() == 2, "token_entropy: logits must be 2-D [N, V], got ", logits.dim(), "-D");
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "token_entropy: logits must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(logits.size(1) > 0, "token_entropy: logits must have V > 0 columns");
  TORCH_CHECK(logits.size(1) < (int64_t(1) << 31), "token_entropy: logits' V must be < 2^31");
  TORCH_CHECK(logits.stride(1) == 1 || logits.size(1) == 1,
              "token_entropy: logits' last dim must be contiguous (stride 1)");
  TORCH_CHECK(k >= 0 && k <= 16, "token_entropy: k must be in [0, 16], got ", k);
  TORCH_CHECK(k <= logits.size(1), "token_entropy: k=", k, " exceeds the vocabulary size V=",
              logits.size(1));
}

inline void check_1d_long(const at::Tensor& t, const char* name, int64_t n, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "tree_accept: ", name, " must be 1-D [T=", n, "], got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kLong, "tree_accept: ", name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "tree_accept: ", name, " is on ", t.device(),
              " but node_tokens on ", like.device());
}

inline void check_1d_float(const at::Tensor& t, const char* name, int64_t n, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "tree_accept: ", name, " must be 1-D [T=", n, "], got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "tree_accept: ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "tree_accept: ", name, " is on ", t.device(),
              " but node_tokens on ", like.device());
}

inline void check_tree_accept(const at::Tensor& node_tokens, const at::Tensor& parents,
                              const at::Tensor& target_ids, int64_t max_depth,
                              const c10::optional<at::Tensor>& draft_probs,
                              const c10::optional<at::Tensor>& entropy) {
  TORCH_CHECK(node_tokens.dim() == 1, "tree_accept: node_tokens must be 1-D [T], got ",
              node_tokens.dim(), "-D");
  const int64_t T = node_tokens.size(0);
  TORCH_CHECK(T >= 1 && T <= 4096, "tree_accept: node_tokens must hold 1..4096 nodes, got ", T);
  check_1d_long(node_tokens, "node_tokens", T, node_tokens);
  check_1d_long(parents, "parents", T, node_tokens);
  check_1d_long(target_ids, "target_ids", T, node_tokens);
  TORCH_CHECK(max_depth >= 0 && max_depth <= 4096, "tree_accept: max_depth must be in [0, 4096], got ",
              max_depth);
  TORCH_CHECK(draft_probs.has_value() == entropy.has_value(),
              "tree_accept: draft_probs and entropy must be given together (typical mode) or not at all "
              "(greedy)");
  if (draft_probs.has_value()) {
    check_1d_float(*draft_probs, "draft_probs", T, node_tokens);
    check_1d_float(*entropy, "entropy", T, node_tokens);
  }
}

inline void check_kv_commit(const at::Tensor& kv, const at::Tensor& src_slots, int64_t dst_start) {
  TORCH_CHECK(kv.dim() == 6, "kv_commit: kv must be 6-D [n_layers, 2, B, Hkv, S_max, D], got ", kv.dim(),
              "-D");
  TORCH_CHECK(kv.stride(5) == 1 || kv.size(5) == 1, "kv_commit: kv's last dim must be contiguous");
  TORCH_CHECK(src_slots.dim() == 1, "kv_commit: src_slots must be 1-D [n], got ", src_slots.dim(), "-D");
  TORCH_CHECK(src_slots.scalar_type() == at::kLong, "kv_commit: src_slots must be int64, got ",
              src_slots.scalar_type());
  TORCH_CHECK(src_slots.device() == kv.device(), "kv_commit: src_slots is on ", src_slots.device(),
              " but kv on ", kv.device());
  TORCH_CHECK(dst_start >= 0 && dst_start + src_slots.size(0) <= kv.size(4), "kv_commit: dst_start=",
              dst_start, " with n=", src_slots.size(0), " rows overruns the cache (S_max=", kv.size(4), ")");
}

}  // namespace entmtp
