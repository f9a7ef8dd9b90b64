// Device: one compute device (the CPU, a CUDA GPU, a Vulkan physical device).
//
// Devices are made by the registry (backends/registry.h); a backend that is compiled in but
// finds no hardware yields zero devices and one log line, never an error or a crash.
// Thread-safety: a Device is immutable after construction; its methods are const.
#pragma once

#include <cstddef>
#include <string>

#include "backends/base/ops.h"

namespace palu::backends {

enum class DeviceKind : uint8_t { kCpu = 0, kCuda = 1, kVulkan = 2 };
const char* device_kind_name(DeviceKind kind);

struct DeviceInfo {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;                // index among devices of the same kind
  std::string name;             // e.g. "cpu (avx512)", "NVIDIA H100 80GB HBM3"
  size_t memory_bytes = 0;      // total device memory; host RAM for the CPU
};

class Device {
 public:
  virtual ~Device() = default;
  virtual const DeviceInfo& info() const = 0;
  // Whether this device implements `op` (all dtypes the conformance table lists for it).
  virtual bool supports(OpKind op) const = 0;
};

}  // namespace palu::backends
