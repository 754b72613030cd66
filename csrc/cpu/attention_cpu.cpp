// CPU launcher of tree_attention: checks once, plans tiles/splits, runs the
// items over at::parallel_for, then merges key splits if there were any.
// Kernel: kernels/tree_attention.h, through the active ISA path.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "launch_args.h"
#include "cpu/dispatch.h"
#include "cpu/isa_select.h"

namespace entmtp {
namespace {

template <typename T>
void run_attention(const kernels::AttnArgs<T>& a, kernels::Dtype dt) {
  const kernels::KernelTable& kt = active_kernels();
  kernels::AttnPlan plan;
  kt.attention_plan(dt, &a, at::get_num_threads(), &plan);
  std::vector<float> partial(plan.partial_floats);
  const int64_t items = a.B * a.Hkv * plan.tiles * plan.splits;
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scratch(plan.scratch_floats);
    kt.attention_items(dt, &a, plan, i0, i1, scratch.data(), partial.data());
  });
  if (plan.splits == 1) return;
  at::parallel_for(0, items / plan.splits, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> tmp(a.D);
    kt.attention_combine(dt, &a, plan, g0, g1, partial.data(), tmp.data());
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
    run_attention(pack_attention<T>(q, k, v, tree_bits.has_value() ? &bits : nullptr, out, s, scale),
                  kernel_dtype(q.scalar_type(), "tree_attention"));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(entmtp, CPU, m) { m.impl("tree_attention", &tree_attention_cpu); }

}  // namespace entmtp
