// Op conformance on the Vulkan device: every op of vulkan_ops.h against the CPU scalar reference
// (backends/cpu/kernels_scalar.cc and the reference formulas of model/llama_model.cc) over
// small shapes, including sizes that are not multiples of the shaders' tiles. Tolerances: f32
// math in a different summation order → 2e-5 relative to the largest value for elementwise
// ops, 1e-4 for reductions over ≤ 1000 terms; cache encodings must be bit-exact.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "backends/cpu/kernels.h"
#include "cache/latent_packing.h"
#include "tests/unit/vulkan/vulkan_test_util.h"

namespace palu::backends::vulkan {
namespace {

using namespace palu::backends::vulkan::testing;
const cpu::KernelTable& ref() {
  return cpu::scalar_kernels();
}

TEST(VulkanOps, Embedding) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  for (int d : {1, 70, 512}) {
    const int vocab = 37, n = 5;
    auto emb = random_floats((size_t)vocab * d, 1);
    std::vector<int32_t> tok = {0, 36, 5, 5, 17};
    for (WeightType wt : {WeightType::kF32, WeightType::kF16}) {
      VulkanBuffer e = wt == WeightType::kF16 ? to_device(ctx, to_f16(emb)) : to_device(ctx, emb);
      VulkanBuffer t = to_device(ctx, tok);
      VulkanBuffer x = device_buffer(ctx, (size_t)n * d * 4);
      Recorder rec(ctx);
      embed(rec, t.address(), e.address(), wt, x.address(), n, d, vocab);
      ASSERT_TRUE(rec.submit("embed").is_ok());
      auto got = from_device<float>(ctx, x, (size_t)n * d);
      const auto src = wt == WeightType::kF16 ? round_f16(emb) : emb;
      std::vector<float> want((size_t)n * d);
      for (int r = 0; r < n; ++r)
        std::memcpy(&want[(size_t)r * d], &src[(size_t)tok[r] * d], d * 4);
      expect_near_all(got, want, 0, 0, "embed d=" + std::to_string(d));
    }
  }
}

TEST(VulkanOps, RmsNorm) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  for (int n : {1, 63, 64, 513}) {
    const int rows = 3;
    auto x = random_floats((size_t)rows * n, 2, -3, 3), w = random_floats(n, 3);
    VulkanBuffer xb = to_device(ctx, x), wb = to_device(ctx, w),
                 yb = device_buffer(ctx, x.size() * 4);
    Recorder rec(ctx);
    rms_norm(rec, xb.address(), wb.address(), yb.address(), rows, n, n, 1e-5f);
    ASSERT_TRUE(rec.submit("rmsnorm").is_ok());
    std::vector<float> want(x.size());
    for (int r = 0; r < rows; ++r)
      ref().rms_norm(&x[(size_t)r * n], w.data(), 1e-5f, &want[(size_t)r * n], n);
    expect_near_all(from_device<float>(ctx, yb, x.size()), want, 1e-5f, 0,
                    "rmsnorm n=" + std::to_string(n));
  }
}

// The reference rotate-half RoPE (LlamaModel::apply_rope's rounding) with the table the model
// uploads.
void rope_table(int dh, int positions, double theta, std::vector<float>* table) {
  const int half = dh / 2;
  table->assign((size_t)2 * positions * half, 0.f);
  for (int t = 0; t < positions; ++t) {
    for (int i = 0; i < half; ++i) {
      const float inv =
          1.0f / (float)std::pow((double)(float)theta, (double)((float)(2 * i) / (float)dh));
      const float angle = (float)t * inv;
      (*table)[(size_t)t * half + i] = (float)std::cos((double)angle);
      (*table)[(size_t)positions * half + (size_t)t * half + i] = (float)std::sin((double)angle);
    }
  }
}

TEST(VulkanOps, Rope) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  for (int dh : {16, 64}) {
    const int rows = 5, heads = 3, ld = heads * dh + 4, pos0 = 7, P = 64, half = dh / 2;
    std::vector<float> table;
    rope_table(dh, P, 10000.0, &table);
    auto x = random_floats((size_t)rows * ld, 4);
    VulkanBuffer xb = to_device(ctx, x), tb = to_device(ctx, table);
    Recorder rec(ctx);
    rope(rec, xb.address(), tb.address(), rows, ld, heads, dh, pos0, (uint32_t)(P * half));
    ASSERT_TRUE(rec.submit("rope").is_ok());
    std::vector<float> want = x;
    for (int r = 0; r < rows; ++r) {
      const float* c = &table[(size_t)(pos0 + r) * half];
      const float* s = &table[(size_t)P * half + (size_t)(pos0 + r) * half];
      for (int h = 0; h < heads; ++h) {
        float* v = &want[(size_t)r * ld + h * dh];
        for (int i = 0; i < half; ++i) {
          const float x0 = v[i], x1 = v[i + half];
          v[i] = x0 * c[i] - x1 * s[i];
          v[i + half] = x1 * c[i] + x0 * s[i];
        }
      }
    }
    expect_near_all(from_device<float>(ctx, xb, x.size()), want, 0, 0,
                    "rope dh=" + std::to_string(dh));
  }
}

