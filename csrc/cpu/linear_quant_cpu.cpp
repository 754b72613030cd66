// CPU launcher for linear_quant: checks inputs once, has the active ISA path
// pack the activations, splits groups of output features across threads, each
// with its own dequantization scratch. Kernels: kernels/linear_quant.h.
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

// 64-byte aligned scratch of at least `bytes`, kept per thread across calls:
// a fresh 192 KB buffer per call would be an mmap and page faults every time.
void* thread_scratch(int64_t bytes) {
  thread_local std::vector<char> buf;
  if (static_cast<int64_t>(buf.size()) < bytes + 64) buf.resize(bytes + 64);
  return align64(buf);
}

at::Tensor linear_quant_cpu(const at::Tensor& x, const at::Tensor& weight, int64_t qtype,
                            const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(qtype == 0 || qtype == 1, "linear_quant: qtype must be 0 (Q4_1) or 1 (Q8_0), got ", qtype);
  const auto qt = static_cast<kernels::QType>(qtype);
  const int64_t bb = kernels::qblock_bytes(qt);
  TORCH_CHECK(x.dim() == 2, "linear_quant: x must be 2-D [M, K], got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 2, "linear_quant: weight must be 2-D [N, K / 32 * block bytes], got ",
              weight.dim(), "-D");
  TORCH_CHECK(weight.scalar_type() == at::kByte, "linear_quant: weight must be uint8 blocks, got ",
              weight.scalar_type());
  TORCH_CHECK(weight.is_contiguous(), "linear_quant: weight must be contiguous");
  TORCH_CHECK(weight.size(1) % bb == 0, "linear_quant: weight rows of ", weight.size(1),
              " bytes are not whole ", bb, "-byte blocks");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "linear_quant: x must be bfloat16 or float32, got ", x.scalar_type());
  const int64_t M = x.size(0), K = weight.size(1) / bb * kernels::kQBlock, N = weight.size(0);
  TORCH_CHECK(x.size(1) == K, "linear_quant: x has K=", x.size(1), " but weight has K=", K);
  at::Tensor bias_f;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "linear_quant: bias must be [N=", N, "]");
    bias_f = bias->to(at::kFloat).contiguous();
  }
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  const at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
  kernels::QuantLinearArgs a;
  a.x = xc.data_ptr();
  a.x_stride = xc.stride(0);
  a.x_bf16 = xc.scalar_type() == at::kBFloat16;
  a.w = weight.data_ptr<uint8_t>();
  a.qtype = qt;
  a.bias = bias.has_value() ? bias_f.data_ptr<float>() : nullptr;
  a.y = out.data_ptr();
  a.y_bf16 = a.x_bf16;
  a.M = M, a.K = K, a.N = N;

  const kernels::KernelTable& kt = active_kernels();
  std::vector<char> packed(kt.qlinear_pack_bytes(a) + 64);
  void* pp = align64(packed);
  kt.qlinear_pack(a, pp);
  const int64_t nb = kt.qlinear_n_block(a), scratch = kt.qlinear_scratch_bytes(a);
  const int64_t blocks = (N + nb - 1) / nb;
  const int64_t slice = row_slice(K);  // prefill: each slice dequantizes again
  for (int64_t m0 = 0; m0 < M; m0 += slice) {
    const int64_t m1 = std::min(M, m0 + slice);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      kt.qlinear_run(a, pp, thread_scratch(scratch), m0, m1, b0 * nb, std::min(N, b1 * nb));
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(entmtp, CPU, m) { m.impl("linear_quant", &linear_quant_cpu); }

}  // namespace entmtp
