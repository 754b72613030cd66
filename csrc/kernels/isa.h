// Runtime ISA dispatch of the CPU kernels: the code paths, and the table of
// entry points each per-ISA translation unit (csrc/isa/*.cpp) fills in.
//
// Why a table: one build must run on any x86-64 CPU, yet the kernels want
// AVX-512-BF16 or AMX where present. Each csrc/isa/<path>.cpp compiles the same
// torch-free kernel headers under its own `#pragma GCC target(...)` into its
// own namespace and exports one KernelTable; csrc/cpu/isa_select.cpp picks the
// best table the CPU (and OS) supports at first use, or the one ENTMTP_ISA
// asks for. The launchers (csrc/cpu/*.cpp, generic x86-64 code with torch)
// check inputs, split work with at::parallel_for and call through the table.
//
// Everything in this header is ISA-neutral (plain structs and scalar code), so
// the per-ISA units include it *before* their target pragma; including it after
// would compile its inline functions for that ISA under shared names.
#pragma once

#include <cstdint>

#include "kernels/types.h"

#ifdef ENTMTP_ISA_NS
#error "kernels/isa.h must be included before the ISA target pragma (see csrc/isa/prelude.h)"
#endif

namespace entmtp {
namespace kernels {

// Ordered: every path may use what the ones before it use. avx512bf16 also
// requires AVX-512 VNNI (every CPU with AVX-512-BF16 has it), for linear_q8.h.
enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };
constexpr int kIsaCount = 5;
// ENTMTP_ISA values, indexed by Isa.
constexpr const char* kIsaNames[kIsaCount] = {"portable", "avx2", "avx512", "avx512bf16", "amx"};

enum class Dtype : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// y[m, n] = sum_k x[m, k] w[n, k] (+ bias[n]) for bf16 weights.
struct LinearArgs {
  const void* x;  // [M, K], row stride x_stride elements, last dim contiguous
  int64_t x_stride;
  bool x_bf16;        // else fp32
  const uint16_t* w;  // [N, K] bf16, contiguous
  const float* bias;  // [N] or null
  void* y;            // [M, N] contiguous
  bool y_bf16;        // else fp32
  int64_t M, K, N;
  // w holds weight rows [w_row0, w_row0 + w_rows) only: a block of rows
  // dequantized into scratch by the quantized linear (linear_quant.h).
  int64_t w_row0 = 0, w_rows = -1;  // -1: all N rows
};

// GGUF block formats of the quantized linear, 32 weights per block along K:
//   Q4_1 (20 bytes): fp16 d, fp16 m, 16 bytes of nibbles; weight j of the block
//        is d * q_j + m with q_j the low nibble of byte j (j < 16) or the high
//        nibble of byte j - 16.
//   Q8_0 (34 bytes): fp16 d, 32 int8 q_j; weight j is d * q_j.
enum class QType : int { kQ4_1 = 0, kQ8_0 = 1 };
constexpr int64_t kQBlock = 32;
inline int64_t qblock_bytes(QType t) { return t == QType::kQ4_1 ? 20 : 34; }

// y[m, n] = sum_k x[m, k] dequant(w)[n, k] (+ bias[n]).
struct QuantLinearArgs {
  const void* x;  // [M, K], row stride x_stride elements, last dim contiguous
  int64_t x_stride;
  bool x_bf16;        // else fp32
  const uint8_t* w;   // [N, K / 32 blocks], contiguous
  QType qtype;
  const float* bias;  // [N] or null
  void* y;            // [M, N] contiguous
  bool y_bf16;
  int64_t M, K, N;    // K % 32 == 0
};

// Row-wise RMSNorm, optionally fused with the residual add (residual/summed null: plain norm).
struct NormArgs {
  const void* x;
  int64_t x_stride;
  const void* residual;
  int64_t r_stride;
  const void* weight;  // [H]
  void* normed;        // [M, H] contiguous
  void* summed;        // [M, H] contiguous or null
  int64_t H;
  float eps;
};

// Rotary q/k of the fused qkv rows [M = B*T, (Hq + 2 Hkv) D] plus the cache write.
struct RotaryArgs {
  const void* qkv;
  int64_t qkv_stride;
  const void* cos;  // [M, D]
  int64_t cos_stride;
  const void* sin;  // [M, D]
  int64_t sin_stride;
  void* q_out;  // [M, Hq, D] contiguous
  void* k_cache;
  void* v_cache;  // [B, Hkv, S, D] element strides below
  int64_t kb, kh, kt, vb, vh, vt;
  int64_t Hq, Hkv, D, T, start;
};

// SiLU(gate) * up over rows of [gate (I) | up (I)].
struct SiluArgs {
  const void* in;
  int64_t stride;
  int64_t I;
  void* out;  // [M, I] contiguous
};

// How tree_attention's work is cut: items = B * Hkv * tiles * splits,
// item-major in that order; scratch/partial sizes in floats.
struct AttnPlan {
  int64_t G, rows, tile_rows, tiles, splits;
  int64_t scratch_floats;  // per worker
  int64_t partial_floats;  // shared, 0 without key splits
};

struct EntropyState;  // kernels/entropy_state.h

// Entry points of one code path. `args` of the attention entries points to a
// kernels::AttnArgs<Elem> whose Elem matches `dt` (float, bf16_t, fp16_t).
struct KernelTable {
  Isa isa;
  // linear: pack x once (linear_pack_bytes(a) bytes of scratch), then any
  // thread computes output rows [m0, m1) x features [n0, n1), n0 a multiple
  // of linear_n_block(a).
  int64_t (*linear_pack_bytes)(const LinearArgs& a);
  int64_t (*linear_n_block)(const LinearArgs& a);
  void (*linear_pack)(const LinearArgs& a, void* packed);
  void (*linear_run)(const LinearArgs& a, const void* packed, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
  // element-wise ops over rows [m0, m1)
  void (*rms_norm_rows)(Dtype dt, const NormArgs& a, int64_t m0, int64_t m1);
  void (*rotary_rows)(Dtype dt, const RotaryArgs& a, int64_t m0, int64_t m1);
  void (*silu_mul_rows)(Dtype dt, const SiluArgs& a, int64_t m0, int64_t m1);
  // tree attention: plan, run items [i0, i1) with one worker's scratch, merge key splits
  void (*attention_plan)(Dtype dt, const void* args, int64_t threads, AttnPlan* plan);
  void (*attention_items)(Dtype dt, const void* args, const AttnPlan& plan, int64_t i0, int64_t i1,
                          float* scratch, float* partial);
  void (*attention_combine)(Dtype dt, const void* args, const AttnPlan& plan, int64_t g0, int64_t g1,
                            const float* partial, float* tmp);
  // token entropy: scans row[begin, end) into st; block = kVocabBlock floats of scratch
  void (*entropy_scan)(Dtype dt, const void* row, int64_t begin, int64_t end, int k, float* block,
                       EntropyState& st);
  // quantized linear: pack x once, then any thread computes output rows
  // [m0, m1) x features [n0, n1) (n0 a multiple of qlinear_n_block) with
  // qlinear_scratch_bytes of its own scratch (64-byte aligned).
  int64_t (*qlinear_pack_bytes)(const QuantLinearArgs& a);
  int64_t (*qlinear_n_block)(const QuantLinearArgs& a);
  int64_t (*qlinear_scratch_bytes)(const QuantLinearArgs& a);
  void (*qlinear_pack)(const QuantLinearArgs& a, void* packed);
  void (*qlinear_run)(const QuantLinearArgs& a, const void* packed, void* scratch, int64_t m0, int64_t m1,
                      int64_t n0, int64_t n1);
  // bf16 x of at most this many rows takes the int8 kernel (0: this path has none).
  int64_t qlinear_int8_max_rows;
};

// One accessor per compiled path (csrc/isa/<path>.cpp); nullptr where the
// path was not compiled (a build for a CPU other than x86-64).
const KernelTable* kernel_table_portable();
const KernelTable* kernel_table_avx2();
const KernelTable* kernel_table_avx512();
const KernelTable* kernel_table_avx512bf16();
const KernelTable* kernel_table_amx();

}  // namespace kernels
}  // namespace entmtp
