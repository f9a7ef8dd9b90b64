// VulkanContext rules that the ops tests do not reach: a fence wait that runs out marks the
// context hung (a clear INTERNAL error naming the operation, then every call fails fast and
// nothing the device may still use is freed), and the queue lock of a Recorder is held only
// while it records, so downloads after submit() work on discrete GPUs (where they go through
// the staging buffer) instead of deadlocking; GPU timestamp marks come back ordered and labelled.
#include <gtest/gtest.h>

#include <chrono>
#include <vector>

#include "tests/unit/vulkan/vulkan_test_util.h"

namespace palu::backends::vulkan {
namespace {

using namespace palu::backends::vulkan::testing;

TEST(VulkanContext, FenceTimeoutMarksTheContextHungAndEveryCallFailsFast) {
  // A context of its own: this one is leaked on purpose at the end.
  auto made = VulkanContext::create();
  if (!made.is_ok()) GTEST_SKIP() << "no Vulkan device: " << made.status().to_string();
  std::unique_ptr<VulkanContext> ctx = std::move(made).value();
  const int n = 256;
  VulkanBuffer x = to_device(ctx.get(), random_floats(n, 1));
  VulkanBuffer y = to_device(ctx.get(), random_floats(n, 2));
  // The submission waits on the device for a host signal that comes only after the wait has
  // run out: the timeout is certain, whatever the device's speed.
  const Status gated = ctx->gate_next_submit_for_testing();
  if (!gated.is_ok()) GTEST_SKIP() << gated.to_string();
  ctx->set_timeout_ms(200);
  {
    Recorder rec(ctx.get());
    add(rec, x.address(), y.address(), n, n);
    const Status st = rec.submit("gated add");
    EXPECT_EQ(st.code(), StatusCode::kInternal) << st.to_string();
    EXPECT_NE(st.to_string().find("gated add did not finish within 200 ms"), std::string::npos)
        << st.to_string();
  }
  EXPECT_TRUE(ctx->hung());
  const auto t0 = std::chrono::steady_clock::now();
  // Every later call: the same error, at once.
  auto b = ctx->alloc(64, MemoryKind::kDevice, "after the hang");
  EXPECT_EQ(b.status().code(), StatusCode::kInternal);
  EXPECT_NE(b.status().to_string().find("gated add"), std::string::npos);
  std::vector<float> host(n);
  EXPECT_EQ(ctx->download(x, 0, host.data(), n * 4).code(), StatusCode::kInternal);
  EXPECT_EQ(ctx->upload(x, 0, host.data(), n * 4).code(), StatusCode::kInternal);
  {
    Recorder rec(ctx.get());
    add(rec, x.address(), y.address(), n, n);
    EXPECT_EQ(rec.submit("after the hang").code(), StatusCode::kInternal);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 5.0) << "calls on a hung context must not wait";
  // Let the device finish the gated work; x, y and the context are then leaked, not freed.
  ctx->release_submit_gate_for_testing();
}

TEST(VulkanContext, DownloadAfterSubmitWhileTheRecorderLives) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  const int n = 300;
  const auto xv = random_floats(n, 3), yv = random_floats(n, 4);
  VulkanBuffer x = to_device(ctx, xv), y = to_device(ctx, yv);
  Recorder rec(ctx);
  add(rec, x.address(), y.address(), n, n);
  // Still recording: a staging copy now would need the queue this thread holds, so it is an
  // error rather than a deadlock (buffers the host can map need no queue).
  std::vector<float> early(n);
  const Status st = ctx->download(y, 0, early.data(), n * 4);
  if (y.mapped() == nullptr) {
    EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.to_string();
  } else {
    EXPECT_TRUE(st.is_ok()) << st.to_string();
  }
  ASSERT_TRUE(rec.submit("add").is_ok());
  // Submitted: the queue is free again while `rec` lives (the ops tests' pattern).
  std::vector<float> want(n);
  for (int i = 0; i < n; ++i) want[i] = xv[i] + yv[i];
  expect_near_all(from_device<float>(ctx, y, n), want, 1e-6f, 0, "add");
  // And the same Recorder records again.
  add(rec, x.address(), y.address(), n, n);
  ASSERT_TRUE(rec.submit("add again").is_ok());
  for (int i = 0; i < n; ++i) want[i] += xv[i];
  expect_near_all(from_device<float>(ctx, y, n), want, 1e-6f, 0, "add again");
}

// Recorder::inline_data: host bytes the shaders of the submission read at the returned address
// (here the x of an add), 16-byte aligned, 0 once the submission has used up kInlineBytes (the
// submission itself still fine), and the buffer reused from its start by the next recording.
TEST(VulkanContext, InlineDataIsReadByTheSubmissionsShaders) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  const int n = 300;
  const auto xv = random_floats(n, 7), x2 = random_floats(n, 8), yv = random_floats(n, 9);
  VulkanBuffer y = to_device(ctx, yv);
  Recorder rec(ctx);
  const uint8_t one = 1;
  const uint64_t a0 = rec.inline_data(&one, 1);
  const uint64_t ax = rec.inline_data(xv.data(), n * 4);
  const uint64_t ax2 = rec.inline_data(x2.data(), n * 4);
  ASSERT_NE(a0, 0u);
  ASSERT_NE(ax, 0u);
  ASSERT_NE(ax2, 0u);
  EXPECT_EQ(ax % 16, 0u);
  EXPECT_EQ(ax, a0 + 16) << "packed after the first, 16-byte aligned";
  EXPECT_GE(ax2, ax + n * 4);
  add(rec, ax, y.address(), n, n);
  add(rec, ax2, y.address(), n, n);
  std::vector<uint8_t> big(Recorder::kInlineBytes);
  EXPECT_EQ(rec.inline_data(big.data(), big.size()), 0u) << "more than what is left";
  EXPECT_EQ(rec.inline_data(big.data(), 0), 0u);
  ASSERT_TRUE(rec.submit("inline add").is_ok());
  std::vector<float> want(n);
  for (int i = 0; i < n; ++i) want[i] = yv[i] + xv[i] + x2[i];
  expect_near_all(from_device<float>(ctx, y, n), want, 1e-6f, 0, "inline add");
  // The next recording starts from the buffer's beginning; the whole buffer fits one.
  EXPECT_EQ(rec.inline_data(x2.data(), n * 4), a0);
  add(rec, a0, y.address(), n, n);
  ASSERT_TRUE(rec.submit("inline add again").is_ok());
  for (int i = 0; i < n; ++i) want[i] += x2[i];
  expect_near_all(from_device<float>(ctx, y, n), want, 1e-6f, 0, "inline add again");
  EXPECT_NE(rec.inline_data(big.data(), big.size()), 0u);
  ASSERT_TRUE(rec.submit("inline, no dispatch").is_ok());
}

