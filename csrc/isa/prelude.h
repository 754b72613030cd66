// First include of every per-ISA translation unit (csrc/isa/<path>.cpp),
// before its `#pragma GCC target(...)`.
//
// Why: a target pragma applies to every function *defined* after it, and
// inline functions and template instantiations from headers are COMDAT: the
// linker keeps one copy for the whole library. A std:: helper or an
// ISA-neutral kernels/ helper compiled after an AVX-512 pragma could thus be
// the copy the generic path ends up calling, and crash with SIGILL on an AVX2
// CPU. So everything that is shared (std headers, intrinsics declarations,
// the ISA-neutral kernels/ headers) is included here, under the default
// target; what follows the pragma lives in the ISA's own namespace
// (ENTMTP_ISA_NS, see kernels/simd.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

// GCC 12's AVX-512 unpack intrinsics use _mm512_undefined_ps() and trip
// -Wuninitialized in every caller (a known false positive of the headers).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ENTMTP_X86 1
#endif

#include "kernels/attention_args.h"
#include "kernels/entropy_state.h"
#include "kernels/isa.h"
#include "kernels/types.h"
