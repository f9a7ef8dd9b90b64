// The one place that makes a DeviceModel (model/device_model.h) for a backend by name:
// "cpu" (the reference forward over the pooled cache, what palud runs today), "cuda" and
// "vulkan" when they were compiled in. A backend that is not compiled in, or has no device at
// the index asked for, is a clear error (UNAVAILABLE-style FAILED_PRECONDITION naming it),
// never a crash.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "backends/base/status.h"
#include "model/device_model.h"
#include "model/llama_model.h"

namespace palu::runtime {

// "cpu", "cuda" or "vulkan"; anything else → INVALID_ARGUMENT listing the names.
Result<backends::DeviceKind> parse_backend(std::string_view name);

// The backends this binary can make DeviceModels for, e.g. {"cpu", "cuda"}.
std::vector<std::string> device_model_backends();

// Borrows `model`, which must outlive the result.
Result<std::unique_ptr<model::DeviceModel>> make_device_model(const model::LlamaModel& model,
                                                              backends::DeviceKind kind,
                                                              const model::DeviceModelOptions& options);

}  // namespace palu::runtime