struct MatCase {
  int M, N, K;
};

TEST(VulkanOps, MatMulTiledAndMatVecF32AndF16Weights) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  const MatCase cases[] = {{1, 1, 1},   {1, 130, 70},  {3, 17, 33},    {4, 64, 64},
                           {5, 64, 64}, {67, 129, 45}, {128, 96, 200}, {2, 8000, 16}};
  for (const MatCase& mc : cases) {
    for (WeightType wt : {WeightType::kF32, WeightType::kF16}) {
      for (int variant = 0; variant < 9; ++variant) {  // {plain, bias, accumulate} × kernel
        const bool use_bias = variant % 3 == 1, acc = variant % 3 == 2;
        const MatmulKernel kern = variant / 3 == 0 ? MatmulKernel::kTiled
                                  : variant / 3 == 1
                                      ? (mc.M <= 4 ? MatmulKernel::kVector : MatmulKernel::kTiled)
                                      : MatmulKernel::kSubgroup;
        if (kern == MatmulKernel::kSubgroup && !ctx->subgroup_arithmetic()) continue;
        auto a = random_floats((size_t)mc.M * mc.K, 5), w = random_floats((size_t)mc.N * mc.K, 6);
        auto bias = random_floats(mc.N, 7), c0 = random_floats((size_t)mc.M * mc.N, 8);
        const auto wr = wt == WeightType::kF16 ? round_f16(w) : w;
        VulkanBuffer ab = to_device(ctx, a), bb = to_device(ctx, bias), cb = to_device(ctx, c0);
        VulkanBuffer wb = wt == WeightType::kF16 ? to_device(ctx, to_f16(w)) : to_device(ctx, w);
        Recorder rec(ctx);
        matmul(rec, ab.address(), mc.K, wb.address(), wt, cb.address(), mc.N, mc.M, mc.N, mc.K,
               use_bias ? bb.address() : 0, acc, kern);
        ASSERT_TRUE(rec.submit("matmul").is_ok());
        std::vector<float> want((size_t)mc.M * mc.N);
        for (int i = 0; i < mc.M; ++i) {
          for (int j = 0; j < mc.N; ++j) {
            double s = 0;
            for (int k = 0; k < mc.K; ++k)
              s += (double)a[(size_t)i * mc.K + k] * wr[(size_t)j * mc.K + k];
            if (use_bias) s += bias[j];
            if (acc) s += c0[(size_t)i * mc.N + j];
            want[(size_t)i * mc.N + j] = (float)s;
          }
        }
        expect_near_all(from_device<float>(ctx, cb, want.size()), want, 1e-5f,
                        1e-5f * std::sqrt((float)mc.K),
                        "matmul " + std::to_string(mc.M) + "x" + std::to_string(mc.N) + "x" +
                            std::to_string(mc.K) + " wt " + std::to_string((int)wt) + " variant " +
                            std::to_string(variant));
      }
    }
  }
}

TEST(VulkanOps, SiluMulAddSoftmax) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  for (int n : {1, 63, 1000}) {
    auto g = random_floats(n, 9, -6, 6), u = random_floats(n, 10), y = random_floats(n, 11);
    VulkanBuffer gb = to_device(ctx, g), ub = to_device(ctx, u), yb = to_device(ctx, y);
    const int rows = 3, cols = std::max(1, n / 3);
    auto sx = random_floats((size_t)rows * cols, 12, -8, 8);
    VulkanBuffer sb = to_device(ctx, sx);
    auto bias = random_floats(cols, 13);
    auto brow = random_floats((size_t)rows * cols, 14);
    VulkanBuffer biasb = to_device(ctx, bias), browb = to_device(ctx, brow);
    Recorder rec(ctx);
    silu_mul(rec, gb.address(), ub.address(), gb.address(), n);
    add(rec, ub.address(), yb.address(), n, n);
    softmax(rec, sb.address(), rows, cols, cols);
    add(rec, biasb.address(), browb.address(), (size_t)rows * cols, cols);
    ASSERT_TRUE(rec.submit("elementwise").is_ok());
    std::vector<float> ws(n), wa = y, wsm = sx, wb = brow;
    ref().silu_mul(g.data(), u.data(), ws.data(), n);
    ref().add(u.data(), wa.data(), n);
    for (int r = 0; r < rows; ++r) ref().softmax(&wsm[(size_t)r * cols], cols);
    for (int r = 0; r < rows; ++r) ref().add(bias.data(), &wb[(size_t)r * cols], cols);
    expect_near_all(from_device<float>(ctx, gb, n), ws, 2e-6f, 0, "silu_mul");
    expect_near_all(from_device<float>(ctx, yb, n), wa, 0, 0, "add");
    expect_near_all(from_device<float>(ctx, sb, sx.size()), wsm, 1e-5f, 1e-7f, "softmax");
    expect_near_all(from_device<float>(ctx, browb, brow.size()), wb, 0, 0, "bias add");
  }
}

