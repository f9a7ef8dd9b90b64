// Backward pass of the Llama-family reference forward (model/llama_model.h) on the CPU, for
// the Fisher rank search of palu-compress (DESIGN.md §1, `fisher_uniform`): the gradient of
// one calibration sample's mean next-token cross-entropy with respect to every layer's
// k_proj and v_proj weight.
//
// The forward here repeats LlamaModel::forward for one sequence at positions 0..n−1 with no
// cache (same RMSNorm, rotate-half RoPE with the same float32 inv_freq, GQA, SwiGLU, Qwen2
// q/k/v biases, tied or untied head), keeping the activations the backward needs; the
// backward then walks the layers top-down. Only the gradients on the path to W_k / W_v are
// formed (no dW for the other weights, no gradient into the embeddings).
//
// Memory (float32, n tokens, L layers, d hidden, F ffn width, V vocab, H heads of d_h,
// H_kv key/value heads, qw = H·d_h, kvw = H_kv·d_h), all freed on return:
//   stored activations   4·n·L·(2d + qw + 2·kvw + 2F) bytes
//                        (layer input, residual after attention, RoPE'd q and k, v, gate, up)
//   logits / dlogits     4·(n−1)·V
//   scratch              4·n·(4d + 2qw + 4kvw + 2F + d_h) + 4·2·128·n
//                        (residual and its gradient, one layer's gradients, the RoPE table, and
//                        one head's probabilities and their gradient for 128 query rows at a time)
//   gradients (output)   4·L·2·kvw·d
// ref-mha (d 512, L 8, F 1024, V 8000, MHA 8×64) at n = 1024: 151 MB activations + 33 MB
// logits + 31 MB scratch + 17 MB gradients ≈ 232 MB. A 7B Llama-2 (d 4096, L 32, F 11008,
// V 32000) at n = 1024: ≈5.6 GB activations + 0.13 GB logits.
//
// Cost: about 2.4× the FLOPs of a forward pass with all logits (the forward is redone here;
// attention probabilities are recomputed in the backward rather than stored).
//
// Thread-safety: reentrant; the model is only read. Each call uses the OpenMP thread team
// (backends/cpu/gemm.h). Errors are returned as Status, never thrown.
#pragma once

#include <cstdint>
#include <vector>

#include "backends/base/status.h"
#include "model/llama_model.h"

namespace palu::model {

// Per-layer gradients, float32, with the shapes (row-major, out × in) of the weights.
struct KvGradients {
  std::vector<std::vector<float>> dwk;  // [layers][H_kv·d_h · d]  dLoss/d k_proj
  std::vector<std::vector<float>> dwv;  // [layers][H_kv·d_h · d]  dLoss/d v_proj
};

// Forward (keeping the activations it needs) and backward over one sequence of n tokens at
// positions 0..n−1 with no cache, for
//   loss = mean over t = 0..n−2 of −log softmax(logits_t)[tokens[t+1]].
// Returns the loss; resizes `grads` to the model and overwrites it with dLoss/dW_k and
// dLoss/dW_v of every layer. Fails with INVALID_ARGUMENT when n < 2, `tokens` or `grads` is
// null, or a token id lies outside the vocabulary; RESOURCE_EXHAUSTED when the activations
// cannot be allocated. `grads` is unspecified on failure.
Result<double> kv_weight_gradients(const LlamaModel& model, const int32_t* tokens, int n,
                                   KvGradients* grads);

}  // namespace palu::model
