// Packs checked tensors into the torch-free kernel argument structs; shared by
// the CPU and CUDA launchers so both read shapes and strides the same way.
#pragma once

#include <ATen/core/Tensor.h>

#include "checks.h"
#include "kernels/attention_args.h"
#include "kernels/kv_commit.h"
#include "kernels/tree_accept.h"

namespace entmtp {

// bits: the contiguous tree_bits or nullptr (causal); out: [B, T, Hq, D].
template <typename Elem>
kernels::AttnArgs<Elem> pack_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor* bits, const at::Tensor& out, const AttnShape& s,
                                       double scale) {
  kernels::AttnArgs<Elem> a;
  a.q = static_cast<const Elem*>(q.data_ptr());
  a.q_sb = q.stride(0), a.q_st = q.stride(1), a.q_sh = q.stride(2);
  a.k = static_cast<const Elem*>(k.data_ptr());
  a.k_sb = k.stride(0), a.k_sh = k.stride(1), a.k_sl = k.stride(2);
  a.v = static_cast<const Elem*>(v.data_ptr());
  a.v_sb = v.stride(0), a.v_sh = v.stride(1), a.v_sl = v.stride(2);
  a.out = static_cast<Elem*>(out.data_ptr());
  a.tree_bits = bits ? static_cast<const uint64_t*>(bits->data_ptr()) : nullptr;
  a.words = s.words;
  a.B = s.B, a.T = s.T, a.Hq = s.Hq, a.Hkv = s.Hkv, a.Lk = s.Lk, a.D = s.D;
  a.scale = static_cast<float>(scale);
  return a;
}

// tree_accept's inputs made contiguous (kept alive here) and their pointers.
struct AcceptInputs {
  at::Tensor tokens, parents, targets, probs, entropy;
  kernels::AcceptArgs args;
};

inline AcceptInputs pack_accept(const at::Tensor& node_tokens, const at::Tensor& parents,
                                const at::Tensor& target_ids, const c10::optional<at::Tensor>& draft_probs,
                                const c10::optional<at::Tensor>& entropy, double epsilon, double alpha,
                                int64_t max_depth) {
  AcceptInputs in;
  in.tokens = node_tokens.contiguous();
  in.parents = parents.contiguous();
  in.targets = target_ids.contiguous();
  const bool typical = draft_probs.has_value();
  if (typical) {
    in.probs = draft_probs->contiguous();
    in.entropy = entropy->contiguous();
  }
  kernels::AcceptArgs& a = in.args;
  a.node_tokens = in.tokens.data_ptr<int64_t>();
  a.parents = in.parents.data_ptr<int64_t>();
  a.target_ids = in.targets.data_ptr<int64_t>();
  a.draft_probs = typical ? in.probs.data_ptr<float>() : nullptr;  // nullptr: greedy
  a.entropy = typical ? in.entropy.data_ptr<float>() : nullptr;
  a.epsilon = static_cast<float>(epsilon);
  a.alpha = static_cast<float>(alpha);
  a.T = in.tokens.size(0);
  a.max_depth = max_depth;
  return in;
}

// src: contiguous int64 slots on kv's device.
inline kernels::KvCommitArgs pack_kv_commit(const at::Tensor& kv, const at::Tensor& src, int64_t dst_start) {
  kernels::KvCommitArgs a;
  a.kv = static_cast<char*>(kv.data_ptr());
  const int64_t es = kv.element_size();
  for (int d = 0; d < 5; ++d) a.strides[d] = kv.stride(d) * es;
  for (int d = 0; d < 4; ++d) a.sizes[d] = kv.size(d);
  a.row_bytes = kv.size(5) * es;
  a.src = src.data_ptr<int64_t>();
  a.n = src.size(0);
  a.dst_start = dst_start;
  a.slots = kv.size(4);
  return a;
}

}  // namespace entmtp
