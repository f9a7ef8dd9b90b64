// The fused latent kernel (backends/cpu/latent_attention.h) on paged rows laid out like the block
// pool (cache/cache_layout.h: per block, segments (K g0, K g1, .., V g0, ..), each
// "scales f32[bt], zeros f32[bt], codes [bt][row_bytes]" for B-bit storage or "rows
// [bt][row_bytes]" otherwise, padded to 4 bytes; the sequence's blocks a random subset of the arena
// in random order, block_tokens 16):
//   * paged == contiguous descriptor of the same data, bit for bit, with and without the
//     precomputed B^Kᵀ and the key bias, every storage, scalar, AVX2 and AVX-512;
//   * the f16 window overlay (rows ≥ window_begin read from f16 rows) == the contiguous kernel on
//     float32 rows holding the same values (≤ 1e-6 relative);
//   * decode_latent_rows over block and window boundaries returns those values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/cpu/latent_attention.h"

namespace palu::backends::cpu {
namespace {

constexpr int kBt = 16;  // block_tokens

void pack_code(uint8_t* row, int i, int bits, uint32_t code) {
  for (int b = 0; b < bits; ++b) {
    const size_t bit = (size_t)i * bits + b;
    if ((code >> b) & 1u) row[bit / 8] |= (uint8_t)(1u << (bit % 8));
  }
}

// One token's row of `rank` values encoded in `st` into `row` (+ scale/zero for packed types);
// returns the dequantized values (the two-rounding q·scale + zero of the cache's decoder).
std::vector<float> encode_row(LatentStorage st, const float* z, int rank, uint8_t* row,
                              float* scale, float* zero) {
  std::vector<float> d(rank);
  const int bits = latent_storage_bits(st);
  if (st == LatentStorage::kF32) {
    std::memcpy(row, z, (size_t)rank * 4);
    std::copy(z, z + rank, d.begin());
  } else if (bits == 0) {
    for (int i = 0; i < rank; ++i) {
      const uint16_t h = st == LatentStorage::kF16 ? f32_to_f16(z[i]) : f32_to_bf16(z[i]);
      std::memcpy(row + 2 * i, &h, 2);
      d[i] = st == LatentStorage::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
  } else {
    float mn = z[0], mx = z[0];
    for (int i = 0; i < rank; ++i) mn = std::min(mn, z[i]), mx = std::max(mx, z[i]);
    const float qmax = (float)((1 << bits) - 1);
    const float s = (mx - mn) / qmax;
    *scale = s;
    *zero = mn;
    for (int i = 0; i < rank; ++i) {
      const float q =
          s == 0.f ? 0.f : std::min(qmax, std::max(0.f, std::nearbyint((z[i] - mn) * (1.f / s))));
      pack_code(row, i, bits, (uint32_t)q);
      const volatile float prod = q * s;  // two roundings, like cache::decode_row
      d[i] = prod + mn;
    }
  }
  return d;
}

// One layer's latents of G groups (K and V), stored three ways: contiguous, paged like the pool,
// and as float32 rows holding exactly the values a kernel must see (window values where the
// window covers the row).
struct Latents {
  int T = 0, G = 0;
  LatentStorage st = LatentStorage::kF16;
  std::vector<int> k_ranks, v_ranks;
  // contiguous, per (kv, g)
  std::vector<std::vector<uint8_t>> c_rows;
  std::vector<std::vector<float>> c_scale, c_zero;
  // paged arena
  std::vector<uint8_t> arena;
  size_t block_bytes = 0;
  std::vector<size_t> seg_off;  // per (kv, g)
  std::vector<int32_t> block_ids;
  // window: f16 rows per (kv, g) for t ≥ window_begin
  int64_t window_begin = -1;
  std::vector<std::vector<std::vector<uint16_t>>> win;
  std::vector<std::vector<const uint16_t*>> win_ptrs;
  // what the kernel must read, float32 [T, rank], per (kv, g)
  std::vector<std::vector<float>> values;

  int rank(int kv, int g) const { return kv == 0 ? k_ranks[g] : v_ranks[g]; }
  int seg(int kv, int g) const { return kv * G + g; }

  LatentRows contiguous(int kv, int g) const {
    LatentRows r;
    r.storage = st;
    r.rank = rank(kv, g);
    r.rows = c_rows[seg(kv, g)].data();
    if (latent_storage_bits(st) != 0) {
      r.scale = c_scale[seg(kv, g)].data();
      r.zero = c_zero[seg(kv, g)].data();
    }
    return r;
  }
  LatentRows paged(int kv, int g, bool with_window) const {
    LatentRows r;
    r.storage = st;
    r.rank = rank(kv, g);
    const uint8_t* s = arena.data() + seg_off[seg(kv, g)];
    if (latent_storage_bits(st) != 0) {
      r.scale = reinterpret_cast<const float*>(s);
      r.zero = reinterpret_cast<const float*>(s + 4 * kBt);
      r.rows = s + 8 * kBt;
    } else {
      r.rows = s;
    }
    r.block_tokens = kBt;
    r.block_ids = block_ids.data();
    r.block_stride_bytes = block_bytes;
    if (with_window && window_begin >= 0) {
      r.window_begin = window_begin;
      r.window_rows = win_ptrs[seg(kv, g)].data();
    }
    return r;
  }
  // float32 contiguous rows of the values the kernel must see.
  LatentRows materialized(int kv, int g) const {
    LatentRows r;
    r.storage = LatentStorage::kF32;
    r.rank = rank(kv, g);
    r.rows = values[seg(kv, g)].data();
    return r;
  }
};

void make_latents(Latents& L, LatentStorage st, int T, std::vector<int> k_ranks,
                  std::vector<int> v_ranks, int window_tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  L.T = T;
  L.G = (int)k_ranks.size();
  L.st = st;
  L.k_ranks = std::move(k_ranks);
  L.v_ranks = std::move(v_ranks);
  const int nseg = 2 * L.G;
  const size_t param = latent_storage_bits(st) != 0 ? 8 : 0;
  L.seg_off.resize(nseg);
  L.block_bytes = 0;
  for (int kv = 0; kv < 2; ++kv) {
    for (int g = 0; g < L.G; ++g) {
      L.seg_off[L.seg(kv, g)] = L.block_bytes;
      const size_t bytes = (size_t)kBt * (latent_row_bytes(st, L.rank(kv, g)) + param);
      L.block_bytes += (bytes + 3) / 4 * 4;
    }
  }
  const int nblocks = (T + kBt - 1) / kBt, arena_blocks = 2 * nblocks + 3;
  L.arena.assign((size_t)arena_blocks * L.block_bytes, 0x5A);  // junk where nothing is written
  std::vector<int32_t> ids(arena_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  L.block_ids.assign(ids.begin(), ids.begin() + nblocks);
  L.window_begin = window_tokens > 0 ? std::max(0, T - window_tokens) : -1;

  L.c_rows.resize(nseg);
  L.c_scale.resize(nseg);
  L.c_zero.resize(nseg);
  L.win.resize(nseg);
  L.win_ptrs.resize(nseg);
  L.values.resize(nseg);
  for (int kv = 0; kv < 2; ++kv) {
    for (int g = 0; g < L.G; ++g) {
      const int sg = L.seg(kv, g), r = L.rank(kv, g);
      const size_t rb = latent_row_bytes(st, r);
      L.c_rows[sg].assign((size_t)T * rb, 0);
      L.c_scale[sg].assign(T, 0.f);
      L.c_zero[sg].assign(T, 0.f);
      L.values[sg].resize((size_t)T * r);
      std::vector<float> z(r);
      for (int t = 0; t < T; ++t) {
        for (auto& x : z) x = nd(rng);
        const std::vector<float> d =
            encode_row(st, z.data(), r, L.c_rows[sg].data() + (size_t)t * rb, &L.c_scale[sg][t],
                       &L.c_zero[sg][t]);
        // The same row in its block, as the pool lays it out.
        uint8_t* blk =
            L.arena.data() + (size_t)L.block_ids[t / kBt] * L.block_bytes + L.seg_off[sg];
        const int i = t % kBt;
        if (param != 0) {
          std::memset(blk + 8 * kBt + (size_t)i * rb, 0, rb);
          std::memcpy(blk + 4 * (size_t)i, &L.c_scale[sg][t], 4);
          std::memcpy(blk + 4 * (size_t)kBt + 4 * (size_t)i, &L.c_zero[sg][t], 4);
          std::memcpy(blk + 8 * kBt + (size_t)i * rb, L.c_rows[sg].data() + (size_t)t * rb, rb);
        } else {
          std::memcpy(blk + (size_t)i * rb, L.c_rows[sg].data() + (size_t)t * rb, rb);
        }
        float* v = L.values[sg].data() + (size_t)t * r;
        if (L.window_begin >= 0 && t >= L.window_begin) {
          // The window keeps the unquantized value in f16 (what the pool writes).
          std::vector<uint16_t> w(r);
          for (int u = 0; u < r; ++u) {
            w[u] = f32_to_f16(z[u]);
            v[u] = f16_to_f32(w[u]);
          }
          L.win[sg].push_back(std::move(w));
        } else {
          std::copy(d.begin(), d.end(), v);
        }
      }
      for (const auto& w : L.win[sg]) L.win_ptrs[sg].push_back(w.data());
    }
  }
}

struct Weights {
  LatentAttentionShape shape;
  std::vector<std::vector<float>> b_k, b_k_t, bias;  // per group
  std::vector<float> q, inv_freq;
};

Weights make_weights(const LatentAttentionShape& sh, const std::vector<int>& k_ranks,
                     uint32_t seed) {
  std::mt19937 rng(seed);
  Weights w;
  w.shape = sh;
  const int G = sh.num_kv_heads / sh.group_size, N = sh.group_size * sh.head_dim;
  for (int g = 0; g < G; ++g) {
    const int r = k_ranks[g];
    std::normal_distribution<float> nd(0.f, 1.f / std::sqrt((float)r));
    std::vector<float> b((size_t)N * r), bt((size_t)r * N), bias(N);
    for (auto& x : b) x = nd(rng);
    for (int n = 0; n < N; ++n)
      for (int p = 0; p < r; ++p) bt[(size_t)p * N + n] = b[(size_t)n * r + p];
    std::normal_distribution<float> bd(0.f, 0.5f);
    for (auto& x : bias) x = bd(rng);
    w.b_k.push_back(std::move(b));
    w.b_k_t.push_back(std::move(bt));
    w.bias.push_back(std::move(bias));
  }
  std::normal_distribution<float> qd(0.f, 1.5f);
  w.q.resize((size_t)sh.num_heads * sh.head_dim);
  for (auto& x : w.q) x = qd(rng);
  for (int i = 0; i < sh.head_dim / 2; ++i)
    w.inv_freq.push_back((float)std::pow(10000.0, -2.0 * i / sh.head_dim));
  return w;
}

enum class Layout { kContiguous, kPaged, kPagedWindow, kMaterialized };

std::vector<float> run_kernel(CpuIsa isa, const Latents& L, const Weights& w, Layout layout,
                              bool use_bt, bool use_bias) {
  std::vector<LatentGroupCache> groups(L.G);
  for (int g = 0; g < L.G; ++g) {
    LatentGroupCache& gc = groups[g];
    for (int kv = 0; kv < 2; ++kv) {
      LatentRows r;
      switch (layout) {
        case Layout::kContiguous:
          r = L.contiguous(kv, g);
          break;
        case Layout::kPaged:
          r = L.paged(kv, g, false);
          break;
        case Layout::kPagedWindow:
          r = L.paged(kv, g, true);
          break;
        case Layout::kMaterialized:
          r = L.materialized(kv, g);
          break;
      }
      (kv == 0 ? gc.k : gc.v) = r;
    }
    gc.b_k = w.b_k[g].data();
    if (use_bt) gc.b_k_t = w.b_k_t[g].data();
    if (use_bias) gc.k_bias = w.bias[g].data();
  }
  std::vector<float> out(latent_output_width(w.shape, groups.data()), -7.f);
  const Status st = latent_attention_decode_isa(isa, w.shape, groups.data(), L.T, L.T, w.q.data(),
                                                w.inv_freq.data(), out.data());
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  return out;
}

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0, scale = 1e-30;
  for (size_t i = 0; i < b.size(); ++i) scale = std::max(scale, (double)std::fabs(b[i]));
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, std::fabs((double)a[i] - b[i]));
  return m / scale;
}

const LatentStorage kAllStorages[] = {
    LatentStorage::kF32, LatentStorage::kF16, LatentStorage::kBF16, LatentStorage::kQ8,
    LatentStorage::kQ4,  LatentStorage::kQ3,  LatentStorage::kQ2};

bool skip_isa(CpuIsa isa) {
  if ((int)isa > (int)detect_cpu_isa()) {
    std::printf("skipping the %s kernel: this CPU has no %s\n", cpu_isa_name(isa), cpu_isa_name(isa));
    return true;
  }
  return false;
}

// H = 8, H_kv = 4, group size 2 (G = 2), d_h = 64; odd-sized ranks so packed rows end mid-byte.
const LatentAttentionShape kShape{8, 4, 64, 2};
const std::vector<int> kKRanks{64, 40}, kVRanks{48, 72};

TEST(LatentAttentionPaged, PagedEqualsContiguousBitForBit) {
  const Weights w = make_weights(kShape, kKRanks, 11);
  for (LatentStorage st : kAllStorages) {
    for (int T : {1, 16, 17, 200}) {
      Latents L;
      make_latents(L, st, T, kKRanks, kVRanks, 0, 100u + (uint32_t)T);
      for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
        if (skip_isa(isa)) continue;
        const std::vector<float> base = run_kernel(isa, L, w, Layout::kContiguous, false, false);
        for (int variant = 0; variant < 4; ++variant) {
          const bool bt = variant & 1, bias = variant & 2;
          const std::vector<float> c = run_kernel(isa, L, w, Layout::kContiguous, bt, bias);
          const std::vector<float> p = run_kernel(isa, L, w, Layout::kPaged, bt, bias);
          const std::string what = std::string(row_storage_name(st)) + " T=" + std::to_string(T) + " " +
                                   cpu_isa_name(isa) + (bt ? " b_k_t" : "") +
                                   (bias ? " k_bias" : "");
          EXPECT_EQ(0, std::memcmp(c.data(), p.data(), c.size() * sizeof(float))) << what;
          // The precomputed transpose is the same matrix: same bits as the kernel's own.
          if (!bias) {
            EXPECT_EQ(0, std::memcmp(c.data(), base.data(), c.size() * sizeof(float))) << what;
          }
          // The bias changes the keys, hence the result (unless one token: softmax = 1).
          if (bias && T > 1) {
            EXPECT_GT(max_rel(c, base), 1e-4) << what << ": bias ignored?";
          }
        }
      }
    }
  }
}

// Rows at t ≥ window_begin come from the f16 window: the result equals the contiguous kernel on
// float32 rows holding exactly those values (the stored rows for t < window_begin).
TEST(LatentAttentionPaged, WindowOverlayEqualsRowsReplacedByTheirF16Values) {
  const Weights w = make_weights(kShape, kKRanks, 12);
  for (LatentStorage st : kAllStorages) {
    for (auto [T, window] : {std::pair{200, 37}, std::pair{65, 16}, std::pair{20, 32}}) {
      Latents L;
      make_latents(L, st, T, kKRanks, kVRanks, window, 300u + (uint32_t)T);
      for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
        if (skip_isa(isa)) continue;
        for (bool bias : {false, true}) {
          const std::vector<float> ref = run_kernel(isa, L, w, Layout::kMaterialized, false, bias);
          const std::vector<float> got = run_kernel(isa, L, w, Layout::kPagedWindow, true, bias);
          const std::string what = std::string(row_storage_name(st)) + " T=" + std::to_string(T) +
                                   " window=" + std::to_string(window) + " " + cpu_isa_name(isa);
          // f32/f16/bf16 rows decode to the same floats: same bits. Packed rows: the vector
          // decoders' single FMA may differ from q·scale + zero by an ulp.
          if (latent_storage_bits(st) == 0 || isa == CpuIsa::kScalar) {
            EXPECT_EQ(0, std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float))) << what;
          } else {
            EXPECT_LE(max_rel(got, ref), 1e-6) << what;
          }
          // And the window really is read: without it the (quantized) stored rows give another
          // answer for packed storage.
          if (latent_storage_bits(st) != 0) {
            const std::vector<float> no_win = run_kernel(isa, L, w, Layout::kPaged, true, bias);
            EXPECT_GT(max_rel(no_win, ref), 1e-6) << what << ": window ignored?";
          }
        }
      }
    }
  }
}

