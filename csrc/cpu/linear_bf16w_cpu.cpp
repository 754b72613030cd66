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
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  // Activations are small next to the weights: widen them to fp32 once here.
  const at::Tensor x_f = x.to(at::kFloat).contiguous();
  const float* xp = x_f.data_ptr<float>();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  const float* bp = bias.has_value() ? bias_f.data_ptr<float>() : nullptr;
  const bool out_bf16 = out.scalar_type() == at::kBFloat16;
  void* op = out.data_ptr();

  auto run = [&](auto&& store) {
    std::vector<float> x_perm(M * K);
    for (int64_t m = 0; m < M; ++m) kernels::permute_x_for_gemv(xp + m * K, K, x_perm.data() + m * K);
    const int64_t blocks = (N + kernels::kRowBlock - 1) / kernels::kRowBlock;
    // Long inputs (prefill) go in slices of rows that stay in L2 while all
    // weight blocks stream past; each slice re-reads the weights once.
    const int64_t slice = std::max<int64_t>(2, (128 * 1024 / 4) / K) & ~int64_t(1);
    for (int64_t m0 = 0; m0 < M; m0 += slice) {
      const int64_t rows = std::min(slice, M - m0);
      // Chunks of at least ~64K multiply-adds so threading pays off.
      const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(kernels::kRowBlock * K * rows, 1));
      at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
        kernels::gemv_rows(x_perm.data() + m0 * K, rows, K, wp, bp, b0 * kernels::kRowBlock,
                           std::min(N, b1 * kernels::kRowBlock),
                           [&](int64_t m, int64_t n, float v) { store(m0 + m, n, v); });
      });
    }
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

TORCH_LIBRARY_IMPL(entmtp, CPU, m) { m.impl("linear_bf16w", &linear_bf16w_cpu); }

}  // namespace entmtp
