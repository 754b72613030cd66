// CPU launchers of the fused layer ops (kernels/fused_layer.h): inputs checked
// once here, rows in parallel. CPU only: on CUDA the model runs the torch
// composites of entmtp/reference.py (launch overhead there is removed by CUDA
// graphs instead).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <tuple>

#include "cpu/dispatch.h"
#include "cpu/isa_select.h"

namespace entmtp {
namespace {

// Rows per task: about 16K elements (~10 us) each, so tree-verify rows
// (T = 16..128) are split across threads while a decode row stays on one.
inline int64_t rows_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

void check_rows(const at::Tensor& t, const char* op, const char* name, int64_t width) {
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D [M, ", width, "], got ", t.dim(), "-D");
  TORCH_CHECK(t.size(1) == width, op, ": ", name, " must have ", width, " columns, got ", t.size(1));
  TORCH_CHECK(t.stride(1) == 1, op, ": ", name, "'s last dim must be contiguous");
}

void check_norm(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(weight.dim() == 1 && weight.is_contiguous(), op, ": weight must be a contiguous 1-D [H]");
  check_rows(x, op, "x", weight.size(0));
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), op, ": weight must have x's dtype ",
              x.scalar_type(), ", got ", weight.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> norm_impl(const at::Tensor& x, const at::Tensor* residual,
                                             const at::Tensor& weight, double eps, const char* op) {
  check_norm(x, weight, op);
  const int64_t M = x.size(0), H = x.size(1);
  at::Tensor normed = at::empty({M, H}, x.options());
  at::Tensor summed = residual ? at::empty({M, H}, x.options()) : at::Tensor();
  if (residual) {
    check_rows(*residual, op, "residual", H);
    TORCH_CHECK(residual->scalar_type() == x.scalar_type(), op, ": residual must have x's dtype");
  }
  kernels::NormArgs a;
  a.x = x.data_ptr();
  a.x_stride = x.stride(0);
  a.residual = residual ? residual->data_ptr() : nullptr;
  a.r_stride = residual ? residual->stride(0) : 0;
  a.weight = weight.data_ptr();
  a.normed = normed.data_ptr();
  a.summed = residual ? summed.data_ptr() : nullptr;
  a.H = H;
  a.eps = static_cast<float>(eps);
  const kernels::Dtype dt = kernel_dtype(x.scalar_type(), op);
  const kernels::KernelTable& kt = active_kernels();
  at::parallel_for(0, M, rows_grain(H), [&](int64_t m0, int64_t m1) { kt.rms_norm_rows(dt, a, m0, m1); });
  return {normed, summed};
}

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return std::get<0>(norm_impl(x, nullptr, weight, eps, "rms_norm"));
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_cpu(const at::Tensor& x, const at::Tensor& residual,
                                                    const at::Tensor& weight, double eps) {
  return norm_impl(x, &residual, weight, eps, "add_rms_norm");
}

// qkv [M = B*T, (Hq + 2 Hkv) D]; cos/sin [M, D]; k_cache/v_cache [B, Hkv, S, D]
// (views of the model's cache). Writes rotated k and plain v into cache slots
// [start, start + T) and returns rotated q [M, Hq, D].
at::Tensor rotary_qkv_cpu(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                          int64_t n_q_heads, int64_t n_kv_heads, at::Tensor& k_cache, at::Tensor& v_cache,
                          int64_t start) {
  const char* op = "rotary_qkv";
  TORCH_CHECK(k_cache.dim() == 4, op, ": k_cache must be 4-D [B, Hkv, S, D], got ", k_cache.dim(), "-D");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), op, ": v_cache must have k_cache's shape");
  const int64_t B = k_cache.size(0), S = k_cache.size(2), D = k_cache.size(3);
  TORCH_CHECK(k_cache.size(1) == n_kv_heads, op, ": k_cache has ", k_cache.size(1), " heads, n_kv_heads is ",
              n_kv_heads);
  TORCH_CHECK(n_q_heads > 0 && n_kv_heads > 0 && D % 2 == 0, op, ": bad head counts or odd head dim");
  check_rows(qkv, op, "qkv", (n_q_heads + 2 * n_kv_heads) * D);
  const int64_t M = qkv.size(0);
  TORCH_CHECK(M % B == 0, op, ": qkv has ", M, " rows, not a multiple of the cache batch ", B);
  const int64_t T = M / B;
  TORCH_CHECK(start >= 0 && start + T <= S, op, ": slots [", start, ", ", start + T, ") exceed the cache (",
              S, ")");
  check_rows(cos, op, "cos", D);
  check_rows(sin, op, "sin", D);
  TORCH_CHECK(cos.size(0) == M && sin.size(0) == M, op, ": cos/sin must have one row per qkv row");
  TORCH_CHECK(k_cache.stride(3) == 1 && v_cache.stride(3) == 1, op, ": cache last dim must be contiguous");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&cos, &sin, &k_cache, &v_cache})
    TORCH_CHECK(t->scalar_type() == qkv.scalar_type(), op, ": all tensors must have qkv's dtype ",
                qkv.scalar_type());
  at::Tensor q = at::empty({M, n_q_heads, D}, qkv.options());
  kernels::RotaryArgs a;
  a.qkv = qkv.data_ptr();
  a.qkv_stride = qkv.stride(0);
  a.cos = cos.data_ptr();
  a.cos_stride = cos.stride(0);
  a.sin = sin.data_ptr();
  a.sin_stride = sin.stride(0);
  a.q_out = q.data_ptr();
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  a.kb = k_cache.stride(0), a.kh = k_cache.stride(1), a.kt = k_cache.stride(2);
  a.vb = v_cache.stride(0), a.vh = v_cache.stride(1), a.vt = v_cache.stride(2);
  a.Hq = n_q_heads, a.Hkv = n_kv_heads, a.D = D, a.T = T, a.start = start;
  const kernels::Dtype dt = kernel_dtype(qkv.scalar_type(), op);
  const kernels::KernelTable& kt = active_kernels();
  at::parallel_for(0, M, rows_grain(qkv.size(1)), [&](int64_t m0, int64_t m1) { kt.rotary_rows(dt, a, m0, m1); });
  return q;
}

at::Tensor silu_mul_cpu(const at::Tensor& gate_up) {
  const char* op = "silu_mul";
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0, op, ": gate_up must be 2-D [M, 2I]");
  TORCH_CHECK(gate_up.stride(1) == 1, op, ": gate_up's last dim must be contiguous");
  const int64_t M = gate_up.size(0), I = gate_up.size(1) / 2;
  at::Tensor out = at::empty({M, I}, gate_up.options());
  if (M == 0 || I == 0) return out;
  kernels::SiluArgs a;
  a.in = gate_up.data_ptr();
  a.stride = gate_up.stride(0);
  a.I = I;
  a.out = out.data_ptr();
  const kernels::Dtype dt = kernel_dtype(gate_up.scalar_type(), op);
  const kernels::KernelTable& kt = active_kernels();
  // Wide rows (I = 1536): split a row's columns too? No: rows are independent
  // and T >= 2 already gives every thread work; one row is ~2 us.
  at::parallel_for(0, M, rows_grain(2 * I), [&](int64_t m0, int64_t m1) { kt.silu_mul_rows(dt, a, m0, m1); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(entmtp, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("add_rms_norm", &add_rms_norm_cpu);
  m.impl("rotary_qkv", &rotary_qkv_cpu);
  m.impl("silu_mul", &silu_mul_cpu);
}

}  // namespace entmtp
