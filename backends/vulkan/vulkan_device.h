// Vulkan compute devices. Issue "Vulkan compute backend" grows pipelines and shaders; today
// physical devices are enumerated through the loader and reported with their memory.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backends/base/device.h"

namespace palu::backends::vulkan {

// Appends one Device per physical device with a compute queue; with no loader, no ICD or no
// device, appends one log line only.
void append_vulkan_devices(std::vector<std::unique_ptr<Device>>* devices,
                           std::vector<std::string>* log);

}  // namespace palu::backends::vulkan
