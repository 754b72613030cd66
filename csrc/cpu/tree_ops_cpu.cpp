// CPU launchers of tree_accept and kv_commit: the per-step bookkeeping ops of
// speculative decoding. Kernels: kernels/tree_accept.h, kernels/kv_commit.h.
// Unlike the CUDA launchers these also validate the index *values* (parents,
// slots), which is free here since the data is on the host.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "checks.h"
#include "launch_args.h"
#include "kernels/kv_commit.h"
#include "kernels/tree_accept.h"

namespace entmtp {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_accept_cpu(
    const at::Tensor& node_tokens, const at::Tensor& parents, const at::Tensor& target_ids,
    int64_t max_depth, const c10::optional<at::Tensor>& draft_probs,
    const c10::optional<at::Tensor>& entropy, double epsilon, double alpha) {
  check_tree_accept(node_tokens, parents, target_ids, max_depth, draft_probs, entropy);
  const AcceptInputs in = pack_accept(node_tokens, parents, target_ids, draft_probs, entropy, epsilon, alpha,
                                      max_depth);
  const kernels::AcceptArgs& a = in.args;

  // Validate the tree: root first, parents before children, depth <= max_depth.
  std::vector<int32_t> depth(a.T);
  TORCH_CHECK(a.parents[0] == -1, "tree_accept: parents[0] must be -1 (the root), got ", a.parents[0]);
  depth[0] = 0;
  for (int64_t i = 1; i < a.T; ++i) {
    const int64_t p = a.parents[i];
    TORCH_CHECK(p >= 0 && p < i, "tree_accept: parents[", i, "]=", p, " must lie in [0, ", i, ")");
    depth[i] = depth[p] + 1;
    TORCH_CHECK(depth[i] <= max_depth, "tree_accept: node ", i, " has depth ", depth[i],
                " > max_depth=", max_depth);
  }

  at::Tensor path = at::empty({max_depth + 1}, in.tokens.options());
  at::Tensor accept_len = at::empty({}, in.tokens.options()), bonus = at::empty({}, in.tokens.options());
  kernels::accept_serial(
      a, [&](int64_t i) { return kernels::node_passes(a, i); }, [&](int64_t i) { return a.parents[i]; },
      depth.data(), path.data_ptr<int64_t>(), accept_len.data_ptr<int64_t>(), bonus.data_ptr<int64_t>());
  return {path, accept_len, bonus};
}

void kv_commit_cpu(const at::Tensor& kv, const at::Tensor& src_slots, int64_t dst_start) {
  check_kv_commit(kv, src_slots, dst_start);
  const at::Tensor src = src_slots.contiguous();
  const int64_t n = src.size(0), S = kv.size(4);
  const int64_t* sp = src.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(sp[i] >= dst_start + i && sp[i] < S, "kv_commit: src_slots[", i, "]=", sp[i],
                " must lie in [dst_start + i=", dst_start + i, ", S_max=", S, ")");
    TORCH_CHECK(i == 0 || sp[i] > sp[i - 1], "kv_commit: src_slots must be strictly increasing, got ",
                sp[i - 1], " then ", sp[i]);
  }
  const kernels::KvCommitArgs a = pack_kv_commit(kv, src, dst_start);
  if (n == 0 || a.groups() == 0) return;
  at::parallel_for(0, a.groups(), 16, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) kernels::kv_commit_group(a, g);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(entmtp, CPU, m) {
  m.impl("tree_accept", &tree_accept_cpu);
  m.impl("kv_commit", &kv_commit_cpu);
}

}  // namespace entmtp
