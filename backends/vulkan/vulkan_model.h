// The whole model on a Vulkan device (model/device_model.h). Implemented by the
// palu_vulkan_model library; runtime/device_models.cc calls it for --backend vulkan.
//
// Weights are uploaded once as f16 on GPUs, f32 on CPU drivers such as lavapipe (their memory
// is host RAM and f16 conversion in shaders is slow there; VulkanModelOptions overrides it);
// norms, biases and the RoPE table are f32; compute is f32.
// Uncompressed models cache full K/V rows (f32/f16/bf16, keys post-RoPE); compressed (Palu)
// models cache per-group latents z = A·x pre-RoPE in f32/f16/bf16 or packed q8/q4/q3/q2 codes
// (cache/latent_packing.h's bit layout), packed codes optionally with an f16 window of the newest
// tokens (CacheOptions.window_tokens; cache::BlockPool's semantics, truncate included).
// Decode of a compressed model runs the fused latent kernel (keys rebuilt from latents with
// RoPE inside the kernel, online softmax over token splits, p·z^V, then a reduction), with
// B^V folded into W_o at load. Each sequence owns its cache and activation buffers.
//
// The device is the device_index-th Vulkan device in preference order (discrete GPUs first;
// see vulkan_context.h); with device_index 0, PALU_VULKAN_DEVICE=N picks the N-th instead.
#pragma once

#include <cstddef>
#include <memory>

#include "backends/base/status.h"
#include "model/device_model.h"

namespace palu::backends::vulkan {

struct VulkanModelOptions {
  // Refuse device allocations past this many bytes in total (weights, caches, activations);
  // 0 = the heap's size. RESOURCE_EXHAUSTED names the bytes asked for and held.
  size_t memory_limit_bytes = 0;
  // Weight element type: kAuto = f16 on GPUs, f32 on CPU devices.
  enum class Weights { kAuto, kF16, kF32 } weights = Weights::kAuto;
};

Result<std::unique_ptr<model::DeviceModel>> make_vulkan_model(
    const model::LlamaModel& model, const model::DeviceModelOptions& options);
Result<std::unique_ptr<model::DeviceModel>> make_vulkan_model(
    const model::LlamaModel& model, const model::DeviceModelOptions& options,
    const VulkanModelOptions& vulkan);

}  // namespace palu::backends::vulkan
