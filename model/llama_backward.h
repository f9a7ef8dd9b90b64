// Backward pass of the Llama-family reference forward (model/llama_model.h) on the CPU, for
// the Fisher rank search of palu-compress (DESIGN.md §1, `fisher_uniform`): the gradient of
// one calibration sample's mean next-token cross-entropy with respect to every layer's
// k_proj and v_proj weight.
//
// The forward here repeats LlamaModel::forward for one sequence at positions 0..n−1 with no
// cache (same RMSNorm, rotate-half RoPE with the same float32 inv_freq, GQA, SwiGLU, Qwen2
// q/k/v biases, tied or untied head), keeping each layer's input; the
// backward then walks the layers top-down, rerunning each layer's forward first. Only the gradients on the path to W_k / W_v are
// formed (no dW for the other weights, no gradient into the embeddings).
//
// The pieces are public as LayerPass — one decoder layer's forward and backward with the
// layer's weights passed in — so that palu-compress can stream a model layer by layer
// (tools/compress/layerwise.h) instead of holding every layer's weights and activations.
//
// Memory (float32, n tokens, d hidden, F ffn width, V vocab, H heads of d_h, H_kv key/value
// heads, qw = H·d_h, kvw = H_kv·d_h):
//   LayerPass        4·n·(2d + qw + 2·kvw + 2F)      one layer's activations (input, residual
//                                                     after attention, RoPE'd q and k, v, gate, up)
//                  + 4·n·(2d + 2qw + 4kvw + 2F) + 4·2·128·n + 4·n·d_h
//                                                     scratch (normed input, a [n, d] buffer,
//                                                     attention output and dQ, dK/dV and their
//                                                     transposes, FFN gradients, one head's
//                                                     probabilities for 128 query rows, RoPE)
//   head_loss        4·(n−1)·V                        logits, then their gradient (freed on return)
//   kv_weight_gradients adds 4·n·d·L of layer inputs and 4·L·2·kvw·d of gradients (output).
// ref-mha (d 512, L 8, F 1024, V 8000, MHA 8×64) at n = 1024: LayerPass ≈ 46 MB, logits 33 MB,
// layer inputs 17 MB, gradients 17 MB. A 7B Llama-2 (d 4096, L 32, F 11008, V 32000) at
// n = 1024: LayerPass ≈ 0.4 GB, logits 0.13 GB, layer inputs 0.54 GB.
//
// Cost: about 3.4× the FLOPs of a forward pass with all logits (the forward runs twice — once
// to the head, once per layer again before its backward — and attention probabilities are
// recomputed in the backward rather than stored).
//
// Thread-safety: reentrant; the model is only read. Each call uses the OpenMP thread team
// (backends/cpu/gemm.h). Errors are returned as Status, never thrown.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backends/base/status.h"
#include "model/llama_model.h"

namespace palu::model {

// Per-layer gradients, float32, with the shapes (row-major, out × in) of the weights.
struct KvGradients {
  std::vector<std::vector<float>> dwk;  // [layers][H_kv·d_h · d]  dLoss/d k_proj
  std::vector<std::vector<float>> dwv;  // [layers][H_kv·d_h · d]  dLoss/d v_proj
};

// One decoder layer (weights passed in) over one sequence of n tokens at positions 0..n−1
// with no cache — the same arithmetic as LlamaModel::forward up to float rounding (the causal
// attention is computed in chunks of 128 query rows).
class LayerPass {
 public:
  // Allocates one layer's activations and the scratch for n tokens of `config`.
  // INVALID_ARGUMENT when n < 1; RESOURCE_EXHAUSTED when the memory cannot be had.
  static Result<std::unique_ptr<LayerPass>> create(const ModelConfig& config, int n);
  ~LayerPass();
  int tokens() const;

  // x [n, d]: the residual stream entering the layer, replaced by the one leaving it. Keeps
  // the activations backward() needs. attention_input (optional, [n, d]) receives
  // rms_norm(x_in)·attn_norm, the input of k_proj and v_proj (calibration statistics).
  void forward(const LayerWeights& L, float* x, float* attention_input = nullptr);

  // After forward() of the same weights: dx [n, d] enters as dLoss/d(layer output) and leaves
  // as dLoss/d(layer input) when need_dx (otherwise it is left partly updated); dwk and dwv
  // [kvw·d] are overwritten with dLoss/dW_k and dLoss/dW_v.
  void backward(const LayerWeights& L, float* dx, float* dwk, float* dwv, bool need_dx);

  // Final RMSNorm (final_norm [d]), the head (output_matrix [V, d]) and the mean next-token
  // cross-entropy of rows 0..n−2 against tokens[1..n−1]; dx [n, d] is overwritten with
  // dLoss/d x_final (the last row is zero). INVALID_ARGUMENT when n < 2 or a token id is
  // outside the vocabulary; RESOURCE_EXHAUSTED when the logits cannot be allocated.
  Result<double> head_loss(const float* final_norm, const float* output_matrix, const int32_t* tokens,
                           const float* x_final, float* dx);

 private:
  struct State;
  explicit LayerPass(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

// Forward (keeping each layer's input) and backward over one sequence of n tokens at
// positions 0..n−1 with no cache, for
//   loss = mean over t = 0..n−2 of −log softmax(logits_t)[tokens[t+1]].
// Returns the loss; resizes `grads` to the model and overwrites it with dLoss/dW_k and
// dLoss/dW_v of every layer. Fails with INVALID_ARGUMENT when n < 2, `tokens` or `grads` is
// null, or a token id lies outside the vocabulary; RESOURCE_EXHAUSTED when the activations
// cannot be allocated. `grads` is unspecified on failure.
Result<double> kv_weight_gradients(const LlamaModel& model, const int32_t* tokens, int n,
                                   KvGradients* grads);

}  // namespace palu::model
