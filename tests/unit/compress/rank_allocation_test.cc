#include "tools/compress/rank_allocation.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace palu::compress {
namespace {

ProjectionSpec spec(const std::string& name, int groups, int width, double score = 1.0) {
  return ProjectionSpec{name, std::vector<int>(groups, width), std::vector<double>(groups, score)};
}

RankAllocationOptions opts(RankSearch m, double ratio, int align = 32) {
  return RankAllocationOptions{m, ratio, align};
}

// The invariants every allocation must satisfy.
void check_invariants(const std::vector<ProjectionSpec>& ps, const RankAllocationOptions& o,
                      const RankAllocation& a) {
  ASSERT_EQ(a.ranks.size(), ps.size());
  int64_t total = 0, width = 0, min_total = 0, max_total = 0;
  for (size_t p = 0; p < ps.size(); ++p) {
    ASSERT_EQ(a.ranks[p].size(), ps[p].group_widths.size());
    for (size_t g = 0; g < ps[p].group_widths.size(); ++g) {
      const int r = a.ranks[p][g], w = ps[p].group_widths[g];
      EXPECT_EQ(r % o.align, 0) << ps[p].name << " group " << g;
      EXPECT_GE(r, o.align);
      EXPECT_LE(r, w);
      total += r;
      width += w;
      min_total += o.align;
      max_total += w;
    }
    // Each projection within one alignment unit of its (clamped) share.
    EXPECT_LE(std::abs(static_cast<double>(a.projection_rank(p)) - a.target_ranks[p]),
              o.align + 1e-9)
        << ps[p].name;
  }
  EXPECT_EQ(total, a.total_rank);
  EXPECT_EQ(width, a.total_width);
  EXPECT_DOUBLE_EQ(a.budget_rank, o.ratio * static_cast<double>(width));
  EXPECT_DOUBLE_EQ(a.achieved_ratio, static_cast<double>(total) / static_cast<double>(width));
  // Globally within half a unit of the budget, where the bounds allow it.
  const double reachable =
      std::clamp(a.budget_rank, static_cast<double>(min_total), static_cast<double>(max_total));
  EXPECT_LE(std::abs(static_cast<double>(total) - reachable), 0.5 * o.align + 1e-9);
}

TEST(RankAllocationTest, UniformExactWhenRatioTimesWidthIsAligned) {
  std::vector<ProjectionSpec> ps;
  for (int l = 0; l < 4; ++l) {
    ps.push_back(spec("layers." + std::to_string(l) + ".k_proj", 2, 256));
    ps.push_back(spec("layers." + std::to_string(l) + ".v_proj", 2, 256));
  }
  auto a = allocate_ranks(ps, opts(RankSearch::kUniform, 0.5));
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  check_invariants(ps, opts(RankSearch::kUniform, 0.5), *a);
  for (int r : a->flat()) EXPECT_EQ(r, 128);
  EXPECT_DOUBLE_EQ(a->achieved_ratio, 0.5);

  auto full = allocate_ranks(ps, opts(RankSearch::kUniform, 1.0));
  ASSERT_TRUE(full.is_ok());
  for (int r : full->flat()) EXPECT_EQ(r, 256);
}

TEST(RankAllocationTest, UniformUnalignedSpreadsRoundingEvenly) {
  // ρ·w = 0.3·128 = 38.4: 1.2 units per group; 4 groups per projection → 4.8 units.
  std::vector<ProjectionSpec> ps = {spec("k0", 4, 128), spec("v0", 4, 128), spec("k1", 4, 128)};
  const auto o = opts(RankSearch::kUniform, 0.3);
  auto a = allocate_ranks(ps, o);
  ASSERT_TRUE(a.is_ok());
  check_invariants(ps, o, *a);
  EXPECT_EQ(a->total_rank, 448);  // budget 0.3 · 1536 = 460.8 = 14.4 units → 14
  for (size_t p = 0; p < ps.size(); ++p) {
    const auto [lo, hi] = std::minmax_element(a->ranks[p].begin(), a->ranks[p].end());
    EXPECT_LE(*hi - *lo, 32) << "equal targets differ by at most one unit";
    EXPECT_LE(std::abs(a->projection_rank(p) - 0.3 * 512), 32.0);
  }
}

TEST(RankAllocationTest, FisherUniformIsProportionalToProjectionScore) {
  // Budget 0.5 · 1024 = 512 = 16 units; scores 3 : 1 → 12 and 4 units, split over 4 groups.
  std::vector<ProjectionSpec> ps = {spec("k", 4, 128, 3.0), spec("v", 4, 128, 1.0)};
  auto a = allocate_ranks(ps, opts(RankSearch::kFisherUniform, 0.5));
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  check_invariants(ps, opts(RankSearch::kFisherUniform, 0.5), *a);
  EXPECT_EQ(a->ranks[0], std::vector<int>(4, 96));
  EXPECT_EQ(a->ranks[1], std::vector<int>(4, 32));
  EXPECT_DOUBLE_EQ(a->target_ranks[0], 384.0);

  // Group scores inside a projection only matter through their (width-weighted) mean.
  ps[0].group_scores = {6.0, 0.0, 6.0, 0.0};
  auto b = allocate_ranks(ps, opts(RankSearch::kFisherUniform, 0.5));
  ASSERT_TRUE(b.is_ok());
  EXPECT_EQ(b->ranks, a->ranks);
}

TEST(RankAllocationTest, FisherIsProportionalToGroupScore) {
  // Budget 0.5 · 1024 = 512 = 16 units; scores 4 : 2 : 1 : 1 → 8, 4, 2, 2 units.
  std::vector<ProjectionSpec> ps = {spec("k", 2, 256), spec("v", 2, 256)};
  ps[0].group_scores = {4.0, 2.0};
  ps[1].group_scores = {1.0, 1.0};
  auto a = allocate_ranks(ps, opts(RankSearch::kFisher, 0.5));
  ASSERT_TRUE(a.is_ok());
  check_invariants(ps, opts(RankSearch::kFisher, 0.5), *a);
  EXPECT_EQ(a->flat(), (std::vector<int>{256, 128, 64, 64}));
}

TEST(RankAllocationTest, CappedGroupsGiveTheirSurplusToOthers) {
  // Group 0 wants 7.8 units but holds 4 (full rank 128); the other three share 4 units
  // (4/3 each → 2, 1, 1; the tie goes to the lower index).
  std::vector<ProjectionSpec> ps = {spec("k", 4, 128)};
  ps[0].group_scores = {100.0, 1.0, 1.0, 1.0};
  const auto o = opts(RankSearch::kFisher, 0.5);
  auto a = allocate_ranks(ps, o);
  ASSERT_TRUE(a.is_ok());
  check_invariants(ps, o, *a);
  EXPECT_EQ(a->flat(), (std::vector<int>{128, 64, 32, 32}));
  EXPECT_EQ(a->total_rank, 256);

  // A zero score still gets the minimum, one alignment unit.
  ps[0].group_scores = {1.0, 0.0, 1.0, 1.0};
  auto z = allocate_ranks(ps, o);
  ASSERT_TRUE(z.is_ok());
  check_invariants(ps, o, *z);
  EXPECT_EQ(z->ranks[0][1], 32);
}

TEST(RankAllocationTest, TinyRatioFloorsAtOneUnitAndReportsTheAchievedRatio) {
  std::vector<ProjectionSpec> ps = {spec("k", 8, 64), spec("v", 8, 64)};
  const auto o = opts(RankSearch::kUniform, 0.05);
  auto a = allocate_ranks(ps, o);
  ASSERT_TRUE(a.is_ok());
  check_invariants(ps, o, *a);
  for (int r : a->flat()) EXPECT_EQ(r, 32);
  EXPECT_DOUBLE_EQ(a->achieved_ratio, 0.5);
}

TEST(RankAllocationTest, RandomSpecsKeepEveryInvariantAndAreDeterministic) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 200; ++trial) {
    const int align = std::vector<int>{8, 16, 32}[rng() % 3];
    std::vector<ProjectionSpec> ps;
    const int num_proj = 1 + static_cast<int>(rng() % 12);
    const int groups = 1 + static_cast<int>(rng() % 8);  // same grouping in every projection
    const int width = align * (1 + static_cast<int>(rng() % 16));
    for (int p = 0; p < num_proj; ++p) {
      ProjectionSpec s = spec(std::string("p").append(std::to_string(p)), groups, width);
      for (double& sc : s.group_scores) sc = 0.01 + static_cast<double>(rng() % 1000) / 100.0;
      ps.push_back(s);
    }
    const double ratio = 0.01 + 0.99 * static_cast<double>(rng() % 1000) / 999.0;
    for (RankSearch m : {RankSearch::kUniform, RankSearch::kFisherUniform, RankSearch::kFisher}) {
      const auto o = opts(m, ratio, align);
      auto a = allocate_ranks(ps, o);
      ASSERT_TRUE(a.is_ok()) << a.status().to_string();
      SCOPED_TRACE(std::string(rank_search_name(m)) + " trial " + std::to_string(trial));
      check_invariants(ps, o, *a);
      auto again = allocate_ranks(ps, o);
      ASSERT_TRUE(again.is_ok());
      EXPECT_EQ(again->ranks, a->ranks);
      if (m != RankSearch::kFisher) {
        for (const auto& pr : a->ranks) {
          const auto [lo, hi] = std::minmax_element(pr.begin(), pr.end());
          EXPECT_LE(*hi - *lo, align);
        }
      }
    }
  }
}

