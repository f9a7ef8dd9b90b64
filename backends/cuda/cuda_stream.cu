#include <utility>

#include "backends/cuda/cuda_status.h"
#include "backends/cuda/cuda_stream.h"

namespace palu::backends::cuda {

Result<CudaStream> CudaStream::make(int device) {
  PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaStream_t s = nullptr;
  PALU_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CudaStream out;
  out.stream_ = s;
  out.device_ = device;
  return Result<CudaStream>(std::move(out));
}

CudaStream::~CudaStream() {
  if (stream_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

CudaStream::CudaStream(CudaStream&& o) noexcept : stream_(o.stream_), device_(o.device_) { o.stream_ = nullptr; }

CudaStream& CudaStream::operator=(CudaStream&& o) noexcept {
  if (this != &o) {
    if (stream_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
    stream_ = o.stream_;
    device_ = o.device_;
    o.stream_ = nullptr;
  }
  return *this;
}

Status CudaStream::synchronize() const {
  PALU_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)));
  return Status::ok();
}

Result<CudaEvent> CudaEvent::make(int device) {
  PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaEvent_t e = nullptr;
  PALU_CUDA_RETURN_IF_ERROR(cudaEventCreate(&e));
  CudaEvent out;
  out.event_ = e;
  return Result<CudaEvent>(std::move(out));
}

CudaEvent::~CudaEvent() {
  if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

CudaEvent::CudaEvent(CudaEvent&& o) noexcept : event_(o.event_) { o.event_ = nullptr; }

CudaEvent& CudaEvent::operator=(CudaEvent&& o) noexcept {
  if (this != &o) {
    if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
    event_ = o.event_;
    o.event_ = nullptr;
  }
  return *this;
}

Status CudaEvent::record(void* stream) {
  PALU_CUDA_RETURN_IF_ERROR(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream)));
  return Status::ok();
}

Status CudaEvent::synchronize() const {
  PALU_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
  return Status::ok();
}

Result<float> CudaEvent::elapsed_ms_since(const CudaEvent& start) const {
  float ms = 0.f;
  PALU_CUDA_RETURN_IF_ERROR(
      cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start.event_), static_cast<cudaEvent_t>(event_)));
  return ms;
}

}  // namespace palu::backends::cuda
