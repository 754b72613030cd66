// Kernels compiled for the avx512bf16 path (see kernels/isa.h, isa/prelude.h).
#include "isa/prelude.h"

#ifdef ENTMTP_X86
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,avx2,fma,f16c,bmi,bmi2,popcnt")
#define ENTMTP_ISA_NS avx512bf16
#define ENTMTP_ISA_LEVEL 3
#include "isa/table_impl.h"
#else
namespace entmtp {
namespace kernels {
const KernelTable* kernel_table_avx512bf16() { return nullptr; }  // not an x86-64 build
}  // namespace kernels
}  // namespace entmtp
#endif
