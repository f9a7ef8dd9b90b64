// Host memory for the large buffers whose allocation can fail at run time (a KV pool's arena,
// a sequence image, converted model weights), with a seam that lets tests fail them on purpose:
// the "host allocation failure" cases of docs/reliability.md.
//
// Production code calls host_calloc() for raw buffers, or host_alloc_should_fail() right before
// a container allocation (and treats true like std::bad_alloc). Both count one allocation.
// Tests make the nth counted allocation fail with ScopedHostAllocFailure.
//
// Thread-safety: the counter and the armed failure are process-wide atomics (the one piece of
// global state here, deliberately: a test seam, inert unless a test arms it). Only one
// ScopedHostAllocFailure may exist at a time.
#pragma once

#include <cstddef>
#include <cstdint>

namespace palu {

// calloc(n, size): zeroed memory, or nullptr when the allocation fails (really, or injected).
// Free with std::free.
void* host_calloc(size_t n, size_t size);

// Address space for `bytes` whose pages the system maps on first write (reads before that see
// zeros), so a large reserve costs memory only for what is used: an mmap of private anonymous
// memory with MAP_NORESERVE. Counts one allocation. nullptr when it fails (really, or
// injected). Free with host_unreserve(p, bytes).
void* host_reserve(size_t bytes);
void host_unreserve(void* p, size_t bytes);
// Gives the whole pages inside [p, p + bytes) of a reserve back to the system (they read as
// zeros again); the partial pages at either end are kept. For buffers from host_reserve.
void host_discard(void* p, size_t bytes);

// Counts one allocation; true when an armed ScopedHostAllocFailure says this one must fail.
bool host_alloc_should_fail();

// While alive: the nth counted host allocation from now (1 = the next) fails, and with
// `and_after` every later one too.
class ScopedHostAllocFailure {
 public:
  explicit ScopedHostAllocFailure(int64_t nth, bool and_after = false);
  ~ScopedHostAllocFailure();
  ScopedHostAllocFailure(const ScopedHostAllocFailure&) = delete;
  ScopedHostAllocFailure& operator=(const ScopedHostAllocFailure&) = delete;

  // Allocations counted since construction, and how many of them were failed.
  int64_t allocations() const;
  int64_t failures() const;
};

}  // namespace palu
