// CudaAllocator: a caching allocator of device memory for one CUDA device, with exact byte
// accounting and allocation failures reported as values.
//
// Requests are rounded up to a size class (512 B granules below 1 MiB, 2 MiB granules above);
// freed blocks go to a per-size free list and are reused by the next request of the same class,
// so steady-state decode calls never reach cudaMalloc. When cudaMalloc fails, or the optional
// limit would be exceeded, the cache is released and the request retried once; if it still
// fails the call returns RESOURCE_EXHAUSTED naming the request and the current totals. Never
// aborts.
//
// Accounting (all exact, in bytes): in_use_bytes = Σ size classes of live blocks;
// cached_bytes = Σ size classes of free cached blocks; reserved_bytes = in_use + cached (what
// cudaMalloc holds); peak_in_use_bytes; requested_bytes = Σ of the sizes asked for by live blocks.
//
// Ownership: the allocator owns every block; blocks still live at destruction are freed too
// (a bug in the caller, counted in live_blocks()). Thread-safety: all methods are safe to call
// from several threads (one mutex). Device: every cudaMalloc/cudaFree runs after
// cudaSetDevice(device).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

#include "backends/base/status.h"

namespace palu::backends::cuda {

struct CudaAllocatorStats {
  size_t in_use_bytes = 0;
  size_t cached_bytes = 0;
  size_t reserved_bytes = 0;
  size_t peak_in_use_bytes = 0;
  size_t requested_bytes = 0;
  size_t cuda_malloc_calls = 0;
  size_t cache_hits = 0;
  size_t failed_allocations = 0;
};

class CudaAllocator {
 public:
  // limit_bytes: 0 = no limit beyond the device; otherwise reserved_bytes never exceeds it.
  explicit CudaAllocator(int device, size_t limit_bytes = 0);
  ~CudaAllocator();
  CudaAllocator(const CudaAllocator&) = delete;
  CudaAllocator& operator=(const CudaAllocator&) = delete;

  // A device pointer to at least `bytes` bytes (256-byte aligned). bytes == 0: INVALID_ARGUMENT.
  Result<void*> allocate(size_t bytes);
  // Returns a block to the cache. nullptr is a no-op; a pointer not from this allocator is
  // INVALID_ARGUMENT.
  Status free(void* ptr);
  // Gives every cached block back to the driver.
  Status release_cache();

  CudaAllocatorStats stats() const;
  size_t live_blocks() const;
  int device() const { return device_; }
  // The size class a request of `bytes` is rounded to.
  static size_t size_class(size_t bytes);

 private:
  Status release_cache_locked();

  int device_;
  size_t limit_bytes_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;          // size class → cached block
  struct Live {
    size_t size_class;
    size_t requested;
  };
  std::unordered_map<void*, Live> live_;
  CudaAllocatorStats stats_;
};

// A device buffer from a CudaAllocator (RAII: freed to the allocator on destruction).
class CudaBuffer {
 public:
  CudaBuffer() = default;
  static Result<CudaBuffer> make(CudaAllocator* alloc, size_t bytes);
  ~CudaBuffer();
  CudaBuffer(CudaBuffer&& o) noexcept;
  CudaBuffer& operator=(CudaBuffer&& o) noexcept;
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  // Synchronous copies host ↔ this buffer; bytes must be ≤ bytes() (INVALID_ARGUMENT otherwise).
  Status upload(const void* host, size_t bytes, size_t offset = 0);
  Status download(void* host, size_t bytes, size_t offset = 0) const;
  Status fill_zero();

 private:
  void reset();
  CudaAllocator* alloc_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Test seam for device allocation failures (the "device allocation failure" cases of
// docs/reliability.md), the device twin of backends/base/host_alloc.h. While a
// ScopedCudaAllocFailure lives, every CudaAllocator::allocate() call (cache hits included) is
// counted, and a call fails with RESOURCE_EXHAUSTED ("injected", with the byte counts) when
//   * it is the nth counted call from now (1 = the next), or a later one with `and_after`, or
//   * the allocator's in_use_bytes would exceed `in_use_limit_bytes` (0 = no limit) with it.
// A failed call changes no accounting except failed_allocations.
// Thread-safety: process-wide atomics (deliberate global state: a test seam, inert unless armed).
// Only one ScopedCudaAllocFailure may exist at a time.
struct CudaAllocFailureSpec {
  int64_t nth = 0;               // 0: no counted failure
  bool and_after = false;
  size_t in_use_limit_bytes = 0;  // 0: no byte limit
};

class ScopedCudaAllocFailure {
 public:
  explicit ScopedCudaAllocFailure(CudaAllocFailureSpec spec);
  ~ScopedCudaAllocFailure();
  ScopedCudaAllocFailure(const ScopedCudaAllocFailure&) = delete;
  ScopedCudaAllocFailure& operator=(const ScopedCudaAllocFailure&) = delete;

  // allocate() calls counted since construction, and how many of them were failed.
  int64_t allocations() const;
  int64_t failures() const;
};

}  // namespace palu::backends::cuda
