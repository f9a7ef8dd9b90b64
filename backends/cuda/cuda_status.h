// CUDA runtime errors as palu::Status (included by the backend's .cu files only; the public
// headers of backends/cuda do not expose CUDA headers). A CUDA error is never fatal here: it
// becomes INTERNAL (or RESOURCE_EXHAUSTED for out-of-memory) naming the call that failed.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "backends/base/status.h"

namespace palu::backends::cuda {

inline Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::ok();
  // Reset the runtime's last-error slot, so a later cudaGetLastError() after a good launch does
  // not report this (non-sticky) failure again.
  (void)cudaGetLastError();
  std::string m = std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  if (e == cudaErrorMemoryAllocation) return resource_exhausted(std::move(m));
  return internal_error(std::move(m));
}

}  // namespace palu::backends::cuda

// Returns the Status of a failing CUDA runtime call from the enclosing function.
#define PALU_CUDA_RETURN_IF_ERROR(call) PALU_RETURN_IF_ERROR(::palu::backends::cuda::cuda_status((call), #call))
