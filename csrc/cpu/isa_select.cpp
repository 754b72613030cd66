// Runtime choice of the CPU code path: cpuid for what the CPU implements,
// xgetbv for what the OS saves on context switches (AVX-512 state needs
// XCR0 bits 5-7, AMX tile data bits 17-18), and on Linux the per-process
// permission to use AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM), which
// the kernel grants only on request. Generic code: no target attributes here.
#include "cpu/isa_select.h"

#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace entmtp {
namespace {

using kernels::Isa;
using kernels::KernelTable;

const KernelTable* compiled_table(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return kernels::kernel_table_portable();
    case Isa::kAvx2: return kernels::kernel_table_avx2();
    case Isa::kAvx512: return kernels::kernel_table_avx512();
    case Isa::kAvx512Bf16: return kernels::kernel_table_avx512bf16();
    case Isa::kAmx: return kernels::kernel_table_amx();
  }
  return nullptr;
}

#if defined(__x86_64__)
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

bool request_amx_permission() {
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

// Highest path this CPU + OS can run (every lower one runs too).
Isa detect_best() {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (!__get_cpuid_count(1, 0, &a, &b, &c, &d)) return Isa::kPortable;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29), avx = c & (1u << 28);
  if (!osxsave || !avx) return Isa::kPortable;
  const uint64_t xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return Isa::kPortable;  // SSE + AVX state
  unsigned a7, b7, c7, d7;
  if (!__get_cpuid_count(7, 0, &a7, &b7, &c7, &d7)) return Isa::kPortable;
  const bool avx2 = b7 & (1u << 5), bmi1 = b7 & (1u << 3), bmi2 = b7 & (1u << 8);
  if (!(avx2 && fma && f16c && bmi1 && bmi2)) return Isa::kPortable;
  const bool avx512 = (b7 & (1u << 16)) && (b7 & (1u << 17)) && (b7 & (1u << 30)) && (b7 & (1u << 31));  // F DQ BW VL
  if (!avx512 || (xcr0 & 0xe0) != 0xe0) return Isa::kAvx2;  // opmask, ZMM_Hi256, Hi16_ZMM state
  unsigned a71 = 0, b71, c71, d71;
  __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71);
  if (!(a71 & (1u << 5)) || !(c7 & (1u << 11))) return Isa::kAvx512;  // AVX512_BF16, AVX512_VNNI
  const bool amx = (d7 & (1u << 22)) && (d7 & (1u << 24));  // AMX-BF16, AMX-TILE
  if (!amx || (xcr0 & 0x60000) != 0x60000 || !request_amx_permission()) return Isa::kAvx512Bf16;
  return Isa::kAmx;
#else
  return Isa::kPortable;
#endif
}

Isa best_runnable() {
  static const Isa best = [] {
    Isa isa = detect_best();
    while (isa != Isa::kPortable && compiled_table(isa) == nullptr) isa = static_cast<Isa>(static_cast<int>(isa) - 1);
    return isa;
  }();
  return best;
}

std::string available_list() {
  std::string s;
  for (int i = 0; i <= static_cast<int>(best_runnable()); ++i) s += std::string(i ? ", " : "") + kernels::kIsaNames[i];
  return s;
}

const KernelTable* choose() {
  const Isa best = best_runnable();
  const char* env = std::getenv("ENTMTP_ISA");
  const std::string want = env ? env : "";
  if (want.empty() || want == "auto") return compiled_table(best);
  for (int i = 0; i < kernels::kIsaCount; ++i) {
    if (want != kernels::kIsaNames[i]) continue;
    TORCH_CHECK(i <= static_cast<int>(best), "ENTMTP_ISA=", want, " asks for a code path this CPU cannot run; ",
                "available here: ", available_list());
    return compiled_table(static_cast<Isa>(i));
  }
  TORCH_CHECK(false, "ENTMTP_ISA=", want, " is not a code path; use one of: auto, portable, avx2, avx512, ",
              "avx512bf16, amx (available here: ", available_list(), ")");
}

}  // namespace

const KernelTable& active_kernels() {
  static const KernelTable* table = choose();  // a throwing choose() is retried on the next call
  return *table;
}

std::string cpu_isa_name() { return kernels::kIsaNames[static_cast<int>(active_kernels().isa)]; }

int64_t linear_quant_int8_rows() { return active_kernels().qlinear_int8_max_rows; }

std::vector<std::string> cpu_isa_available() {
  std::vector<std::string> out;
  for (int i = 0; i <= static_cast<int>(best_runnable()); ++i) out.emplace_back(kernels::kIsaNames[i]);
  return out;
}

}  // namespace entmtp
