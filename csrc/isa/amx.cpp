// Kernels compiled for the amx path (see kernels/isa.h, isa/prelude.h).
#include "isa/prelude.h"

#ifdef ENTMTP_X86
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,avx2,fma,f16c,bmi,bmi2,popcnt")
#define ENTMTP_ISA_NS amx
#define ENTMTP_ISA_LEVEL 4
#include "isa/table_impl.h"
#else
namespace entmtp {
namespace kernels {
const KernelTable* kernel_table_amx() { return nullptr; }  // not an x86-64 build
}  // namespace kernels
}  // namespace entmtp
#endif
