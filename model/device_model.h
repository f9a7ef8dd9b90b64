// DeviceModel: a loaded model's forward pass on one compute device (the CPU reference, a CUDA
// GPU, a Vulkan device), behind one interface so tools, tests and palud pick a backend with a
// flag instead of a code path.
//
// A DeviceModel is made from a loaded LlamaModel (runtime/device_models.h): the weights are
// uploaded once (f16 on GPUs, f32 accumulation), compressed models keep their Palu runtime
// (latent cache, keys rebuilt from latents with RoPE inside the attention kernel, B^V folded
// into W_o). A DeviceSequence is one sequence's KV cache in the device's memory — full K/V rows
// for an uncompressed model, latents for a compressed one — with a fixed capacity in tokens.
//
// Contract every implementation keeps (tests/integration/golden/device_golden_test.cc checks it
// on every device present):
//   * forward() has LlamaModel::forward's semantics: the n tokens take positions
//     size() .. size()+n−1, their rows are appended, logits (kLast: [vocab], kAll: [n, vocab])
//     are copied to host memory. Token ids outside the vocabulary → INVALID_ARGUMENT, past
//     capacity → OUT_OF_RANGE, device memory exhausted → RESOURCE_EXHAUSTED with the byte
//     counts; on any failure size() is unchanged.
//   * Results match the CPU reference within the golden tolerances (f16 weights on GPUs).
//   * No device error aborts the process: every one comes back as a Status naming the op.
//
// Thread-safety: a DeviceModel may be shared by threads creating sequences; one DeviceSequence
// is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "backends/base/device.h"
#include "backends/base/status.h"
#include "cache/block_pool.h"
#include "model/llama_model.h"

namespace palu::model {

class DeviceSequence {
 public:
  virtual ~DeviceSequence() = default;
  virtual Status forward(const int32_t* tokens, int n, LogitsMode mode, float* logits) = 0;
  // Tokens cached so far, and the most this sequence can hold.
  virtual int size() const = 0;
  virtual int capacity() const = 0;
  // Drops cached tokens after the first n (n ≤ size()); the next forward continues at n.
  virtual Status truncate(int n) = 0;
  // Device bytes held by this sequence's cache.
  virtual size_t cache_bytes() const = 0;

  // The cache as the host pool's bytes, and back (palud moves sessions between the GPU and host
  // tiers with these): `layout` is the cache::CacheLayout of the model's
  // cache_layout_spec(options.cache); the image is exactly what cache::BlockPool::export_sequence
  // gives for the same contents (codes, parameters and window rows copied, not re-encoded).
  // import_image replaces the contents (size() becomes image.length, ≤ capacity()); a wrong
  // layout, a length over the capacity or a damaged image is refused before anything changes.
  // Backends without them say UNIMPLEMENTED.
  virtual Result<cache::SequenceImage> export_image(const cache::CacheLayout& layout) const {
    (void)layout;
    return unimplemented("export_image: this backend cannot copy a sequence's cache out");
  }
  virtual Status import_image(const cache::CacheLayout& layout, const cache::SequenceImage& image) {
    (void)layout;
    (void)image;
    return unimplemented("import_image: this backend cannot load a sequence's cache");
  }
};

struct DeviceModelOptions {
  int device_index = 0;  // among devices of the backend's kind
  // Weight element type on the device: kAuto = the backend's choice (f16 on GPUs; the CPU
  // reference always computes in f32). kF32 trades speed and memory for the CPU's numbers (packed
  // 2-bit latents can flip codes with f16 weights); a backend without it says UNIMPLEMENTED.
  enum class Weights { kAuto, kF16, kF32 } weights = Weights::kAuto;
  // Cache rows: compressed models f32/f16/bf16 or packed q8/q4/q3/q2 latents (window_tokens
  // newest tokens also kept in f16), uncompressed models f32/f16/bf16 full rows. An
  // implementation that lacks a storage says UNIMPLEMENTED naming it.
  CacheOptions cache;
};

class DeviceModel {
 public:
  virtual ~DeviceModel() = default;
  virtual const backends::DeviceInfo& device() const = 0;
  // Device bytes held by the weights (and constant tables) of this model.
  virtual size_t weight_bytes() const = 0;
  // A new empty sequence that can hold max_tokens (≤ the model's context length).
  virtual Result<std::unique_ptr<DeviceSequence>> new_sequence(int max_tokens) = 0;
  // e.g. "cuda:0 NVIDIA H100 80GB HBM3, f16 weights, latent q4 cache".
  virtual std::string describe() const = 0;
};

}  // namespace palu::model
