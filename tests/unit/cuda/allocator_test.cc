// CudaAllocator / CudaBuffer / CudaStream: exact byte accounting, caching, the limit, failures
// as RESOURCE_EXHAUSTED (never an abort), foreign pointers refused. Skips without a GPU.
#include <gtest/gtest.h>

#include <vector>

#include "backends/cuda/cuda_allocator.h"
#include "backends/cuda/cuda_device.h"
#include "backends/cuda/cuda_stream.h"

namespace palu::backends::cuda {
namespace {

#define PALU_SKIP_WITHOUT_GPU()                                                               \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: no GPU or no driver visible"

TEST(CudaAllocatorTest, SizeClasses) {
  // pure arithmetic: runs everywhere
  EXPECT_EQ(CudaAllocator::size_class(1), 512u);
  EXPECT_EQ(CudaAllocator::size_class(512), 512u);
  EXPECT_EQ(CudaAllocator::size_class(513), 1024u);
  EXPECT_EQ(CudaAllocator::size_class((1u << 20) + 1), 2u << 20);
  EXPECT_EQ(CudaAllocator::size_class(5u << 20), 6u << 20);
}

TEST(CudaAllocatorTest, ExactAccountingAndReuse) {
  PALU_SKIP_WITHOUT_GPU();
  CudaAllocator a(0);
  auto p = a.allocate(1000);
  ASSERT_TRUE(p.is_ok()) << p.status().to_string();
  auto s = a.stats();
  EXPECT_EQ(s.in_use_bytes, 1024u);
  EXPECT_EQ(s.requested_bytes, 1000u);
  EXPECT_EQ(s.reserved_bytes, 1024u);
  EXPECT_EQ(s.cached_bytes, 0u);
  auto big = a.allocate(3u << 20);
  ASSERT_TRUE(big.is_ok());
  EXPECT_EQ(a.stats().in_use_bytes, 1024u + (4u << 20));
  EXPECT_EQ(a.stats().peak_in_use_bytes, 1024u + (4u << 20));
  ASSERT_TRUE(a.free(*p).is_ok());
  s = a.stats();
  EXPECT_EQ(s.in_use_bytes, 4u << 20);
  EXPECT_EQ(s.cached_bytes, 1024u);
  EXPECT_EQ(s.reserved_bytes, 1024u + (4u << 20));
  auto again = a.allocate(900);  // same class: the cached block comes back
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(*again, *p);
  EXPECT_EQ(a.stats().cache_hits, 1u);
  EXPECT_EQ(a.stats().cuda_malloc_calls, 2u);
  ASSERT_TRUE(a.free(*again).is_ok());
  ASSERT_TRUE(a.free(*big).is_ok());
  ASSERT_TRUE(a.release_cache().is_ok());
  s = a.stats();
  EXPECT_EQ(s.reserved_bytes, 0u);
  EXPECT_EQ(s.in_use_bytes, 0u);
  EXPECT_EQ(s.requested_bytes, 0u);
  EXPECT_EQ(s.peak_in_use_bytes, 1024u + (4u << 20));
}

TEST(CudaAllocatorTest, FailuresAreValues) {
  PALU_SKIP_WITHOUT_GPU();
  CudaAllocator a(0, 8u << 20);
  EXPECT_EQ(a.allocate(0).status().code(), StatusCode::kInvalidArgument);
  auto p = a.allocate(6u << 20);
  ASSERT_TRUE(p.is_ok());
  auto over = a.allocate(4u << 20);  // 6 + 4 MiB > 8 MiB limit
  EXPECT_EQ(over.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(over.status().message().find("limit"), std::string::npos) << over.status().message();
  EXPECT_EQ(a.stats().failed_allocations, 1u);
  EXPECT_EQ(a.stats().in_use_bytes, 6u << 20);
  int x = 0;
  EXPECT_EQ(a.free(&x).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(a.free(*p).is_ok());
  // Larger than any GPU: the driver refuses; we report it and stay usable.
  CudaAllocator unlimited(0);
  auto huge = unlimited.allocate(size_t{1} << 50);
  EXPECT_EQ(huge.status().code(), StatusCode::kResourceExhausted) << huge.status().to_string();
  auto ok = unlimited.allocate(4096);
  EXPECT_TRUE(ok.is_ok()) << ok.status().to_string();
  ASSERT_TRUE(unlimited.free(*ok).is_ok());
}

TEST(CudaAllocatorTest, BufferRoundTripAndBounds) {
  PALU_SKIP_WITHOUT_GPU();
  CudaAllocator a(0);
  {
    auto b = CudaBuffer::make(&a, 4096);
    ASSERT_TRUE(b.is_ok());
    std::vector<int> in(1024), out(1024, 0);
    for (int i = 0; i < 1024; ++i) in[i] = i * 7;
    ASSERT_TRUE(b->upload(in.data(), 4096).is_ok());
    ASSERT_TRUE(b->download(out.data(), 4096).is_ok());
    EXPECT_EQ(in, out);
    EXPECT_EQ(b->upload(in.data(), 4096, 4).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(a.live_blocks(), 1u);
  }
  EXPECT_EQ(a.live_blocks(), 0u);
  EXPECT_EQ(a.stats().in_use_bytes, 0u);
}

TEST(CudaStreamTest, EventsTimeAStream) {
  PALU_SKIP_WITHOUT_GPU();
  auto s = CudaStream::make(0);
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  auto e0 = CudaEvent::make(0), e1 = CudaEvent::make(0);
  ASSERT_TRUE(e0.is_ok() && e1.is_ok());
  ASSERT_TRUE(e0->record(s->handle()).is_ok());
  ASSERT_TRUE(e1->record(s->handle()).is_ok());
  ASSERT_TRUE(e1->synchronize().is_ok());
  auto ms = e1->elapsed_ms_since(*e0);
  ASSERT_TRUE(ms.is_ok());
  EXPECT_GE(*ms, 0.f);
  EXPECT_FALSE(CudaStream::make(9999).is_ok());
}

}  // namespace
}  // namespace palu::backends::cuda
