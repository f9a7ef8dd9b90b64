#include <atomic>
#include <string>
#include <utility>

#include "backends/cuda/cuda_allocator.h"
#include "backends/cuda/cuda_status.h"

namespace palu::backends::cuda {

namespace {
constexpr size_t kSmallGranule = 512;
constexpr size_t kLargeGranule = size_t{2} << 20;
constexpr size_t kLargeFrom = size_t{1} << 20;

// The armed ScopedCudaAllocFailure (see cuda_allocator.h).
std::atomic<bool> g_armed{false};
std::atomic<int64_t> g_count{0};
std::atomic<int64_t> g_fail_at{0};
std::atomic<bool> g_and_after{false};
std::atomic<size_t> g_limit{0};
std::atomic<int64_t> g_failures{0};

// Counts one allocate() call; true when the armed spec says it must fail.
bool injected_failure(size_t size_class, size_t in_use_bytes) {
  if (!g_armed.load(std::memory_order_acquire)) return false;
  const int64_t n = g_count.fetch_add(1, std::memory_order_relaxed) + 1;
  const int64_t at = g_fail_at.load(std::memory_order_relaxed);
  const size_t limit = g_limit.load(std::memory_order_relaxed);
  bool fail = at != 0 && (n == at || (n > at && g_and_after.load(std::memory_order_relaxed)));
  fail = fail || (limit != 0 && in_use_bytes + size_class > limit);
  if (fail) g_failures.fetch_add(1, std::memory_order_relaxed);
  return fail;
}

std::string totals(const CudaAllocatorStats& s) {
  return "in use " + std::to_string(s.in_use_bytes) + " B, cached " + std::to_string(s.cached_bytes) +
         " B, reserved " + std::to_string(s.reserved_bytes) + " B";
}
}  // namespace

size_t CudaAllocator::size_class(size_t bytes) {
  const size_t g = bytes >= kLargeFrom ? kLargeGranule : kSmallGranule;
  return (bytes + g - 1) / g * g;
}

CudaAllocator::CudaAllocator(int device, size_t limit_bytes) : device_(device), limit_bytes_(limit_bytes) {}

CudaAllocator::~CudaAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cudaSetDevice(device_) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  for (auto& [p, l] : live_) cudaFree(p);
  for (auto& [sz, p] : free_) cudaFree(p);
  cudaGetLastError();
}

Status CudaAllocator::release_cache_locked() {
  if (free_.empty()) return Status::ok();
  PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  Status st;
  for (auto it = free_.begin(); it != free_.end();) {
    const cudaError_t e = cudaFree(it->second);
    if (e != cudaSuccess && st.is_ok()) st = cuda_status(e, "cudaFree");
    stats_.cached_bytes -= it->first;
    stats_.reserved_bytes -= it->first;
    it = free_.erase(it);
  }
  return st;
}

Status CudaAllocator::release_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  return release_cache_locked();
}

Result<void*> CudaAllocator::allocate(size_t bytes) {
  if (bytes == 0) return invalid_argument("cuda allocator: bytes must be > 0, found 0");
  const size_t cls = size_class(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  if (injected_failure(cls, stats_.in_use_bytes)) {
    ++stats_.failed_allocations;
    return resource_exhausted("cuda allocator: device " + std::to_string(device_) + " could not allocate " +
                              std::to_string(bytes) + " B (class " + std::to_string(cls) +
                              " B; injected by ScopedCudaAllocFailure); " + totals(stats_));
  }
  void* p = nullptr;
  if (auto it = free_.find(cls); it != free_.end()) {
    p = it->second;
    free_.erase(it);
    stats_.cached_bytes -= cls;
    ++stats_.cache_hits;
  } else {
    PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    for (int attempt = 0; attempt < 2 && p == nullptr; ++attempt) {
      if (attempt == 1) PALU_RETURN_IF_ERROR(release_cache_locked());
      if (limit_bytes_ != 0 && stats_.reserved_bytes + cls > limit_bytes_) continue;
      const cudaError_t e = cudaMalloc(&p, cls);
      ++stats_.cuda_malloc_calls;
      if (e != cudaSuccess) {
        cudaGetLastError();  // clear, so later calls do not see a stale error
        p = nullptr;
      }
    }
    if (p == nullptr) {
      ++stats_.failed_allocations;
      return resource_exhausted("cuda allocator: device " + std::to_string(device_) + " could not allocate " +
                                std::to_string(bytes) + " B (class " + std::to_string(cls) + " B)" +
                                (limit_bytes_ != 0 ? ", limit " + std::to_string(limit_bytes_) + " B" : "") +
                                "; " + totals(stats_));
    }
    stats_.reserved_bytes += cls;
  }
  live_.emplace(p, Live{cls, bytes});
  stats_.in_use_bytes += cls;
  stats_.requested_bytes += bytes;
  if (stats_.in_use_bytes > stats_.peak_in_use_bytes) stats_.peak_in_use_bytes = stats_.in_use_bytes;
  return p;
}

Status CudaAllocator::free(void* ptr) {
  if (ptr == nullptr) return Status::ok();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) return invalid_argument("cuda allocator: free of a pointer this allocator did not give out");
  const Live l = it->second;
  live_.erase(it);
  stats_.in_use_bytes -= l.size_class;
  stats_.requested_bytes -= l.requested;
  stats_.cached_bytes += l.size_class;
  free_.emplace(l.size_class, ptr);
  return Status::ok();
}

