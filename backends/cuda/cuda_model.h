// The whole model on a CUDA GPU (model/device_model.h). Implemented by the palu_cuda_model
// library; runtime/device_models.cc calls it for --backend cuda.
#pragma once

#include <memory>

#include "backends/base/status.h"
#include "model/device_model.h"

namespace palu::backends::cuda {

Result<std::unique_ptr<model::DeviceModel>> make_cuda_model(const model::LlamaModel& model,
                                                            const model::DeviceModelOptions& options);

}  // namespace palu::backends::cuda
