// CUDA devices: enumeration (zero devices and one log line without a GPU or driver), memory size,
// the ops they support (forward_ops.h, attention_cuda.h) and the smoke kernel below.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backends/base/device.h"
#include "backends/base/status.h"

namespace palu::backends::cuda {

// Appends one Device per visible GPU; with no driver or no GPU, appends one log line only.
void append_cuda_devices(std::vector<std::unique_ptr<Device>>* devices, std::vector<std::string>* log);

// Number of usable CUDA devices (0 when there is no driver or no GPU).
int cuda_device_count();

// y[i] = x[i] / sqrt(mean(x²)+eps) · w[i] for `rows` rows of `n` floats, computed on GPU
// `device` (host arrays in and out). Exists so tests can check the toolchain end to end.
Status rms_norm_on_gpu(int device, const float* x, const float* w, float eps, float* y, int rows, int n);

}  // namespace palu::backends::cuda