CudaAllocatorStats CudaAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

size_t CudaAllocator::live_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return live_.size();
}

ScopedCudaAllocFailure::ScopedCudaAllocFailure(CudaAllocFailureSpec spec) {
  g_count.store(0, std::memory_order_relaxed);
  g_failures.store(0, std::memory_order_relaxed);
  g_fail_at.store(spec.nth, std::memory_order_relaxed);
  g_and_after.store(spec.and_after, std::memory_order_relaxed);
  g_limit.store(spec.in_use_limit_bytes, std::memory_order_relaxed);
  g_armed.store(true, std::memory_order_release);
}

ScopedCudaAllocFailure::~ScopedCudaAllocFailure() { g_armed.store(false, std::memory_order_release); }

int64_t ScopedCudaAllocFailure::allocations() const { return g_count.load(std::memory_order_relaxed); }
int64_t ScopedCudaAllocFailure::failures() const { return g_failures.load(std::memory_order_relaxed); }

// ---- CudaBuffer

Result<CudaBuffer> CudaBuffer::make(CudaAllocator* alloc, size_t bytes) {
  if (alloc == nullptr) return invalid_argument("cuda buffer: allocator is null");
  PALU_ASSIGN_OR_RETURN(void* p, alloc->allocate(bytes));
  CudaBuffer b;
  b.alloc_ = alloc;
  b.ptr_ = p;
  b.bytes_ = bytes;
  return Result<CudaBuffer>(std::move(b));
}

void CudaBuffer::reset() {
  if (alloc_ != nullptr && ptr_ != nullptr) (void)alloc_->free(ptr_);
  alloc_ = nullptr;
  ptr_ = nullptr;
  bytes_ = 0;
}

CudaBuffer::~CudaBuffer() { reset(); }

CudaBuffer::CudaBuffer(CudaBuffer&& o) noexcept : alloc_(o.alloc_), ptr_(o.ptr_), bytes_(o.bytes_) {
  o.alloc_ = nullptr;
  o.ptr_ = nullptr;
  o.bytes_ = 0;
}

CudaBuffer& CudaBuffer::operator=(CudaBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    alloc_ = o.alloc_;
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.alloc_ = nullptr;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

Status CudaBuffer::upload(const void* host, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_)
    return invalid_argument("cuda buffer: upload of " + std::to_string(bytes) + " B at " + std::to_string(offset) +
                            " exceeds the buffer's " + std::to_string(bytes_) + " B");
  PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(alloc_->device()));
  PALU_CUDA_RETURN_IF_ERROR(cudaMemcpy(static_cast<char*>(ptr_) + offset, host, bytes, cudaMemcpyHostToDevice));
  return Status::ok();
}

Status CudaBuffer::download(void* host, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_)
    return invalid_argument("cuda buffer: download of " + std::to_string(bytes) + " B at " + std::to_string(offset) +
                            " exceeds the buffer's " + std::to_string(bytes_) + " B");
  PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(alloc_->device()));
  PALU_CUDA_RETURN_IF_ERROR(cudaMemcpy(host, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
  return Status::ok();
}

Status CudaBuffer::fill_zero() {
  PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(alloc_->device()));
  PALU_CUDA_RETURN_IF_ERROR(cudaMemset(ptr_, 0, bytes_));
  return Status::ok();
}

}  // namespace palu::backends::cuda
