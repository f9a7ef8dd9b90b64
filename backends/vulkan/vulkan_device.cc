#include "backends/vulkan/vulkan_device.h"

#include <vulkan/vulkan.h>

#include <string>

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
  bool supports(OpKind) const override { return false; }

 private:
  DeviceInfo info_;
};

}  // namespace

void append_vulkan_devices(std::vector<std::unique_ptr<Device>>* devices, std::vector<std::string>* log) {
  VkApplicationInfo app{};
  app.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO;
  app.pApplicationName = "palu";
  app.apiVersion = VK_API_VERSION_1_1;
  VkInstanceCreateInfo ci{};
  ci.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO;
  ci.pApplicationInfo = &app;
  VkInstance instance = VK_NULL_HANDLE;
  const VkResult r = vkCreateInstance(&ci, nullptr, &instance);
  if (r != VK_SUCCESS) {
    log->push_back("vulkan: no instance (VkResult " + std::to_string((int)r) + "; is a Vulkan driver installed?)");
    return;
  }
  uint32_t n = 0;
  vkEnumeratePhysicalDevices(instance, &n, nullptr);
  std::vector<VkPhysicalDevice> phys(n);
  if (n > 0) vkEnumeratePhysicalDevices(instance, &n, phys.data());
  int index = 0;
  for (VkPhysicalDevice pd : phys) {
    uint32_t qn = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &qn, nullptr);
    std::vector<VkQueueFamilyProperties> qf(qn);
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &qn, qf.data());
    bool compute = false;
    for (const auto& q : qf) compute |= (q.queueFlags & VK_QUEUE_COMPUTE_BIT) != 0;
    if (!compute) continue;
    VkPhysicalDeviceProperties props{};
    vkGetPhysicalDeviceProperties(pd, &props);
    VkPhysicalDeviceMemoryProperties mem{};
    vkGetPhysicalDeviceMemoryProperties(pd, &mem);
    size_t bytes = 0;
    for (uint32_t h = 0; h < mem.memoryHeapCount; ++h) {
      if (mem.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) bytes += mem.memoryHeaps[h].size;
    }
    devices->push_back(std::make_unique<VulkanDevice>(index, props, bytes));
    log->push_back("vulkan: device " + std::to_string(index) + ": " + props.deviceName);
    ++index;
  }
  if (index == 0) log->push_back("vulkan: no physical device with a compute queue");
  vkDestroyInstance(instance, nullptr);
}

}  // namespace palu::backends::vulkan
