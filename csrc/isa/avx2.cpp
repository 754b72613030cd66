// Kernels compiled for the avx2 path (see kernels/isa.h, isa/prelude.h).
#include "isa/prelude.h"

#ifdef ENTMTP_X86
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
#define ENTMTP_ISA_NS avx2
#define ENTMTP_ISA_LEVEL 1
#include "isa/table_impl.h"
#else
namespace entmtp {
namespace kernels {
const KernelTable* kernel_table_avx2() { return nullptr; }  // not an x86-64 build
}  // namespace kernels
}  // namespace entmtp
#endif
