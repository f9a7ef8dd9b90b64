// The CPU as a backends::Device. Always present.
#pragma once

#include <memory>

#include "backends/base/device.h"

namespace palu::backends::cpu {

std::unique_ptr<Device> make_cpu_device();

}  // namespace palu::backends::cpu
