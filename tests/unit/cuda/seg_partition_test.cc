// The sm_90a pair schedule's segmented partition (detail::seg_partition): host code, so these
// run without a GPU. The kernel trusts it to cover every tile once, in at most the blocks it was
// given, with the split slots (first, count) it reports.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "backends/cuda/attention_cuda_internal.h"

namespace palu::backends::cuda::detail {
namespace {

struct Load {
  int blocks = 0;
  long long most = 0;  // the largest block load: tiles + cost per change of group
  int most_tiles = 0;  // the largest block's tiles
};

// Checks everything the kernel relies on and returns the blocks' loads.
Load check_partition(int groups, int tiles, int nb, int cost) {
  std::vector<int> lo, first, count;
  const int most = seg_partition(groups, tiles, nb, cost, lo, first, count);
  const long long W = (long long)groups * tiles;
  Load r;
  EXPECT_GE(lo.size(), 2u);
  if (lo.size() < 2) return r;
  r.blocks = (int)lo.size() - 1;
  EXPECT_EQ(lo.front(), 0);
  EXPECT_EQ(lo.back(), W);
  EXPECT_LE(r.blocks, nb);
  for (size_t y = 0; y + 1 < lo.size(); ++y) {
    EXPECT_LT(lo[y], lo[y + 1]) << "block " << y << " is empty";
    const int g0 = lo[y] / tiles, g1 = (lo[y + 1] - 1) / tiles;
    r.most = std::max(r.most, (long long)(lo[y + 1] - lo[y]) + (long long)cost * (g1 - g0));
    r.most_tiles = std::max(r.most_tiles, lo[y + 1] - lo[y]);
  }
  EXPECT_EQ(first.size(), (size_t)groups);
  EXPECT_EQ(count.size(), (size_t)groups);
  int most_count = 0;
  for (int g = 0; g < groups && (size_t)g < first.size() && (size_t)g < count.size(); ++g) {
    const int y = first[g];
    EXPECT_LE(lo[y], g * tiles);
    EXPECT_GT(lo[y + 1], g * tiles) << "group " << g;
    // count: the blocks from first[g] to the one holding the group's last tile
    int last = y;
    while (lo[last + 1] < (g + 1) * tiles) ++last;
    EXPECT_EQ(count[g], last - y + 1) << "group " << g;
    most_count = std::max(most_count, count[g]);
  }
  EXPECT_EQ(most, most_count);
  return r;
}

TEST(SegPartition, CoversEveryTileOnceInAtMostTheBlocksGiven) {
  for (int groups : {1, 2, 3, 8, 16})
    for (int tiles : {1, 2, 3, 65, 1024})
      for (int nb : {1, 2, 3, 5, 37, 66, 200})
        for (int cost : {0, 1, 4}) {
          SCOPED_TRACE(testing::Message() << "groups " << groups << " tiles " << tiles << " blocks " << nb
                                          << " cost " << cost);
          check_partition(groups, tiles, nb, cost);
        }
}

TEST(SegPartition, WithoutACostTheBlocksAreEqualShares) {
  for (int groups : {1, 8, 16})
    for (int tiles : {3, 64, 1024})
      for (int nb : {1, 5, 66, 132}) {
        const long long W = (long long)groups * tiles;
        const Load r = check_partition(groups, tiles, nb, 0);
        EXPECT_EQ(r.most_tiles, (W + nb - 1) / nb) << groups << " × " << tiles << " over " << nb;
      }
}

TEST(SegPartition, TheBenchmarkShapes) {
  // 8 groups, 66 blocks per head pair (132 SMs, 2 head pairs per group), a change of group
  // charged 4 tiles: at 64K (1024 tiles per group) 66 blocks of load ≤ 125 (the 8 × 16 grid:
  // 128 tiles); at 4K (64 tiles) the 8 × 8 blocks of 8 tiles, no block crossing a group
  const Load k64 = check_partition(8, 1024, 66, 4);
  EXPECT_EQ(k64.blocks, 66);
  EXPECT_EQ(k64.most, 125);
  const Load k4 = check_partition(8, 64, 66, 4);
  EXPECT_EQ(k4.blocks, 64);
  EXPECT_EQ(k4.most, 8);
  EXPECT_EQ(k4.most_tiles, 8);
}

}  // namespace
}  // namespace palu::backends::cuda::detail
