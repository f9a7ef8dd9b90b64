// The whole model on a Vulkan device (model/device_model.h). Implemented by the
// palu_vulkan_model library; runtime/device_models.cc calls it for --backend vulkan.
#pragma once

#include <memory>

#include "backends/base/status.h"
#include "model/device_model.h"

namespace palu::backends::vulkan {

Result<std::unique_ptr<model::DeviceModel>> make_vulkan_model(const model::LlamaModel& model,
                                                              const model::DeviceModelOptions& options);

}  // namespace palu::backends::vulkan
