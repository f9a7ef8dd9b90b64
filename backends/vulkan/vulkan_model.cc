#include "backends/vulkan/vulkan_model.h"
namespace palu::backends::vulkan {
Result<std::unique_ptr<model::DeviceModel>> make_vulkan_model(const model::LlamaModel&, const model::DeviceModelOptions&) {
  return unimplemented("vulkan model: not yet");
}
}
