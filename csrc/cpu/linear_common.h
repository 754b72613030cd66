// What the CPU linear launchers (linear_bf16w_cpu.cpp, linear_quant_cpu.cpp)
// share: the packed-activation buffer's alignment and the prefill row slices.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace entmtp {

// The first 64-byte aligned byte of buf (allocate 64 bytes more than needed).
inline void* align64(std::vector<char>& buf) {
  return buf.data() + (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64;
}

// Long inputs (prefill) go in slices of rows (multiples of 16, the AMX block)
// that stay in L2 (256 KB of fp32) while the weights pass; each slice reads the
// weights again.
inline int64_t row_slice(int64_t K) { return std::max<int64_t>(16, (256 * 1024 / 4) / K) / 16 * 16; }

}  // namespace entmtp