// decode_latent_rows over spans crossing block and window boundaries returns the values the
// kernel must see; a window_begin ≥ T reads only stored rows.
TEST(LatentAttentionPaged, DecodeLatentRowsHonoursPagingAndWindow) {
  for (LatentStorage st : kAllStorages) {
    Latents L;
    const int T = 83;
    make_latents(L, st, T, {40}, {56}, 30, 500u);  // window_begin = 53
    const std::pair<int, int> spans[] = {{0, T},   {0, 1},   {15, 2}, {14, 20},
                                         {50, 10}, {53, 30}, {82, 1}, {31, 40}};
    for (int kv = 0; kv < 2; ++kv) {
      const int r = L.rank(kv, 0);
      for (bool paged : {false, true}) {
        LatentRows rows = paged ? L.paged(kv, 0, true) : L.contiguous(kv, 0);
        if (!paged) {
          rows.window_begin = L.window_begin;
          rows.window_rows = L.win_ptrs[L.seg(kv, 0)].data();
        }
        for (auto [t0, n] : spans) {
          std::vector<float> out((size_t)n * r, -99.f);
          decode_latent_rows(rows, t0, n, out.data());
          const float* want = L.values[L.seg(kv, 0)].data() + (size_t)t0 * r;
          int bad = 0;
          for (int i = 0; i < n * r; ++i) {
            const float tol =
                latent_storage_bits(st) != 0 ? 1e-6f * std::max(1.f, std::fabs(want[i])) : 0.f;
            if (!(std::fabs(out[i] - want[i]) <= tol)) ++bad;
          }
          EXPECT_EQ(bad, 0) << row_storage_name(st) << (paged ? " paged" : " contiguous") << " kv=" << kv
                            << " t0=" << t0 << " n=" << n;
        }
      }
      // No window (window_begin ≥ T): the stored rows, dequantized.
      LatentRows rows = L.paged(kv, 0, false);
      rows.window_begin = T;
      rows.window_rows = nullptr;
      std::vector<float> out((size_t)T * r), c((size_t)T * r);
      decode_latent_rows(rows, 0, T, out.data());
      decode_latent_rows(L.contiguous(kv, 0), 0, T, c.data());
      EXPECT_EQ(0, std::memcmp(out.data(), c.data(), out.size() * sizeof(float))) << row_storage_name(st);
    }
  }
}

