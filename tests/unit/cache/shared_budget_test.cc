// SharedBudget: pools of different layouts drawing from one byte budget (palud's host tier with
// per-session cache settings). The sum of the blocks every pool holds never exceeds the budget,
// a plan that would is RESOURCE_EXHAUSTED naming the budget, plans go stale when another pool
// commits, a pool's bytes come back when it is destroyed (or moved over), and a released block's
// memory is given back to the system (it reads as zeros when taken again).
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "cache/block_pool.h"
#include "tests/common/status_assert.h"

namespace palu::cache {
namespace {

CacheLayout layout_of(CacheStorage storage, int window = 0) {
  // Two layers, two K groups and two V groups of rank 256: f16 blocks of 16 tokens are
  // 2·2·2·256·2·16 = 64 KiB (whole pages, so releases give whole pages back).
  auto r = CacheLayout::create(uniform_latent_spec(2, {256, 256}, {256, 256}, storage, 16, window));
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return std::move(r).value();
}

Status run(BlockPool& pool, std::vector<PoolRequest> reqs) {
  auto p = pool.plan(reqs);
  if (!p.is_ok()) return p.status();
  return pool.commit(*p);
}

TEST(SharedBudgetTest, PoolsOfDifferentLayoutsShareOneBudget) {
  const CacheLayout f16 = layout_of(CacheStorage::kF16);
  const CacheLayout q4 = layout_of(CacheStorage::kQ4, 8);
  const uint64_t bb16 = f16.block_bytes();
  SharedBudget budget(10 * bb16);
  auto a = BlockPool::create(f16, &budget);
  auto b = BlockPool::create(q4, &budget);
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  ASSERT_TRUE(b.is_ok()) << b.status().to_string();
  BlockPool& pa = a.value();
  BlockPool& pb = b.value();
  EXPECT_EQ(pa.stats().free_blocks, 10);

  ASSERT_OK(run(pa, {PoolRequest::create(1), PoolRequest::append(1, 16 * 6)}));  // 6 blocks
  EXPECT_EQ(budget.used_bytes(), 6 * bb16);
  EXPECT_EQ(pa.stats().free_blocks, 4);
  // The q4 pool sees what is left of the budget, in its own (smaller) blocks.
  const uint64_t bbq = pb.layout().block_bytes();
  ASSERT_LT(bbq, bb16);
  EXPECT_EQ(pb.stats().free_blocks, (int64_t)(4 * bb16 / bbq));
  ASSERT_OK(run(pb, {PoolRequest::create(7)}));  // its window blocks
  const uint64_t window_bytes = (uint64_t)pb.layout().window_blocks() * bbq;
  EXPECT_EQ(budget.used_bytes(), 6 * bb16 + window_bytes);

  // More than the budget has: refused with the numbers, nothing changes.
  const int64_t more = (int64_t)((4 * bb16 - window_bytes) / bbq) + 1;
  auto too_much = pb.plan(PoolRequest::append(7, 16 * more));
  ASSERT_FALSE(too_much.is_ok());
  EXPECT_EQ(too_much.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(too_much.status().message().find("shared budget"), std::string::npos) << too_much.status().message();
  EXPECT_EQ(budget.used_bytes(), 6 * bb16 + window_bytes);

  // Freeing in one pool makes room in the other; a plan made before another pool's commit is
  // stale and changes nothing.
  auto stale = pb.plan(PoolRequest::append(7, 16));
  ASSERT_TRUE(stale.is_ok());
  ASSERT_OK(run(pa, {PoolRequest::free(1)}));
  const Status st = pb.commit(stale.value());
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.to_string();
  EXPECT_EQ(pb.length(7).value(), 0);
  ASSERT_OK(run(pb, {PoolRequest::append(7, 16 * more)}));
  EXPECT_EQ(budget.used_bytes(), window_bytes + (uint64_t)more * bbq);
  ASSERT_OK(pa.check_invariants());
  ASSERT_OK(pb.check_invariants());
}

TEST(SharedBudgetTest, NeverOverTheBudgetUnderRandomTraffic) {
  const CacheLayout layouts[3] = {layout_of(CacheStorage::kF16), layout_of(CacheStorage::kQ4, 8),
                                  layout_of(CacheStorage::kQ2, 16)};
  SharedBudget budget(7 * layouts[0].block_bytes() + 1234);
  std::vector<BlockPool> pools;
  for (const CacheLayout& l : layouts) {
    auto p = BlockPool::create(l, &budget);
    ASSERT_TRUE(p.is_ok()) << p.status().to_string();
    pools.push_back(std::move(p).value());
  }
  std::mt19937 rng(11);
  int refused = 0;
  for (int step = 0; step < 2000; ++step) {
    BlockPool& pool = pools[rng() % 3];
    const SeqId s = (SeqId)(rng() % 4);
    std::vector<PoolRequest> reqs;
    if (!pool.has_sequence(s)) reqs.push_back(PoolRequest::create(s));
    else if (rng() % 4 == 0) reqs.push_back(PoolRequest::free(s));
    else if (rng() % 3 == 0) reqs.push_back(PoolRequest::truncate(s, pool.length(s).value() / 2));
    else reqs.push_back(PoolRequest::append(s, 1 + rng() % 40));
    const Status st = run(pool, reqs);
    if (!st.is_ok()) {
      ASSERT_EQ(st.code(), StatusCode::kResourceExhausted) << st.to_string();
      ++refused;
    }
    uint64_t sum = 0;
    for (const BlockPool& p : pools) {
      ASSERT_OK(p.check_invariants());
      sum += p.stats().used_bytes;
    }
    ASSERT_EQ(sum, budget.used_bytes());
    ASSERT_LE(budget.used_bytes(), budget.capacity_bytes());
  }
  EXPECT_GT(refused, 0) << "the traffic never reached the budget: the test checks nothing";
}

TEST(SharedBudgetTest, DestroyedOrMovedOverPoolsGiveTheirBytesBack) {
  const CacheLayout f16 = layout_of(CacheStorage::kF16);
  SharedBudget budget(8 * f16.block_bytes());
  {
    auto a = BlockPool::create(f16, &budget);
    ASSERT_TRUE(a.is_ok());
    ASSERT_OK(run(a.value(), {PoolRequest::create(1), PoolRequest::append(1, 40)}));  // 3 blocks
    EXPECT_EQ(budget.used_bytes(), 3 * f16.block_bytes());
    BlockPool moved = std::move(a).value();
    EXPECT_EQ(budget.used_bytes(), 3 * f16.block_bytes());  // the charge moved with the pool
    auto b = BlockPool::create(f16, &budget);
    ASSERT_TRUE(b.is_ok());
    ASSERT_OK(run(b.value(), {PoolRequest::create(1), PoolRequest::append(1, 16)}));
    EXPECT_EQ(budget.used_bytes(), 4 * f16.block_bytes());
    moved = std::move(b).value();  // the overwritten pool's 3 blocks come back
    EXPECT_EQ(budget.used_bytes(), 1 * f16.block_bytes());
    ASSERT_OK(moved.check_invariants());
  }
  EXPECT_EQ(budget.used_bytes(), 0u);
}

TEST(SharedBudgetTest, AReleasedBlockIsGivenBackAndReadsAsZerosWhenTakenAgain) {
  const CacheLayout f16 = layout_of(CacheStorage::kF16);
  SharedBudget budget(2 * f16.block_bytes());
  auto r = BlockPool::create(f16, &budget);
  ASSERT_TRUE(r.is_ok());
  BlockPool& pool = r.value();
  ASSERT_OK(run(pool, {PoolRequest::create(1), PoolRequest::append(1, 16)}));
  std::vector<float> z(256, 0.75f), out(256);
  for (int t = 0; t < 16; ++t) ASSERT_OK(pool.write_token(1, t, 1, Proj::kValue, 1, z.data()));
  ASSERT_OK(pool.read_token(1, 15, 1, Proj::kValue, 1, out.data()));
  EXPECT_EQ(out[255], 0.75f);
  ASSERT_OK(run(pool, {PoolRequest::free(1), PoolRequest::create(2), PoolRequest::append(2, 16)}));
  // The same block (the free list is a stack), its pages given back in between: zeros, not the
  // old values (block_bytes is a whole number of pages here).
  ASSERT_OK(pool.read_token(2, 15, 1, Proj::kValue, 1, out.data()));
  EXPECT_EQ(out[255], 0.0f);
}

TEST(SharedBudgetTest, TooSmallBudgetIsAClearError) {
  const CacheLayout f16 = layout_of(CacheStorage::kF16);
  SharedBudget budget(f16.block_bytes() - 1);
  auto r = BlockPool::create(f16, &budget);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("smaller than one block"), std::string::npos) << r.status().message();
  EXPECT_EQ(BlockPool::create(f16, nullptr).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace palu::cache
