// The CPU code path chosen at run time (kernels/isa.h): the launchers call
// their kernels through active_kernels().
#pragma once

#include <string>
#include <vector>

#include "kernels/isa.h"

namespace entmtp {

// The table of the best path this CPU and OS support, or of the lower path
// ENTMTP_ISA names (portable, avx2, avx512, avx512bf16, amx; unset, empty or
// "auto" = best). Chosen once, at first use. A name that is unknown or that
// this CPU cannot run raises an error (from every op, until the variable is
// fixed): a forced path must never silently run another one.
const kernels::KernelTable& active_kernels();

// Backs the ops cpu_isa() -> str and cpu_isa_available() -> str[]
// (registry.cpp): the active path's name, and every path this CPU can run,
// lowest first.
std::string cpu_isa_name();
std::vector<std::string> cpu_isa_available();
// Backs linear_quant_int8_rows() -> int: up to how many bf16 rows the active
// path's linear_quant takes its int8 kernel (0: none).
int64_t linear_quant_int8_rows();

}  // namespace entmtp
