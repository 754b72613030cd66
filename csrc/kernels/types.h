// 16-bit float storage tags shared by every CPU code path. Plain structs, no
// functions: the per-ISA translation units (csrc/isa/*.cpp) and the generic
// launchers must agree on these types, while every *function* that operates on
// them lives in an ISA-specific namespace (see simd.h).
#pragma once

#include <cstdint>

namespace entmtp {
namespace kernels {

// The CPU launchers map at::kBFloat16 / at::kHalf onto these so kernels stay
// free of torch types.
struct bf16_t {
  uint16_t bits;
};
struct fp16_t {
  uint16_t bits;
};

}  // namespace kernels
}  // namespace entmtp