TEST(RankAllocationTest, RejectsBadOptionsAndSpecsClearly) {
  std::vector<ProjectionSpec> ps = {spec("layers.0.k_proj", 2, 128)};
  for (double bad : {0.0, -0.5, 1.5, std::nan("")}) {
    Status st = allocate_ranks(ps, opts(RankSearch::kUniform, bad)).status();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("ratio must be in (0, 1]"), std::string::npos) << st.message();
  }
  Status st = allocate_ranks(ps, opts(RankSearch::kUniform, 0.5, 0)).status();
  EXPECT_NE(st.message().find("align must be >= 1, got 0"), std::string::npos) << st.message();
  st = allocate_ranks(ps, opts(RankSearch::kUniform, 0.5, 48)).status();
  EXPECT_NE(st.message().find("align 48 must divide the group width 128"), std::string::npos)
      << st.message();
  EXPECT_NE(st.message().find("layers.0.k_proj"), std::string::npos);
  EXPECT_EQ(allocate_ranks(ps, opts(RankSearch::kUniform, 0.5, 256)).status().code(),
            StatusCode::kInvalidArgument);  // align larger than the group

  EXPECT_EQ(allocate_ranks({}, opts(RankSearch::kUniform, 0.5)).status().code(),
            StatusCode::kInvalidArgument);
  ps[0].group_scores = {1.0};
  st = allocate_ranks(ps, opts(RankSearch::kFisher, 0.5)).status();
  EXPECT_NE(st.message().find("needs one score per group (2), got 1"), std::string::npos)
      << st.message();
  EXPECT_TRUE(allocate_ranks(ps, opts(RankSearch::kUniform, 0.5)).is_ok());  // scores unused
  ps[0].group_scores = {1.0, -1.0};
  EXPECT_EQ(allocate_ranks(ps, opts(RankSearch::kFisherUniform, 0.5)).status().code(),
            StatusCode::kInvalidArgument);
  ps[0].group_scores = {0.0, 0.0};
  st = allocate_ranks(ps, opts(RankSearch::kFisherUniform, 0.5)).status();
  EXPECT_NE(st.message().find("every Fisher score is 0"), std::string::npos) << st.message();
  ps[0].group_widths = {128, 0};
  EXPECT_EQ(allocate_ranks(ps, opts(RankSearch::kUniform, 0.5)).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(RankAllocationTest, ParsesMethodNames) {
  for (RankSearch m : {RankSearch::kUniform, RankSearch::kFisherUniform, RankSearch::kFisher}) {
    auto p = parse_rank_search(rank_search_name(m));
    ASSERT_TRUE(p.is_ok());
    EXPECT_EQ(*p, m);
  }
  Status st = parse_rank_search("fisher-uniform").status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("'fisher-uniform'"), std::string::npos);
}

}  // namespace
}  // namespace palu::compress
