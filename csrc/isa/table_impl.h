// Body of every per-ISA translation unit: instantiates the torch-free kernels
// for this ISA and exports them as entmtp::kernels::<ENTMTP_ISA_NS>::kernel_table().
// Included after the unit's target pragma, with ENTMTP_ISA_NS and
// ENTMTP_ISA_LEVEL (0 portable .. 4 amx, see kernels/isa.h) defined.
#include "kernels/fused_layer.h"
#include "kernels/linear_bf16w.h"
#include "kernels/linear_quant.h"
#include "kernels/simd.h"
#include "kernels/token_entropy.h"
#include "kernels/tree_attention.h"
#if ENTMTP_ISA_LEVEL >= 3
#include "kernels/linear_q8.h"
#elif ENTMTP_ISA_LEVEL >= 1
#include "kernels/linear_q8_avx2.h"
#endif
#if ENTMTP_ISA_LEVEL >= 4
#include "kernels/linear_amx.h"
#endif

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {
namespace {

// Calls fn with a null pointer of the storage type of dt.
template <typename Fn>
void with_type(Dtype dt, Fn&& fn) {
  switch (dt) {
    case Dtype::kF32: fn(static_cast<float*>(nullptr)); break;
    case Dtype::kBF16: fn(static_cast<bf16_t*>(nullptr)); break;
    default: fn(static_cast<fp16_t*>(nullptr)); break;
  }
}
template <typename P>
using Elem = std::remove_pointer_t<P>;

// ---- linear ----------------------------------------------------------------
int64_t linear_pack_bytes(const LinearArgs& a) {
#if ENTMTP_ISA_LEVEL >= 4
  if (linear_uses_amx(a)) return amx_detail::vnni_bytes(a) + linear_simd_pack_bytes(a);
#endif
  return linear_simd_pack_bytes(a);
}
int64_t linear_n_block(const LinearArgs& a) {
#if ENTMTP_ISA_LEVEL >= 4
  if (linear_uses_amx(a)) return 64;
#endif
  (void)a;
  return 4;
}
void linear_pack(const LinearArgs& a, void* packed) {
#if ENTMTP_ISA_LEVEL >= 4
  if (linear_uses_amx(a)) {
    amx_pack(a, static_cast<uint16_t*>(packed), 0, a.M);
    packed = static_cast<char*>(packed) + amx_detail::vnni_bytes(a);
  }
#endif
  linear_simd_pack(a, packed, 0, a.M);
}
void linear_run(const LinearArgs& a, const void* packed, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
#if ENTMTP_ISA_LEVEL >= 4
  if (linear_uses_amx(a)) {
    const int64_t n_amx = std::min(n1, a.N / 16 * 16);  // whole 16-row blocks
    if (n0 < n_amx) amx_run(a, static_cast<const uint16_t*>(packed), m0, m1, n0, n_amx);
    if (n_amx < n1)
      linear_simd_run(a, static_cast<const char*>(packed) + amx_detail::vnni_bytes(a), m0, m1,
                      std::max(n0, n_amx), n1);
    return;
  }
#endif
  linear_simd_run(a, packed, m0, m1, n0, n1);
}

// ---- quantized linear (kernels/linear_quant.h) -------------------------------
// Up to this many bf16 rows the int8 kernel runs (kernels/linear_q8.h with VNNI,
// linear_q8_avx2.h without): no dequantization. Measured on a 2-core Emerald
// Rapids (3072 x 576 Q4_1, amx path): 4 rows cost 115 us on it, 5 rows 170 us on
// it and on the dequantizing path alike. Without VNNI the dequantizing path has no
// fast unpacking (plain loops, then bf16 widened again for the FMA): on the avx2
// path forced on the same CPU the int8 kernel cost 0.1x of it at 1 row, 0.4x at
// 8, 0.65x at 32 and about the same at 64, hence up to 32 rows there.
// VNNI without AMX (avx512bf16, measured on a 2-core Zen4: 30 layers of the
// default model's Q4_1 projections, alternating builds, 3 rounds): int8 /
// dequantizing 9.9-12.1 / 15.9-19.5 ms at 5 rows, 14.8-17.7 / 17.9-20.0 at 8,
// 20.6-25.9 / 15.5-18.3 at 12: the dequantized rows have no AMX tiles there,
// hence up to 8 rows.
#ifndef ENTMTP_QUANT_INT8_MAX_ROWS
#define ENTMTP_QUANT_INT8_MAX_ROWS 4
#endif
#ifndef ENTMTP_QUANT_INT8_MAX_ROWS_AVX512BF16
#define ENTMTP_QUANT_INT8_MAX_ROWS_AVX512BF16 8
#endif
#ifndef ENTMTP_QUANT_INT8_MAX_ROWS_AVX2
#define ENTMTP_QUANT_INT8_MAX_ROWS_AVX2 32
#endif
#if ENTMTP_ISA_LEVEL >= 4
constexpr int64_t kInt8MaxRows = ENTMTP_QUANT_INT8_MAX_ROWS;
#elif ENTMTP_ISA_LEVEL == 3
constexpr int64_t kInt8MaxRows = ENTMTP_QUANT_INT8_MAX_ROWS_AVX512BF16;
#elif ENTMTP_ISA_LEVEL >= 1
constexpr int64_t kInt8MaxRows = ENTMTP_QUANT_INT8_MAX_ROWS_AVX2;
#else
constexpr int64_t kInt8MaxRows = 0;
#endif
bool qlinear_uses_int8(const QuantLinearArgs& a) {
#if ENTMTP_ISA_LEVEL >= 1
  return a.x_bf16 && a.M <= kInt8MaxRows && a.K / 32 <= q8_detail::kMaxBlocks;
#else
  (void)a;
  return false;
#endif
}
// Rows per dequantized group: the AMX kernel's 64-row groups, else 16 (a bf16
// group of 16 x 1536 is 48 KB: the L1 of the CPUs measured).
int64_t qlinear_n_block(const QuantLinearArgs& a) {
  if (a.x_bf16 && !qlinear_uses_int8(a)) return std::max<int64_t>(16, linear_n_block(quant_detail::as_linear(a)));
  return 16;
}
int64_t qlinear_scratch_bytes(const QuantLinearArgs& a) {
  return qlinear_uses_int8(a) ? 0 : qlinear_n_block(a) * a.K * (a.x_bf16 ? 2 : 4);
}
// bf16 x packs as linear_bf16w packs it (the int8 layout, or AMX VNNI tiles then
// the vdpbf16ps / widening layout); fp32 x is read in place.
int64_t qlinear_pack_bytes(const QuantLinearArgs& a) {
  if (!a.x_bf16) return 0;
#if ENTMTP_ISA_LEVEL >= 1
  if (qlinear_uses_int8(a)) return a.M * q8_detail::x_row_bytes(a.qtype, a.K);
#endif
  return linear_pack_bytes(quant_detail::as_linear(a));
}
void qlinear_pack(const QuantLinearArgs& a, void* packed) {
  if (!a.x_bf16) return;
#if ENTMTP_ISA_LEVEL >= 1
  if (qlinear_uses_int8(a)) {
    for (int64_t m = 0; m < a.M; ++m)
      q8_detail::pack_row(a.qtype, static_cast<const uint16_t*>(a.x) + m * a.x_stride, a.K,
                          static_cast<char*>(packed) + m * q8_detail::x_row_bytes(a.qtype, a.K));
    return;
  }
#endif
  linear_pack(quant_detail::as_linear(a), packed);
}
void qlinear_run(const QuantLinearArgs& a, const void* packed, void* scratch, int64_t m0, int64_t m1, int64_t n0,
                 int64_t n1) {
  using namespace quant_detail;
  const int64_t G = qlinear_n_block(a);
  LinearArgs la = as_linear(a);
#if ENTMTP_ISA_LEVEL >= 1
  if (qlinear_uses_int8(a)) {
    const char* xp = static_cast<const char*>(packed);
    auto t = [&](auto nr, auto mr, int64_t m, int64_t n) {
      constexpr int NR = decltype(nr)::value, MR = decltype(mr)::value;
      if (a.qtype == QType::kQ4_1) q8_detail::tile<QType::kQ4_1, NR, MR>(a, la, xp, m, n);
      else q8_detail::tile<QType::kQ8_0, NR, MR>(a, la, xp, m, n);
    };
#if ENTMTP_ISA_LEVEL >= 3
    linear_detail::blocks_loop<4, 4>(m0, m1, n0, n1, t);
#else  // 16 ymm registers
    if (m1 - m0 == 1) linear_detail::blocks_loop<4, 1>(m0, m1, n0, n1, t);
    else linear_detail::blocks_loop<2, 2>(m0, m1, n0, n1, t);
#endif
    return;
  }
#endif
  for (int64_t n = n0; n < n1; n += G) {
    const int64_t g = std::min(G, n1 - n);
    la.w_row0 = n, la.w_rows = g;
    if (a.x_bf16) {
      uint16_t* w = static_cast<uint16_t*>(scratch);
      dequant_rows(a, n, g, w);
      la.w = w;
      linear_run(la, packed, m0, m1, n, n + g);
      continue;
    }
    const float* w = static_cast<float*>(scratch);
    dequant_rows(a, n, g, static_cast<float*>(scratch));
    auto t = [&](auto nr, auto mr, int64_t m, int64_t nn) {
      tile_f32<decltype(nr)::value, decltype(mr)::value>(la, w, m, nn);
    };
    if (m1 - m0 == 1) linear_detail::blocks_loop<4, 1>(m0, m1, n, n + g, t);
    else linear_detail::blocks_loop<4, 4>(m0, m1, n, n + g, t);
  }
}

// ---- element-wise rows -----------------------------------------------------
void rms_norm_rows(Dtype dt, const NormArgs& a, int64_t m0, int64_t m1) {
  with_type(dt, [&](auto tag) {
    using T = Elem<decltype(tag)>;
    const T* x = static_cast<const T*>(a.x);
    const T* r = static_cast<const T*>(a.residual);
    T* normed = static_cast<T*>(a.normed);
    T* summed = static_cast<T*>(a.summed);
    for (int64_t m = m0; m < m1; ++m)
      rms_norm_row(x + m * a.x_stride, r ? r + m * a.r_stride : nullptr, static_cast<const T*>(a.weight), a.H,
                   a.eps, normed + m * a.H, summed ? summed + m * a.H : nullptr);
  });
}

void rotary_rows(Dtype dt, const RotaryArgs& a, int64_t m0, int64_t m1) {
  with_type(dt, [&](auto tag) {
    using T = Elem<decltype(tag)>;
    const T* in = static_cast<const T*>(a.qkv);
    const T* cp = static_cast<const T*>(a.cos);
    const T* sp = static_cast<const T*>(a.sin);
    T* qp = static_cast<T*>(a.q_out);
    T* kc = static_cast<T*>(a.k_cache);
    T* vc = static_cast<T*>(a.v_cache);
    const int64_t D = a.D;
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t b = m / a.T, slot = a.start + m % a.T;
      const T* row = in + m * a.qkv_stride;
      const T* c = cp + m * a.cos_stride;
      const T* s = sp + m * a.sin_stride;
      for (int64_t h = 0; h < a.Hq; ++h) rope_head(row + h * D, c, s, D, qp + (m * a.Hq + h) * D);
      for (int64_t h = 0; h < a.Hkv; ++h) {
        rope_head(row + (a.Hq + h) * D, c, s, D, kc + b * a.kb + h * a.kh + slot * a.kt);
        std::memcpy(vc + b * a.vb + h * a.vh + slot * a.vt, row + (a.Hq + a.Hkv + h) * D, D * sizeof(T));
      }
    }
  });
}

void silu_mul_rows(Dtype dt, const SiluArgs& a, int64_t m0, int64_t m1) {
  with_type(dt, [&](auto tag) {
    using T = Elem<decltype(tag)>;
    for (int64_t m = m0; m < m1; ++m)
      silu_mul_row(static_cast<const T*>(a.in) + m * a.stride, a.I, static_cast<T*>(a.out) + m * a.I);
  });
}

// ---- tree attention ----------------------------------------------------------
void attention_plan_fn(Dtype dt, const void* args, int64_t threads, AttnPlan* plan) {
  with_type(dt, [&](auto tag) {
    using T = Elem<decltype(tag)>;
    const AttnArgs<T>& a = *static_cast<const AttnArgs<T>*>(args);
    *plan = plan_attention(a, threads);
    plan->scratch_floats = attention_scratch_floats(a.D);
    plan->partial_floats = attention_partial_floats(*plan, a.B, a.Hkv, a.D);
  });
}

void attention_items(Dtype dt, const void* args, const AttnPlan& plan, int64_t i0, int64_t i1, float* scratch,
                     float* partial) {
  with_type(dt, [&](auto tag) {
    using T = Elem<decltype(tag)>;
    const AttnArgs<T>& a = *static_cast<const AttnArgs<T>*>(args);
    for (int64_t i = i0; i < i1; ++i) attention_run_item(a, plan, i, scratch, partial);
  });
}

void attention_combine_fn(Dtype dt, const void* args, const AttnPlan& plan, int64_t g0, int64_t g1,
                          const float* partial, float* tmp) {
  with_type(dt, [&](auto tag) {
    using T = Elem<decltype(tag)>;
    const AttnArgs<T>& a = *static_cast<const AttnArgs<T>*>(args);
    for (int64_t g = g0; g < g1; ++g) attention_combine(a, plan, g, partial, tmp);
  });
}

// ---- token entropy -----------------------------------------------------------
void entropy_scan_fn(Dtype dt, const void* row, int64_t begin, int64_t end, int k, float* block,
                     EntropyState& st) {
  with_type(dt, [&](auto tag) {
    using T = Elem<decltype(tag)>;
    entropy_scan(static_cast<const T*>(row), begin, end, k, block, st);
  });
}

}  // namespace

const KernelTable* kernel_table() {
  static const KernelTable table = {
      static_cast<Isa>(ENTMTP_ISA_LEVEL),
      &linear_pack_bytes, &linear_n_block, &linear_pack, &linear_run,
      &rms_norm_rows, &rotary_rows, &silu_mul_rows,
      &attention_plan_fn, &attention_items, &attention_combine_fn,
      &entropy_scan_fn,
      &qlinear_pack_bytes, &qlinear_n_block, &qlinear_scratch_bytes, &qlinear_pack, &qlinear_run,
      kInt8MaxRows,
  };
  return &table;
}

}  // namespace ENTMTP_ISA_NS

#define ENTMTP_CAT2(a, b) a##b
#define ENTMTP_CAT(a, b) ENTMTP_CAT2(a, b)
const KernelTable* ENTMTP_CAT(kernel_table_, ENTMTP_ISA_NS)() { return ENTMTP_ISA_NS::kernel_table(); }

}  // namespace kernels
}  // namespace entmtp
