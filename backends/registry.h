// The one place that knows which backends were compiled in. enumerate_devices() asks every
// compiled backend for its devices; a backend with no hardware (no GPU, no Vulkan driver)
// contributes zero devices and one line in `log`, never an error.
//
// Thread-safety: enumerate_devices() may be called from any thread; it builds new objects.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backends/base/device.h"

namespace palu::backends {

struct DeviceList {
  std::vector<std::unique_ptr<Device>> devices;  // the CPU first, always present
  std::vector<std::string> log;                  // one line per backend: what it found
};

DeviceList enumerate_devices();
// Only the devices of one backend (no CPU entry unless kind is the CPU): for callers that need
// one kind and should not pay for probing the others (palud's GPU tier asks for CUDA).
DeviceList enumerate_devices(DeviceKind kind);

// Names of the backends compiled into this binary, e.g. {"cpu", "cuda", "vulkan"}.
std::vector<std::string> compiled_backends();

}  // namespace palu::backends
