// CPU launcher of decoder_layers: the whole stack of decoder layers in one op
// call, each layer the same sequence of entmtp ops that LlamaModel.forward_embeds
// runs from Python (so the result is bit for bit the same), called here through
// the dispatcher.
//
// Why: a decode step of the default model is 30 layers x 13 small op calls. From
// Python each torch.ops.entmtp call costs 2-4 us before any work (argument
// boxing; measured on a 2-core Zen4: add_rms_norm of one 576-wide row 4.0 us,
// silu_mul 3.6, rotary_qkv 4.0, a cache select + slice 2.8), about 1.2 ms a step
// against 5.5 ms for the whole Q4_1 step. From C++ a typed dispatcher call costs
// a fraction of that. The model takes this path only where every op is the one
// Python would pick (our GEMM and our attention, see entmtp/model/llama.py).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace entmtp {
namespace {

using OptTensor = std::optional<at::Tensor>;

// Typed handles of the ops one layer runs, looked up once.
struct LayerOpHandles {
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&)> linear_bf16w;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, const OptTensor&)> linear_quant;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, double)> rms_norm;
  c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, double)>
      add_rms_norm;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                      at::Tensor&, at::Tensor&, int64_t)>
      rotary_qkv;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&)> silu_mul;
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                                      double)>
      tree_attention;

  static const LayerOpHandles& get() {
    static const LayerOpHandles h = [] {
      auto& d = c10::Dispatcher::singleton();
      return LayerOpHandles{
          d.findSchemaOrThrow("entmtp::linear_bf16w", "").typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                                             const OptTensor&)>(),
          d.findSchemaOrThrow("entmtp::linear_quant", "")
              .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, const OptTensor&)>(),
          d.findSchemaOrThrow("entmtp::rms_norm", "").typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>(),
          d.findSchemaOrThrow("entmtp::add_rms_norm", "")
              .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        double)>(),
          d.findSchemaOrThrow("entmtp::rotary_qkv", "")
              .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                at::Tensor&, at::Tensor&, int64_t)>(),
          d.findSchemaOrThrow("entmtp::silu_mul", "").typed<at::Tensor(const at::Tensor&)>(),
          d.findSchemaOrThrow("entmtp::tree_attention", "")
              .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                                double)>(),
      };
    }();
    return h;
  }
};

constexpr int64_t kPerLayer = 7;  // input_norm, qkv, qkv_bias, o, post_norm, gate_up, down
constexpr int64_t kMatsPerLayer = 4;  // qkv, o, gate_up, down: one qtype each

// x [M, K] @ w.T (+ bias): qtype -1 means float weights (our bf16-weight GEMM),
// 0 / 1 GGUF blocks (Q4_1 / Q8_0), as entmtp.model.llama.linear picks them.
at::Tensor layer_linear(const LayerOpHandles& ops, const at::Tensor& x, const at::Tensor& w, int64_t qtype,
                        const OptTensor& bias) {
  if (qtype < 0) return ops.linear_bf16w.call(x, w, bias);
  return ops.linear_quant.call(x, w, qtype, bias);
}

// x: residual stream [B T, H] (the layers' input vectors); weights: kPerLayer
// tensors per layer (qkv_bias numel 0: none); qtypes: kMatsPerLayer per layer;
// cos, sin [B T, D]; kv [n_layers, 2, B, Hkv, S, D], written at slots
// [cache_len, cache_len + T). Returns the hidden states after the final norm [B T, H].
at::Tensor decoder_layers_cpu(const at::Tensor& inputs, at::TensorList weights, at::IntArrayRef qtypes,
                              const at::Tensor& cos, const at::Tensor& sin, at::Tensor& kv, int64_t cache_len,
                              int64_t batch, const OptTensor& tree_bits, int64_t n_q_heads, int64_t n_kv_heads,
                              double eps, double scale, const at::Tensor& final_norm) {
  const int64_t n_layers = static_cast<int64_t>(weights.size()) / kPerLayer;
  TORCH_CHECK(n_layers > 0 && static_cast<int64_t>(weights.size()) == n_layers * kPerLayer,
              "decoder_layers: weights must hold ", kPerLayer, " tensors per layer, got ", weights.size());
  TORCH_CHECK(static_cast<int64_t>(qtypes.size()) == n_layers * kMatsPerLayer, "decoder_layers: qtypes must hold ",
              kMatsPerLayer, " entries per layer, got ", qtypes.size());
  TORCH_CHECK(kv.dim() == 6 && kv.size(0) == n_layers, "decoder_layers: kv must be [n_layers=", n_layers,
              ", 2, B, Hkv, S, D], got ", kv.sizes());
  TORCH_CHECK(inputs.dim() == 2 && inputs.size(0) % batch == 0, "decoder_layers: inputs must be [B T, H]");
  const auto& ops = LayerOpHandles::get();
  const int64_t rows = inputs.size(0), n_new = rows / batch, head_dim = kv.size(5);
  const int64_t end = cache_len + n_new;
  TORCH_CHECK(end <= kv.size(4), "decoder_layers: ", end, " tokens exceed the cache capacity ", kv.size(4));

  at::Tensor x = inputs;
  at::Tensor h = ops.rms_norm.call(x, weights[0], eps);
  for (int64_t i = 0; i < n_layers; ++i) {
    const at::Tensor* w = weights.data() + i * kPerLayer;
    const int64_t* q = qtypes.data() + i * kMatsPerLayer;
    const OptTensor qkv_bias = w[2].numel() > 0 ? OptTensor(w[2]) : std::nullopt;
    at::Tensor k_cache = kv.select(0, i).select(0, 0), v_cache = kv.select(0, i).select(0, 1);
    const at::Tensor qkv = layer_linear(ops, h, w[1], q[0], qkv_bias);  // [B T, (Hq + 2 Hkv) D]
    const at::Tensor rq = ops.rotary_qkv.call(qkv, cos, sin, n_q_heads, n_kv_heads, k_cache, v_cache, cache_len);
    const at::Tensor attn = ops.tree_attention.call(rq.view({batch, n_new, n_q_heads, head_dim}),
                                                    k_cache.slice(2, 0, end), v_cache.slice(2, 0, end), tree_bits,
                                                    scale);  // [B, T, Hq, D]
    std::tie(h, x) = ops.add_rms_norm.call(
        layer_linear(ops, attn.view({rows, n_q_heads * head_dim}), w[3], q[1], std::nullopt), x, w[4], eps);
    const at::Tensor mlp =
        layer_linear(ops, ops.silu_mul.call(layer_linear(ops, h, w[5], q[2], std::nullopt)), w[6], q[3],
                     std::nullopt);
    // The next layer's input norm (or the final norm) fused with this residual add.
    const at::Tensor& next_norm = i + 1 < n_layers ? weights[(i + 1) * kPerLayer] : final_norm;
    std::tie(h, x) = ops.add_rms_norm.call(mlp, x, next_norm, eps);
  }
  return h;
}

}  // namespace

TORCH_LIBRARY_IMPL(entmtp, CPU, m) { m.impl("decoder_layers", &decoder_layers_cpu); }

}  // namespace entmtp
