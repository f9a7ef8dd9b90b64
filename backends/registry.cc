#include "backends/registry.h"

#include "backends/cpu/cpu_device.h"
#if PALU_HAVE_CUDA
#include "backends/cuda/cuda_device.h"
#endif
#if PALU_HAVE_VULKAN
#include "backends/vulkan/vulkan_device.h"
#endif

namespace palu::backends {

DeviceList enumerate_devices() {
  DeviceList out;
  out.devices.push_back(cpu::make_cpu_device());
  out.log.push_back("cpu: " + out.devices.back()->info().name);
#if PALU_HAVE_CUDA
  cuda::append_cuda_devices(&out.devices, &out.log);
#else
  out.log.push_back("cuda: not compiled in (configure with -DPALU_CUDA=ON)");
#endif
#if PALU_HAVE_VULKAN
  vulkan::append_vulkan_devices(&out.devices, &out.log);
#else
  out.log.push_back("vulkan: not compiled in (configure with -DPALU_VULKAN=ON)");
#endif
  return out;
}

DeviceList enumerate_devices(DeviceKind kind) {
  DeviceList out;
  switch (kind) {
    case DeviceKind::kCpu:
      out.devices.push_back(cpu::make_cpu_device());
      out.log.push_back("cpu: " + out.devices.back()->info().name);
      break;
    case DeviceKind::kCuda:
#if PALU_HAVE_CUDA
      cuda::append_cuda_devices(&out.devices, &out.log);
#else
      out.log.push_back("cuda: not compiled in (configure with -DPALU_CUDA=ON)");
#endif
      break;
    case DeviceKind::kVulkan:
#if PALU_HAVE_VULKAN
      vulkan::append_vulkan_devices(&out.devices, &out.log);
#else
      out.log.push_back("vulkan: not compiled in (configure with -DPALU_VULKAN=ON)");
#endif
      break;
  }
  return out;
}

std::vector<std::string> compiled_backends() {
  std::vector<std::string> names{"cpu"};
#if PALU_HAVE_CUDA
  names.push_back("cuda");
#endif
#if PALU_HAVE_VULKAN
  names.push_back("vulkan");
#endif
  return names;
}

}  // namespace palu::backends
