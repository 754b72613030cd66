// CPU launcher for linear_bf16w: checks inputs once, widens activations to
// fp32, splits output features across threads. Kernel: kernels/linear_bf16w.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "kernels/linear_bf16w.h"

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
  // Activations are small next to the weights: widen them once here.
  const at::Tensor x_f = x.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;

  const float* xp = x_f.data_ptr<float>();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  const float* bp = bias.has_value() ? bias_f.data_ptr<float>() : nullptr;
  const bool out_bf16 = out.scalar_type() == at::kBFloat16;
  void* op = out.data_ptr();

  auto run = [&](auto&& store) {
#ifdef ENTMTP_LINEAR_AVX2
    if (M >= 4) {
      // Register-blocked panels: each weight panel is widened once for all rows.
      const int64_t panels = (N + kernels::kPanel - 1) / kernels::kPanel;
      at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
        std::vector<float> scratch(kernels::kPanel * K);
        kernels::linear_bf16w_panels(xp, M, K, wp, bp, p0 * kernels::kPanel,
                                     std::min(N, p1 * kernels::kPanel), scratch.data(), store);
      });
      return;
    }
#endif
    // Few rows: stream the bf16 weights once, widening in registers.
    const int64_t blocks = (N + kernels::kLinearRowBlock - 1) / kernels::kLinearRowBlock;
    // Aim for chunks of at least ~64K multiply-adds so threading pays off.
    const int64_t per_block = kernels::kLinearRowBlock * K * M;
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(per_block, 1));
    at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
      std::vector<float> scratch(M > 2 ? kernels::kLinearRowBlock * K : 0);
      kernels::linear_bf16w_rows(xp, M, K, wp, bp, b0 * kernels::kLinearRowBlock,
                                 std::min(N, b1 * kernels::kLinearRowBlock), scratch.data(), store);
    });
  };
  if (out_bf16) {
    uint16_t* y = static_cast<uint16_t*>(op);
    run([=](int64_t m, int64_t n, float v) { y[m * N + n] = kernels::float_to_bf16(v); });
  } else {
    float* y = static_cast<float*>(op);
    run([=](int64_t m, int64_t n, float v) { y[m * N + n] = v; });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(entmtp, m) {
  m.def("linear_bf16w(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(entmtp, CPU, m) { m.impl("linear_bf16w", &linear_bf16w_cpu); }

}  // namespace entmtp
