// CPU launcher of token_entropy: rows in parallel and, when there are fewer
// rows than needed to busy every thread (N = 1 decode), vocabulary chunks of a
// row in parallel too, merged in index order. Kernel: kernels/token_entropy.h, through the active ISA path.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/dispatch.h"
#include "cpu/isa_select.h"
#include "kernels/entropy_state.h"

namespace entmtp {
namespace {

constexpr int64_t kMinChunk = 8192;  // vocab entries below which a split does not pay

using EntropyResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

EntropyResult token_entropy_cpu(const at::Tensor& logits, int64_t k) {
  check_token_entropy(logits, k);
  const int64_t N = logits.size(0), V = logits.size(1);
  const auto f32 = logits.options().dtype(at::kFloat);
  const auto i64 = logits.options().dtype(at::kLong);
  at::Tensor entropy = at::empty({N}, f32), argmax = at::empty({N}, i64), max_prob = at::empty({N}, f32);
  at::Tensor topk_ids = at::empty({N, k}, i64), topk_probs = at::empty({N, k}, f32);
  if (N == 0) return {entropy, argmax, max_prob, topk_ids, topk_probs};

  // Chunks per row: enough (row, chunk) items for ~4 per thread.
  const int64_t threads = at::get_num_threads();
  const int64_t want = (4 * threads + N - 1) / N;
  const int64_t chunks = std::max<int64_t>(1, std::min(want, V / kMinChunk));
  // Chunks start on block boundaries; the last ones may come out empty.
  const int64_t block = kernels::kVocabBlock;
  const int64_t chunk_len = ((V + chunks - 1) / chunks + block - 1) / block * block;
  std::vector<kernels::EntropyState> states(N * chunks);
  const int kk = static_cast<int>(k);

  const kernels::Dtype dt = kernel_dtype(logits.scalar_type(), "token_entropy");
  const kernels::KernelTable& kt = active_kernels();
  const char* x = static_cast<const char*>(logits.data_ptr());
  const int64_t row_bytes = logits.stride(0) * logits.element_size();
  at::parallel_for(0, N * chunks, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> block(kernels::kVocabBlock);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t row = i / chunks, c = i % chunks;
      const int64_t begin = std::min(V, c * chunk_len), end = std::min(V, begin + chunk_len);
      kt.entropy_scan(dt, x + row * row_bytes, begin, end, kk, block.data(), states[i]);
    }
  });

  float* ent = entropy.data_ptr<float>();
  float* mp = max_prob.data_ptr<float>();
  int64_t* am = argmax.data_ptr<int64_t>();
  float* tp = topk_probs.data_ptr<float>();
  int64_t* ti = topk_ids.data_ptr<int64_t>();
  at::parallel_for(0, N, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      kernels::EntropyState st = states[row * chunks];
      for (int64_t c = 1; c < chunks; ++c) kernels::merge_entropy_states(st, states[row * chunks + c], kk);
      const kernels::EntropyOut o = kernels::finish_entropy(st, kk, tp + row * k, ti + row * k);
      ent[row] = o.entropy;
      mp[row] = o.max_prob;
      am[row] = o.argmax;
    }
  });
  return {entropy, argmax, max_prob, topk_ids, topk_probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(entmtp, CPU, m) { m.impl("token_entropy", &token_entropy_cpu); }

}  // namespace entmtp
