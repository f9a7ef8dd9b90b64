// The compressed-model format written by palu-compress (documented in docs/formats.md).
//
// A compressed model is a directory holding the source model's files (config.json,
// tokenizer, safetensors shards: hard-linked when possible, else copied, never rewritten)
// plus:
//   palu.json         manifest: format name and version, group size, ranks per layer and
//                     group, search method, ratio, Hadamard, source fingerprint, calibration
//   palu.safetensors  float32 low-rank factors, per layer ℓ, projection p ∈ {k, v}, group g:
//                       "layers.ℓ.p.g.A"  [r, d]      latent = A · x   (x: k_proj/v_proj input)
//                       "layers.ℓ.p.g.B"  [s·d_h, r]  keys/values of the group's s heads = B · latent
// With Hadamard, A and B already contain the rotation (A' = QA, B' = BQᵀ). The value
// up-projection B^V is folded into W_o at load time by the latent runtime, not in the file.
//
// Thread-safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backends/base/status.h"
#include "model/config.h"

namespace palu::model {

inline constexpr const char* kPaluFormatName = "palu-compressed";
inline constexpr int kPaluFormatVersion = 1;

struct LowRankGroup {
  int rank = 0;
  std::vector<float> a;  // [rank, d]
  std::vector<float> b;  // [s·d_h, rank]
};

struct LowRankProjection {
  std::vector<LowRankGroup> groups;  // H_kv / s groups of s consecutive KV heads
  int total_rank() const {
    int r = 0;
    for (const auto& g : groups) r += g.rank;
    return r;
  }
};

struct PaluLayerFactors {
  LowRankProjection k;
  LowRankProjection v;
};

struct CalibrationInfo {
  std::string file;
  std::string fingerprint;  // fingerprint_file(file)
  int samples = 0;
  int seq_len = 0;
  int64_t tokens = 0;
  int fisher_samples = 0;
};

struct PaluManifest {
  int version = kPaluFormatVersion;
  int group_size = 0;
  double ratio = 0.0;           // requested fraction of K/V width kept
  double achieved_ratio = 0.0;  // Σ ranks / Σ widths
  std::string search;           // "uniform", "fisher" or "fisher_uniform"
  int rank_align = 32;
  bool hadamard = false;
  std::string source_model;
  std::string source_fingerprint;
  CalibrationInfo calibration;
  std::vector<std::vector<int>> k_ranks;  // [layer][group]
  std::vector<std::vector<int>> v_ranks;
  std::string created_by;

  // Latent floats per token (all layers, K and V) and the uncompressed K/V floats per token.
  int64_t latent_floats_per_token() const;
};

// True when `dir` holds a palu.json.
bool is_palu_model_dir(const std::string& dir);

// Writes palu.json and palu.safetensors into `dir` (each atomically).
Status write_palu_files(const std::string& dir, const PaluManifest& manifest,
                        const std::vector<PaluLayerFactors>& factors, int hidden_size, int head_dim);

// Reads and checks palu.json against the model's config (layer count, group size dividing
// H_kv, ranks within 1..s·d_h, version).
Result<PaluManifest> read_palu_manifest(const std::string& dir, const ModelConfig& config);
// Reads palu.safetensors; every tensor's shape must match the manifest's ranks.
Result<std::vector<PaluLayerFactors>> read_palu_factors(const std::string& dir, const PaluManifest& manifest,
                                                        const ModelConfig& config);

}  // namespace palu::model
