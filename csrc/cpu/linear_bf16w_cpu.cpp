// CPU launcher for linear_bf16w: checks inputs once, has the active ISA path
// pack the activations, splits output features across threads. Kernels:
// kernels/linear_bf16w.h (all paths) and kernels/linear_amx.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/isa_select.h"
#include "cpu/linear_common.h"

namespace entmtp {
namespace {

at::Tensor linear_bf16w_cpu(const at::Tensor& x, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "linear_bf16w: x must be 2-D [M, K], got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 2, "linear_bf16w: weight must be 2-D [N, K], got ", weight.dim(), "-D");
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16, "linear_bf16w: weight must be bfloat16, got ",
              weight.scalar_type());
  TORCH_CHECK(weight.is_contiguous(), "linear_bf16w: weight must be contiguous");
  TORCH_CHECK(x.size(1) == weight.size(1), "linear_bf16w: x has K=", x.size(1),
              " but weight has K=", weight.size(1));
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "linear_bf16w: x must be bfloat16 or float32, got ", x.scalar_type());
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  at::Tensor bias_f;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "linear_bf16w: bias must be [N=", N, "]");
    bias_f = bias->to(at::kFloat).contiguous();
  }
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  // x as given when its last dim is contiguous (the kernels pack it anyway).
  const at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
  kernels::LinearArgs a;
  a.x = xc.data_ptr();
  a.x_stride = xc.stride(0);
  a.x_bf16 = xc.scalar_type() == at::kBFloat16;
  a.w = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  a.bias = bias.has_value() ? bias_f.data_ptr<float>() : nullptr;
  a.y = out.data_ptr();
  a.y_bf16 = a.x_bf16;
  a.M = M, a.K = K, a.N = N;

  const kernels::KernelTable& kt = active_kernels();
  // Activations are small next to the weights: packed once per call into the
  // layout of the chosen path (fp32 chunk-permuted, bf16, or AMX VNNI tiles).
  std::vector<char> packed(kt.linear_pack_bytes(a) + 64);
  void* pp = align64(packed);
  kt.linear_pack(a, pp);
  const int64_t nb = kt.linear_n_block(a);
  const int64_t blocks = (N + nb - 1) / nb;
  const int64_t slice = row_slice(K);  // prefill: slices of rows that stay in L2
  for (int64_t m0 = 0; m0 < M; m0 += slice) {
    const int64_t m1 = std::min(M, m0 + slice);
    // Chunks of at least ~64K multiply-adds so threading pays off.
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(nb * K * (m1 - m0), 1));
    at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
      kt.linear_run(a, pp, m0, m1, b0 * nb, std::min(N, b1 * nb));
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(entmtp, CPU, m) { m.impl("linear_bf16w", &linear_bf16w_cpu); }

}  // namespace entmtp
