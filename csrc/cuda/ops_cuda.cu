// CUDA launchers of the entmtp ops: the same boundary checks as the CPU
// (checks.h), then kernels from csrc/kernels/*.cuh on the current stream.
// Outputs and scratch come from at::empty (the caching allocator); there is no
// host sync anywhere, so the ops can be captured in CUDA graphs.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "checks.h"
#include "launch_args.h"
#include "kernels/token_entropy.cuh"
#include "kernels/tree_attention.cuh"
#include "kernels/tree_ops.cuh"

namespace entmtp {
namespace {

namespace ck = cuda_kernels;

template <typename Fn>
void dispatch_cuda_type(c10::ScalarType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case c10::ScalarType::Float: fn(float{}); break;
    case c10::ScalarType::BFloat16: fn(__nv_bfloat16{}); break;
    case c10::ScalarType::Half: fn(__half{}); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", dt);
  }
}

int sm_count(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return std::max(n, 1);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- tree_attention ---------------------------------------------------------

template <typename T, int DPL>
void launch_attention(const kernels::AttnArgs<T>& a, const at::Tensor& q, cudaStream_t stream) {
  const int64_t G = a.Hq / a.Hkv, rows = a.T * G;
  const int64_t tiles = ceil_div(rows, ck::kAttnTileRows), heads = a.B * a.Hkv;
  TORCH_CHECK(heads < 65536, "tree_attention: B * Hkv must be < 65536, got ", heads);
  // Split the keys when the tiles alone cannot fill ~2 waves of SMs.
  const int64_t blocks = tiles * heads, target = 2 * sm_count(q.get_device());
  int64_t splits = blocks >= target ? 1 : std::min(ceil_div(target, blocks), ceil_div(a.Lk, 256));
  splits = std::max<int64_t>(splits, 1);
  const int64_t per_split = ceil_div(ceil_div(a.Lk, splits), ck::kAttnKeys) * ck::kAttnKeys;
  splits = ceil_div(a.Lk, per_split);
  at::Tensor partial;
  if (splits > 1) partial = at::empty({splits * heads * rows * (32 * DPL + 2)}, q.options().dtype(at::kFloat));
  float* part = splits > 1 ? partial.data_ptr<float>() : nullptr;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(heads), static_cast<unsigned>(splits));
  ck::tree_attention_kernel<T, DPL><<<grid, ck::kAttnWarps * 32, 0, stream>>>(a, G, per_split, part);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (splits == 1) return;
  const dim3 cgrid(static_cast<unsigned>(rows), static_cast<unsigned>(heads));
  ck::attention_combine_kernel<T, DPL><<<cgrid, 32, 0, stream>>>(a, G, splits, part);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor tree_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const c10::optional<at::Tensor>& tree_bits, double scale) {
  const AttnShape s = check_tree_attention(q, k, v, tree_bits);
  TORCH_CHECK(s.D % 32 == 0 && s.D <= 128, "tree_attention: the CUDA kernel needs head dim D in {32, 64, 96, 128}, got ",
              s.D);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor bits;
  if (tree_bits.has_value()) bits = tree_bits->contiguous();
  at::Tensor out = at::empty({s.B, s.T, s.Hq, s.D}, q.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_cuda_type(q.scalar_type(), "tree_attention", [&](auto tag) {
    using T = decltype(tag);
    const auto a = pack_attention<T>(q, k, v, tree_bits.has_value() ? &bits : nullptr, out, s, scale);
    switch (s.D / 32) {
      case 1: launch_attention<T, 1>(a, q, stream); break;
      case 2: launch_attention<T, 2>(a, q, stream); break;
      case 3: launch_attention<T, 3>(a, q, stream); break;
      default: launch_attention<T, 4>(a, q, stream); break;
    }
  });
  return out;
}

// ---- token_entropy ----------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_entropy_cuda(
    const at::Tensor& logits, int64_t k) {
  check_token_entropy(logits, k);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t N = logits.size(0), V = logits.size(1);
  const auto f32 = logits.options().dtype(at::kFloat), i64 = logits.options().dtype(at::kLong);
  at::Tensor entropy = at::empty({N}, f32), argmax = at::empty({N}, i64), max_prob = at::empty({N}, f32);
  at::Tensor topk_ids = at::empty({N, k}, i64), topk_probs = at::empty({N, k}, f32);
  if (N == 0) return {entropy, argmax, max_prob, topk_ids, topk_probs};
  TORCH_CHECK(N < 65536, "token_entropy: the CUDA kernel takes N < 65536 rows, got ", N);
  // Chunks per row: enough blocks for ~2 per SM, at most 32 (one warp merges them).
  const int64_t want = ceil_div(2 * sm_count(logits.get_device()), N);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>({want, 32, ceil_div(V, 4096)}));
  const int64_t chunk_len = ceil_div(V, chunks);
  at::Tensor st = at::empty({N * chunks, 4}, f32), arg = at::empty({N * chunks}, i64);
  at::Tensor topv = at::empty({N * chunks, ck::kTopK}, f32), topi = at::empty({N * chunks, ck::kTopK}, i64);
  const ck::EntropyPartials parts{st.data_ptr<float>(), arg.data_ptr<int64_t>(), topv.data_ptr<float>(),
                                  topi.data_ptr<int64_t>()};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int kk = static_cast<int>(k);
  dispatch_cuda_type(logits.scalar_type(), "token_entropy", [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(N));
    ck::entropy_partial_kernel<T><<<grid, ck::kEntThreads, 0, stream>>>(
        static_cast<const T*>(logits.data_ptr()), logits.stride(0), V, chunk_len, kk, parts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  ck::entropy_finish_kernel<<<static_cast<unsigned>(N), 32, 0, stream>>>(
      parts, chunks, kk, entropy.data_ptr<float>(), argmax.data_ptr<int64_t>(), max_prob.data_ptr<float>(),
      topk_ids.data_ptr<int64_t>(), topk_probs.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {entropy, argmax, max_prob, topk_ids, topk_probs};
}

// ---- tree_accept and kv_commit ----------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_accept_cuda(
    const at::Tensor& node_tokens, const at::Tensor& parents, const at::Tensor& target_ids,
    int64_t max_depth, const c10::optional<at::Tensor>& draft_probs,
    const c10::optional<at::Tensor>& entropy, double epsilon, double alpha) {
  check_tree_accept(node_tokens, parents, target_ids, max_depth, draft_probs, entropy);
  const c10::cuda::CUDAGuard guard(node_tokens.device());
  const AcceptInputs in = pack_accept(node_tokens, parents, target_ids, draft_probs, entropy, epsilon, alpha,
                                      max_depth);
  const kernels::AcceptArgs& a = in.args;
  at::Tensor path = at::empty({max_depth + 1}, in.tokens.options());
  at::Tensor accept_len = at::empty({}, in.tokens.options()), bonus = at::empty({}, in.tokens.options());
  ck::tree_accept_kernel<<<1, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      a, path.data_ptr<int64_t>(), accept_len.data_ptr<int64_t>(), bonus.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {path, accept_len, bonus};
}

template <typename Word>
void launch_kv_commit(const kernels::KvCommitArgs& a, cudaStream_t stream) {
  const int64_t threads = a.groups() * (a.row_bytes / static_cast<int64_t>(sizeof(Word)));
  const unsigned blocks = static_cast<unsigned>(ceil_div(threads, 256));
  ck::kv_commit_kernel<Word><<<blocks, 256, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void kv_commit_cuda(const at::Tensor& kv, const at::Tensor& src_slots, int64_t dst_start) {
  check_kv_commit(kv, src_slots, dst_start);
  const c10::cuda::CUDAGuard guard(kv.device());
  TORCH_CHECK(src_slots.is_contiguous(), "kv_commit: src_slots must be contiguous on CUDA");
  const kernels::KvCommitArgs a = pack_kv_commit(kv, src_slots, dst_start);
  if (a.n == 0 || a.groups() == 0 || a.row_bytes == 0) return;
  // Widest word that divides every row start and row length.
  int64_t align = reinterpret_cast<uintptr_t>(a.kv) | a.row_bytes;
  for (int d = 0; d < 5; ++d) align |= a.strides[d];
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (align % 16 == 0) launch_kv_commit<uint4>(a, stream);
  else if (align % 8 == 0) launch_kv_commit<uint2>(a, stream);
  else if (align % 4 == 0) launch_kv_commit<uint32_t>(a, stream);
  else if (align % 2 == 0) launch_kv_commit<uint16_t>(a, stream);
  else launch_kv_commit<unsigned char>(a, stream);
}

}  // namespace

TORCH_LIBRARY_IMPL(entmtp, CUDA, m) {
  m.impl("tree_attention", &tree_attention_cuda);
  m.impl("token_entropy", &token_entropy_cuda);
  m.impl("tree_accept", &tree_accept_cuda);
  m.impl("kv_commit", &kv_commit_cuda);
}

}  // namespace entmtp