TEST(VulkanContext, TimestampMarksAreOrderedAndLabelled) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  if (!ctx->timestamps())
    GTEST_SKIP() << "queue family " << ctx->queue_family() << " has no timestamps";
  const int n = 1 << 16;
  VulkanBuffer x = to_device(ctx, random_floats(n, 5)), y = to_device(ctx, random_floats(n, 6));
  Recorder rec(ctx);
  rec.mark("start");
  add(rec, x.address(), y.address(), n, n);
  rec.mark("end");
  ASSERT_TRUE(rec.submit("marked add").is_ok());
  ASSERT_EQ(rec.marks().size(), 2u);
  EXPECT_EQ(rec.marks()[0].label, "start");
  EXPECT_EQ(rec.marks()[1].label, "end");
  EXPECT_EQ(rec.marks()[0].ns, 0.0);
  EXPECT_GE(rec.marks()[1].ns, 0.0);
  EXPECT_LT(rec.marks()[1].ns, 60e9) << "a 64K-element add within a minute";
  // A mark after every dispatch, named after its shader, and one before the first.
  rec.mark_dispatches(true);
  add(rec, x.address(), y.address(), n, n);
  add(rec, x.address(), y.address(), n, n);
  ASSERT_TRUE(rec.submit("two adds").is_ok());
  ASSERT_EQ(rec.marks().size(), 3u);
  EXPECT_EQ(rec.marks()[0].label, "begin");
  EXPECT_EQ(rec.marks()[1].label, "add");
  EXPECT_EQ(rec.marks()[2].label, "add");
  EXPECT_LE(rec.marks()[1].ns, rec.marks()[2].ns);
  // No marks recorded: none reported (not the previous submission's).
  rec.mark_dispatches(false);
  add(rec, x.address(), y.address(), n, n);
  ASSERT_TRUE(rec.submit("unmarked add").is_ok());
  EXPECT_TRUE(rec.marks().empty());
}

}  // namespace
}  // namespace palu::backends::vulkan
