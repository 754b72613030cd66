// CPU launcher of tree_attention: checks once, plans tiles/splits, runs the
// items over at::parallel_for, then merges key splits if there were any.
// Kernel: kernels/tree_attention.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "launch_args.h"
#include "cpu/dispatch.h"
#include "kernels/tree_attention.h"

namespace entmtp {
namespace {

template <typename T>
void run_attention(const kernels::AttnArgs<T>& a) {
  const kernels::AttnPlan plan = kernels::plan_attention(a, at::get_num_threads());
  std::vector<float> partial(kernels::attention_partial_floats(plan, a.B, a.Hkv, a.D));
  const int64_t items = a.B * a.Hkv * plan.items();
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scratch(kernels::attention_scratch_floats(a.D));
    for (int64_t i = i0; i < i1; ++i) kernels::attention_run_item(a, plan, i, scratch.data(), partial.data());
  });
  if (plan.splits == 1) return;
  at::parallel_for(0, items / plan.splits, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> tmp(a.D);
    for (int64_t g = g0; g < g1; ++g) kernels::attention_combine(a, plan, g, partial.data(), tmp.data());
  });
}

at::Tensor tree_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const c10::optional<at::Tensor>& tree_bits, double scale) {
  const AttnShape s = check_tree_attention(q, k, v, tree_bits);
  at::Tensor bits;
  if (tree_bits.has_value()) bits = tree_bits->contiguous();
  at::Tensor out = at::empty({s.B, s.T, s.Hq, s.D}, q.options());
  if (out.numel() == 0) return out;
  dispatch_storage_type(q.scalar_type(), "tree_attention", [&](auto tag) {
    using T = decltype(tag);
    run_attention(pack_attention<T>(q, k, v, tree_bits.has_value() ? &bits : nullptr, out, s, scale));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(entmtp, CPU, m) { m.impl("tree_attention", &tree_attention_cpu); }

}  // namespace entmtp