// store_rows encodes exactly like cache::encode_row: compare the bytes of every row and the
// packed rows' scale and zero.
TEST(VulkanOps, StoreRowsEncodesLikeTheCache) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  for (RowStorage st : {RowStorage::kF32, RowStorage::kF16, RowStorage::kBF16, RowStorage::kQ8,
                        RowStorage::kQ4, RowStorage::kQ3, RowStorage::kQ2}) {
    for (int rank : {1, 5, 32, 40, 256}) {
      const int n = 6, cap = 9, pos0 = 2, src_ld = rank + 3, src_col = 2;
      auto src = random_floats((size_t)n * src_ld, 15 + rank, -4, 4);
      // one constant row (scale 0)
      for (int c = 0; c < rank; ++c) src[(size_t)3 * src_ld + src_col + c] = 0.75f;
      const size_t words = region_words(st, rank, cap);
      VulkanBuffer sb = to_device(ctx, src);
      VulkanBuffer rb = to_device(ctx, std::vector<uint32_t>(words, 0xdeadbeefu));
      Region reg{rb.address(), st, rank, cap};
      Recorder rec(ctx);
      store_rows(rec, sb.address(), src_ld, src_col, reg, n, pos0);
      ASSERT_TRUE(rec.submit("store_rows").is_ok());
      auto got = from_device<uint32_t>(ctx, rb, words);
      const size_t rw = row_words(st, rank), rb_bytes = row_storage_bytes(st, rank);
      for (int r = 0; r < n; ++r) {
        std::vector<uint8_t> want(rw * 4, 0);
        cache::QuantParams p;
        cache::encode_row(st, &src[(size_t)r * src_ld + src_col], rank, want.data(), &p);
        const uint8_t* g = reinterpret_cast<const uint8_t*>(&got[(size_t)(pos0 + r) * rw]);
        EXPECT_EQ(0, std::memcmp(g, want.data(), rb_bytes))
            << cache::storage_name(st) << " rank " << rank << " row " << r;
        if (row_storage_bits(st) > 0) {
          float sz[2];
          std::memcpy(sz, &got[(size_t)cap * rw + 2 * (pos0 + r)], 8);
          EXPECT_EQ(sz[0], p.scale) << cache::storage_name(st) << " rank " << rank << " row " << r;
          EXPECT_EQ(sz[1], p.zero) << cache::storage_name(st) << " rank " << rank << " row " << r;
        }
      }
    }
  }
}

// The f16 window of a packed region: store_rows writes positions ≥ window_begin, as
// f32_to_f16 (round to nearest even) values, into ring slot pos mod window after the
// parameters; earlier positions leave their slots alone; the packed rows are written as always.
TEST(VulkanOps, StoreRowsWritesTheWindowRing) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  for (RowStorage st : {RowStorage::kQ4, RowStorage::kQ3, RowStorage::kQ2}) {
    for (int rank : {1, 5, 40}) {
      const int n = 7, cap = 16, pos0 = 3, window = 4, window_begin = 6, src_ld = rank;
      auto src = random_floats((size_t)n * src_ld, 31 + rank, -4, 4);
      const size_t words = region_words(st, rank, cap, window);
      const size_t rw = row_words(st, rank), hw = (size_t)(rank + 1) / 2;
      ASSERT_EQ(words, rw * cap + 2 * (size_t)cap + window * hw);
      VulkanBuffer sb = to_device(ctx, src);
      VulkanBuffer rb = to_device(ctx, std::vector<uint32_t>(words, 0xdeadbeefu));
      Region reg{rb.address(), st, rank, cap, window, window_begin};
      Recorder rec(ctx);
      store_rows(rec, sb.address(), src_ld, 0, reg, n, pos0);
      ASSERT_TRUE(rec.submit("store_rows").is_ok());
      auto got = from_device<uint32_t>(ctx, rb, words);
      const uint16_t* ring = reinterpret_cast<const uint16_t*>(&got[rw * cap + 2 * (size_t)cap]);
      std::vector<int> written(window, -1);  // position each slot must hold
      for (int p = std::max(pos0, window_begin); p < pos0 + n; ++p) written[p % window] = p;
      for (int slot = 0; slot < window; ++slot) {
        for (int c = 0; c < rank; ++c) {
          const uint16_t g = ring[(size_t)slot * 2 * hw + c];
          if (written[slot] < 0) {
            EXPECT_EQ(g, (c & 1) ? 0xdeadu : 0xbeefu) << "slot " << slot << " was written";
          } else {
            EXPECT_EQ(g, f32_to_f16(src[(size_t)(written[slot] - pos0) * src_ld + c]))
                << cache::storage_name(st) << " rank " << rank << " slot " << slot << " c " << c;
          }
        }
      }
      // The packed row of a windowed position is written too (it is read once it ages out).
      std::vector<uint8_t> want(rw * 4, 0);
      cache::QuantParams qp;
      cache::encode_row(st, &src[(size_t)(n - 1) * src_ld], rank, want.data(), &qp);
      EXPECT_EQ(0, std::memcmp(&got[(size_t)(pos0 + n - 1) * rw], want.data(),
                               row_storage_bytes(st, rank)));
    }
  }
}

}  // namespace
}  // namespace palu::backends::vulkan
