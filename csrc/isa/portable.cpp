// Kernels compiled for the portable path (see kernels/isa.h, isa/prelude.h).
#include "isa/prelude.h"

// No target pragma: the baseline of the build (x86-64 SSE2, or any other CPU).
#define ENTMTP_ISA_NS portable
#define ENTMTP_ISA_LEVEL 0
#include "isa/table_impl.h"
