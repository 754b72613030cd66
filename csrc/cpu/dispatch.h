// Maps a floating at::ScalarType onto the torch-free storage types of
// csrc/kernels (float, bf16_t, fp16_t): as a tag value for typed launcher
// code, or as the kernels::Dtype the per-ISA kernel tables take.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "kernels/isa.h"
#include "kernels/types.h"

namespace entmtp {

template <typename Fn>
void dispatch_storage_type(c10::ScalarType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case c10::ScalarType::Float: fn(float{}); break;
    case c10::ScalarType::BFloat16: fn(kernels::bf16_t{}); break;
    case c10::ScalarType::Half: fn(kernels::fp16_t{}); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", dt);
  }
}

inline kernels::Dtype kernel_dtype(c10::ScalarType dt, const char* op) {
  switch (dt) {
    case c10::ScalarType::Float: return kernels::Dtype::kF32;
    case c10::ScalarType::BFloat16: return kernels::Dtype::kBF16;
    case c10::ScalarType::Half: return kernels::Dtype::kF16;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", dt);
  }
}

}  // namespace entmtp
