// Arguments of tree_attention shared by the CPU and CUDA kernels (torch-free).
// Element strides; the last dim of q, k, v is contiguous.
#pragma once

#include <cstdint>

namespace entmtp {
namespace kernels {

template <typename Elem>
struct AttnArgs {
  const Elem* q;  // [B, T, Hq, D]
  int64_t q_sb, q_st, q_sh;
  const Elem* k;  // [B, Hkv, Lk, D]: Lk - T prefix keys, then the T new tokens
  int64_t k_sb, k_sh, k_sl;
  const Elem* v;  // like k
  int64_t v_sb, v_sh, v_sl;
  Elem* out;                  // [B, T, Hq, D] contiguous
  const uint64_t* tree_bits;  // [T, words] ancestor-or-self bits, or nullptr (causal)
  int64_t words;
  int64_t B, T, Hq, Hkv, Lk, D;
  float scale;
};

}  // namespace kernels
}  // namespace entmtp
