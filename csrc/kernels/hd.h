// ENTMTP_HD marks small helpers shared by the CPU and CUDA kernels.
#pragma once

#ifdef __CUDACC__
#define ENTMTP_HD __host__ __device__
#else
#define ENTMTP_HD
#endif
