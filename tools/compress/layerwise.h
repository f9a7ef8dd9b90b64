// Layer-by-layer calibration for palu-compress: the calibration statistics (Σ x xᵀ of every
// layer's k_proj/v_proj input) and the Fisher scores (RMS over samples of dLoss/dW_k and
// dLoss/dW_v, averaged per head group) computed with one decoder layer's weights in memory at a
// time, so a 7B model compresses in a few GB of RAM instead of its 27 GB of float32 weights.
//
// How it streams (DESIGN.md §1 is the method; model/llama_backward.h is the arithmetic):
//   1. Forward sweep, layer-major: the residual streams of all S calibration samples [S, n, d]
//      live in RAM. For each layer l: load its weights, push every sample through it
//      (model::LayerPass), add each sample's normed attention input to G_l, and write the
//      layer input of each of the first F (Fisher) samples to a scratch file. G_l (float64) is
//      spilled to a scratch file too, so only one layer's G is in memory.
//   2. Fisher (when F > 0): the final norm and the head give dLoss/dx_final of each Fisher
//      sample (its residual stream is in RAM after step 1). Then for l = L−1 … 0: load layer
//      l, and for each sample read its layer input back, rerun the layer's forward, run its
//      backward (dW_k, dW_v, and dLoss/d(layer input) for the layer below) and accumulate the
//      squares of dW in float64 — one layer's accumulators at a time; they become that
//      layer's group scores.
//   3. gram(l) reads G_l back for the whitened SVD, which palu-compress runs per layer after
//      the rank allocation (it loads that layer's k_proj/v_proj only).
//
// Memory (float32 unless noted; S samples, F Fisher samples, n tokens each, L layers, d hidden,
// F_ffn ffn width, V vocab, kvw = H_kv·d_h):
//   residual streams 4·S·n·d              + Fisher gradients 4·F·n·d
//   one layer        4·(2·qw·d + 2·kvw·d + 3·d·F_ffn)   (the layer's weights; qw = H·d_h)
//   LayerPass        see model/llama_backward.h (≈ 4·n·(4d + 3qw + 6kvw + 4F_ffn))
//   one G            8·d²                 + Fisher accumulators and dW 24·kvw·d
//   head (step 2)    4·V·d (the output matrix; the embedding in step 1) + 4·(n−1)·V logits
// Scratch disk: 4·F·L·n·d (layer inputs) + 8·L·d² (the G's), removed when the run ends.
// Llama-2-7B (d 4096, L 32, F_ffn 11008, V 32000, S 64, F 16, n 1024): residuals 1.07 GB +
// gradients 0.27 GB + layer 0.81 GB + LayerPass 0.4 GB + G 0.13 GB + accumulators 0.40 GB +
// head 0.52 GB + logits 0.13 GB ≈ 3.7 GB peak; scratch 8.6 GB + 4.3 GB on disk.
//
// Thread-safety: none (one run at a time); the passes use the OpenMP team. Errors are Status
// values naming the layer, tensor or file.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backends/base/status.h"
#include "model/llama_model.h"
#include "tools/compress/eigen_dense.h"
#include "tools/compress/head_groups.h"

namespace palu::compress {

// A model's weights, one decoder layer at a time.
class LayerSource {
 public:
  virtual ~LayerSource() = default;
  virtual const model::ModelConfig& config() const = 0;
  // Layer l's weights, valid until the next layer() or release(). kv_only: only k_proj and
  // v_proj (and their biases) need to be there.
  virtual Result<const model::LayerWeights*> layer(int l, bool kv_only = false) = 0;
  // embed_tokens [V, d], final norm [d] and the output matrix [V, d] (lm_head or the tied
  // embedding), valid until release().
  virtual Result<const float*> embedding() = 0;
  virtual Result<const float*> final_norm() = 0;
  virtual Result<const float*> output_matrix() = 0;
  // Frees whatever a streaming source holds.
  virtual void release() {}
};

// The weights of a loaded model (no copies; for tests and for models already in memory).
std::unique_ptr<LayerSource> model_layer_source(const model::LlamaModel& model);

// A Hugging Face model directory, memory-mapped; a layer is converted to float32 when asked
// for and dropped when the next one is.
Result<std::unique_ptr<LayerSource>> open_layer_source(const std::string& model_dir);

struct LayerwiseOptions {
  int fisher_samples = 0;   // the first N samples get a backward pass; 0 = no Fisher scores
  std::string scratch_dir;  // created if missing; the run's files go in a fresh subdirectory
  // (stage, done, total): stage is "calibration" or "fisher".
  std::function<void(const char* stage, int64_t done, int64_t total)> progress;
};

// Scratch bytes a run needs on disk (checked against the free space before it starts).
int64_t layerwise_scratch_bytes(const model::ModelConfig& c, int fisher_samples, int seq);

class LayerwiseCalibration {
 public:
  // Runs steps 1 and 2 over `samples` (each of the same length n ≥ 2, token ids within the
  // vocabulary). INVALID_ARGUMENT for bad samples or options, RESOURCE_EXHAUSTED when memory
  // or scratch space is short (with the numbers), IO_ERROR naming the scratch file.
  static Result<std::unique_ptr<LayerwiseCalibration>> run(LayerSource& source,
                                                           const std::vector<std::vector<int32_t>>& samples,
                                                           const HeadGrouping& grouping, const LayerwiseOptions& options);
  ~LayerwiseCalibration();  // removes the scratch files

  // G_l = Σ x xᵀ over every token of every sample, [d, d] float64.
  Result<Eigen::MatrixXd> gram(int layer) const;
  // Tokens added to each G.
  int64_t tokens() const { return tokens_; }
  bool has_fisher() const { return !k_scores_.empty(); }
  // [layer][group]: the mean over the group's weight entries of sqrt(mean over Fisher samples
  // of (dLoss/dW)²). Empty without Fisher samples.
  const std::vector<std::vector<double>>& k_scores() const { return k_scores_; }
  const std::vector<std::vector<double>>& v_scores() const { return v_scores_; }
  // Mean next-token loss of the Fisher samples (a sanity number for the report).
  double fisher_loss() const { return fisher_loss_; }

 private:
  LayerwiseCalibration() = default;
  int dim_ = 0;
  int64_t tokens_ = 0;
  std::string dir_;  // the run's scratch directory
  std::string gram_path_;
  std::vector<std::vector<double>> k_scores_, v_scores_;
  double fisher_loss_ = 0.0;
};

}  // namespace palu::compress
