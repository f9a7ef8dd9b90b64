// CudaStream and CudaEvent: RAII owners of a cudaStream_t / cudaEvent_t, made through
// factories that return Result (creation can fail: no device, out of resources). The handles are
// exposed as void* so this header needs no CUDA headers; kernels' entry points take the stream
// as `void*` (nullptr = the legacy default stream).
//
// Thread-safety: a stream may be used from one thread at a time; events are values.
#pragma once

#include "backends/base/status.h"

namespace palu::backends::cuda {

class CudaStream {
 public:
  CudaStream() = default;
  // A non-blocking stream on `device`.
  static Result<CudaStream> make(int device);
  ~CudaStream();
  CudaStream(CudaStream&& o) noexcept;
  CudaStream& operator=(CudaStream&& o) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  void* handle() const { return stream_; }
  int device() const { return device_; }
  // Waits for all work queued so far; a kernel fault surfaces here as INTERNAL.
  Status synchronize() const;

 private:
  void* stream_ = nullptr;
  int device_ = 0;
};

class CudaEvent {
 public:
  CudaEvent() = default;
  static Result<CudaEvent> make(int device);
  ~CudaEvent();
  CudaEvent(CudaEvent&& o) noexcept;
  CudaEvent& operator=(CudaEvent&& o) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  Status record(void* stream);
  Status synchronize() const;
  // Milliseconds between `start` and this event (both recorded and complete).
  Result<float> elapsed_ms_since(const CudaEvent& start) const;
  void* handle() const { return event_; }

 private:
  void* event_ = nullptr;
};

}  // namespace palu::backends::cuda
