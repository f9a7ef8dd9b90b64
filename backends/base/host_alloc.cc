#include "backends/base/host_alloc.h"

#include <atomic>
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