// Paged descriptors are validated like contiguous ones.
TEST(LatentAttentionPaged, PagedDescriptorWithoutIdsOrStrideIsRefused) {
  const Weights w = make_weights(kShape, kKRanks, 13);
  Latents L;
  make_latents(L, LatentStorage::kQ4, 40, kKRanks, kVRanks, 8, 7);
  std::vector<LatentGroupCache> groups(L.G);
  for (int g = 0; g < L.G; ++g) {
    groups[g].k = L.paged(0, g, true);
    groups[g].v = L.paged(1, g, true);
    groups[g].b_k = w.b_k[g].data();
  }
  std::vector<float> out(latent_output_width(w.shape, groups.data()));
  auto call = [&](std::vector<LatentGroupCache> gs) {
    return latent_attention_decode_isa(CpuIsa::kScalar, w.shape, gs.data(), L.T, L.T, w.q.data(),
                                       w.inv_freq.data(), out.data());
  };
  EXPECT_TRUE(call(groups).is_ok());
  auto no_ids = groups;
  no_ids[1].k.block_ids = nullptr;
  EXPECT_EQ(call(no_ids).code(), StatusCode::kInvalidArgument);
  auto no_stride = groups;
  no_stride[0].v.block_stride_bytes = 0;
  EXPECT_EQ(call(no_stride).code(), StatusCode::kInvalidArgument);
  auto no_window = groups;
  no_window[0].k.window_rows = nullptr;
  const Status st = call(no_window);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("window_rows is null"), std::string::npos) << st.message();
  auto negative = groups;
  negative[1].v.block_tokens = -1;
  EXPECT_EQ(call(negative).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace palu::backends::cpu
