// Maps a floating at::ScalarType onto the torch-free storage types of
// csrc/kernels (float, bf16_t, fp16_t) and calls fn with a value of that type.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "kernels/simd.h"

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

}  // namespace entmtp
