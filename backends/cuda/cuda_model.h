// The whole model on a CUDA GPU (model/device_model.h). Implemented by the palu_cuda_model
// library; runtime/device_models.cc calls it for --backend cuda.
//
// Weights go up once as f16 (f32 accumulation); a sequence holds its cache in one device buffer:
// full f16 K/V rows for an uncompressed model, latents (f32/f16/bf16 or packed q8/q4/q3/q2,
// packed ones optionally with an f16 window of the newest tokens, as cache::BlockPool) for a
// compressed one. Decode with head_dim 128 runs the fused kernels of attention_cuda.h (not with
// a window); prefill (and decode at other head dims or with a window) a cuBLAS causal attention.
// Errors: no device → FAILED_PRECONDITION; an unimplemented cache option → UNIMPLEMENTED naming
// it; device memory → RESOURCE_EXHAUSTED with byte counts; never an abort.
#pragma once

#include <memory>

#include "backends/base/status.h"
#include "backends/cuda/cuda_allocator.h"
#include "model/device_model.h"

namespace palu::backends::cuda {

Result<std::unique_ptr<model::DeviceModel>> make_cuda_model(
    const model::LlamaModel& model, const model::DeviceModelOptions& options);

// The byte accounting of a CUDA DeviceModel's caching allocator (weights, sequence caches and
// per-forward scratch all come from it): for leak checks and benchmarks. INVALID_ARGUMENT when
// `model` was not made by make_cuda_model.
Result<CudaAllocatorStats> cuda_model_allocator_stats(const model::DeviceModel& model);

}  // namespace palu::backends::cuda
