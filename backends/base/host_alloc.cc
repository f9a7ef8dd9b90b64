#include "backends/base/host_alloc.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

namespace palu {
namespace {

std::atomic<int64_t> g_count{0};     // allocations counted since the failure was armed
std::atomic<int64_t> g_fail_at{0};   // 0: not armed
std::atomic<bool> g_and_after{false};
std::atomic<int64_t> g_failures{0};

}  // namespace

bool host_alloc_should_fail() {
  const int64_t at = g_fail_at.load(std::memory_order_acquire);
  const int64_t n = g_count.fetch_add(1, std::memory_order_relaxed) + 1;
  if (at == 0) return false;
  const bool fail = n == at || (n > at && g_and_after.load(std::memory_order_relaxed));
  if (fail) g_failures.fetch_add(1, std::memory_order_relaxed);
  return fail;
}

void* host_calloc(size_t n, size_t size) {
  if (host_alloc_should_fail()) return nullptr;
  return std::calloc(n, size);
}

void* host_reserve(size_t bytes) {
  if (host_alloc_should_fail() || bytes == 0) return nullptr;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void host_unreserve(void* p, size_t bytes) {
  if (p != nullptr) ::munmap(p, bytes);
}

void host_discard(void* p, size_t bytes) {
  static const uintptr_t page = (uintptr_t)::sysconf(_SC_PAGESIZE);
  const uintptr_t begin = ((uintptr_t)p + page - 1) / page * page;
  const uintptr_t end = ((uintptr_t)p + bytes) / page * page;
  if (end > begin) ::madvise((void*)begin, end - begin, MADV_DONTNEED);
}

ScopedHostAllocFailure::ScopedHostAllocFailure(int64_t nth, bool and_after) {
  g_count.store(0, std::memory_order_relaxed);
  g_failures.store(0, std::memory_order_relaxed);
  g_and_after.store(and_after, std::memory_order_relaxed);
  g_fail_at.store(nth, std::memory_order_release);
}

ScopedHostAllocFailure::~ScopedHostAllocFailure() { g_fail_at.store(0, std::memory_order_release); }

int64_t ScopedHostAllocFailure::allocations() const { return g_count.load(std::memory_order_relaxed); }
int64_t ScopedHostAllocFailure::failures() const { return g_failures.load(std::memory_order_relaxed); }

}  // namespace palu
