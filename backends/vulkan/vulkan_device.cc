#include "backends/vulkan/vulkan_device.h"

#include <string>

#include "backends/vulkan/vulkan_context.h"

namespace palu::backends::vulkan {
namespace {

class VulkanDevice final : public Device {
 public:
  VulkanDevice(int index, const VkPhysicalDeviceProperties& props, size_t memory_bytes) {
    info_.kind = DeviceKind::kVulkan;
    info_.index = index;
    info_.name = props.deviceName;
    info_.memory_bytes = memory_bytes;
  }
  const DeviceInfo& info() const override { return info_; }
  // Every op of the table has a shader (backends/vulkan/shaders, vulkan_ops.h) and a row in
  // tests/unit/vulkan's conformance table.
  bool supports(OpKind op) const override { return op < OpKind::kCount; }

 private:
  DeviceInfo info_;
};

}  // namespace

void append_vulkan_devices(std::vector<std::unique_ptr<Device>>* devices,
                           std::vector<std::string>* log) {
  VulkanInstanceDevices found = select_vulkan_devices();
  for (const auto& l : found.log) log->push_back(l);
  int index = 0;
  for (const auto& e : found.devices) {
    devices->push_back(std::make_unique<VulkanDevice>(index, e.props, e.device_local_bytes));
    log->push_back("vulkan: device " + std::to_string(index) + ": " + e.props.deviceName);
    ++index;
  }
  if (found.instance != VK_NULL_HANDLE) vkDestroyInstance(found.instance, nullptr);
}

}  // namespace palu::backends::vulkan
