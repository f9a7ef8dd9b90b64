#include "backends/vulkan/vulkan_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

namespace palu::backends::vulkan {
namespace {

uint32_t u32(size_t v) {
  return (uint32_t)v;
}

struct EmbedPC {
  uint64_t tok, emb, x;
  uint32_t n, d, vocab, dt;
};
struct RmsPC {
  uint64_t x, w, y;
  uint32_t rows, n, ld;
  float eps;
};
struct RopePC {
  uint64_t x, rope;
  uint32_t rows, ld, heads, dh, pos0, sin_off;
};
struct MatPC {
  uint64_t a, w, c, bias;
  uint32_t M, N, K, lda, ldc, flags;
};
struct SiluPC {
  uint64_t g, u, y;
  uint32_t n;
};
struct AddPC {
  uint64_t x, y;
  uint32_t n, xn;
};
struct SoftmaxPC {
  uint64_t x;
  uint32_t rows, n, ld;
};
struct StorePC {
  uint64_t src, dst;
  uint32_t n, src_ld, src_col, rank, row_words, pos0, storage, cap, win, win_begin;
};
struct DecodePC {
  uint64_t q, kc, vc, bk, bias, rope, part;
  uint32_t T, tps, cap, k_words, v_words, win_begin, h0, kcol, r_k, w, n_rep, dh, sin_off, flags,
      part_stride;
  float scale;
  uint32_t win;
};
static_assert(sizeof(DecodePC) <= 128, "push constants are limited to 128 bytes");
struct ReducePC {
  uint64_t part, out;
  uint32_t splits, part_stride, w, h0, out0;
};
struct PrefillPC {
  uint64_t q, kc, vc, out;
  uint32_t n, p0, qw, k_words, k_storage, v_words, v_storage, v_cap, n_rep, dh, h0, vcol_per_kv, w,
      ow, out0;
  float scale;
  uint32_t win, win_begin, v_rank;
};
static_assert(sizeof(PrefillPC) <= 128, "push constants are limited to 128 bytes");
struct RebuildPC {
  uint64_t kc, bk, bias, rope, out;
  uint32_t T, k_words, storage, cap, r_k, s, dh, sin_off, ld, col0, flags, win, win_begin;
};
static_assert(sizeof(RebuildPC) <= 128, "push constants are limited to 128 bytes");
struct FoldPC {
  uint64_t q, bk, bias, m, mb;
  uint32_t h0, n_rep, dh, r_k, rkp, ncol, flags;
  float scale;
};
static_assert(sizeof(FoldPC) <= 128, "push constants are limited to 128 bytes");
struct LatentPC {
  uint64_t m, mb, kc, vc, rope, part;
  uint32_t T, tps, cap, k_words, v_words, win, win_begin, h0, r_k, r_v, sin_off, part_stride;
};
static_assert(sizeof(LatentPC) <= 128, "push constants are limited to 128 bytes");
struct FoldTPC {
  uint64_t q, bk, bias, m, tbl, kc, vc;
  uint32_t h0, n_rep, dh, r_k, ncol, flags, slot, slot_halves;
  float scale;
  uint32_t hg;
};
static_assert(sizeof(FoldTPC) <= 128, "push constants are limited to 128 bytes");
struct GroupedPC {
  uint64_t m, tbl, rope, part;
  uint32_t T, tps, cap, k_words, v_words, win, win_begin, r_k, r_v, sin_off, part_stride,
      slot_halves, h0, bias;
};
static_assert(sizeof(GroupedPC) <= 128, "push constants are limited to 128 bytes");

// The window slots the shaders see: only packed regions have a window.
uint32_t window_of(const Region& r) {
  return row_storage_bits(r.storage) > 0 && r.window > 0 ? (uint32_t)r.window : 0u;
}

constexpr uint32_t kQB = 16, kKT = 32;    // attn_prefill.comp's tile
constexpr int kCoopmatAutoMaxRank = 128;  // attention_decode_latent's kAuto

float inv_sqrt_dh(int dh) {
  return 1.0f / std::sqrt((float)dh);
}

uint32_t ceil_div(size_t a, size_t b) {
  return (uint32_t)((a + b - 1) / b);
}

// The push constants of latent_fold* and of the latent decode kernels for group g (its first
// query head h0, HG query heads, folded rows padded to rkp): the folded query M of the group's
// heads at a.fold, its second half (mb) after HG·d_h·rkp floats.
FoldPC fold_pc(const DecodeArgs& a, const LatentGroupArgs& g, int h0, int n_rep, int HG,
               uint32_t rkp) {
  FoldPC fp{};
  fp.q = a.q;
  fp.bk = g.bk;
  fp.bias = g.k_bias;
  fp.m = a.fold;
  fp.mb = a.fold + (uint64_t)HG * a.dh * rkp * 4;
  fp.h0 = u32(h0);
  fp.n_rep = u32(n_rep);
  fp.dh = u32(a.dh);
  fp.r_k = u32(g.zk.rank);
  fp.rkp = rkp;
  fp.ncol = u32(g.s * a.dh);
  fp.flags = g.k_bias != 0 ? 1u : 0u;
  fp.scale = inv_sqrt_dh(a.dh);
  return fp;
}
LatentPC latent_pc(const DecodeArgs& a, const LatentGroupArgs& g, int h0, const FoldPC& fp) {
  LatentPC pc{};
  pc.m = fp.m;
  pc.mb = fp.mb;
  pc.kc = g.zk.base;
  pc.vc = g.zv.base;
  pc.rope = a.rope;
  pc.part = a.part;
  pc.T = u32(a.T);
  pc.tps = ceil_div(a.T, a.splits);
  pc.cap = u32(g.zk.cap);
  pc.k_words = g.zk.words();
  pc.v_words = g.zv.words();
  pc.win = window_of(g.zk);
  pc.win_begin = u32(g.zk.window_begin);
  pc.h0 = u32(h0);
  pc.r_k = u32(g.zk.rank);
  pc.r_v = u32(g.zv.rank);
  pc.sin_off = a.sin_off;
  pc.part_stride = u32(a.w_max + 2);
  return pc;
}

}  // namespace

void split_groups(size_t count, uint32_t* gx, uint32_t* gy) {
  if (count <= 65535) {
    *gx = (uint32_t)std::max<size_t>(count, 1);
    *gy = 1;
  } else {
    *gx = 65535;
    *gy = ceil_div(count, 65535);
  }
}

size_t row_words(RowStorage s, int n) {
  return (row_storage_bytes(s, (size_t)n) + 3) / 4;
}

size_t region_words(RowStorage s, int n, int cap, int window) {
  const bool packed = row_storage_bits(s) > 0;
  const size_t ring = packed && window > 0 ? (size_t)std::min(window, cap) * ((n + 1) / 2) : 0;
  return row_words(s, n) * (size_t)cap + (packed ? 2 * (size_t)cap : 0) + ring;
}

uint32_t Region::words() const {
  return (uint32_t)row_words(storage, rank);
}

void embed(Recorder& rec, uint64_t tok, uint64_t emb, WeightType wt, uint64_t x, int n, int d,
           int vocab) {
  EmbedPC pc{tok, emb, x, u32(n), u32(d), u32(vocab), (uint32_t)wt};
  rec.dispatch("embed", {}, &pc, sizeof(pc), ceil_div(d, 64), (uint32_t)n);
}

void rms_norm(Recorder& rec, uint64_t x, uint64_t w, uint64_t y, int rows, int n, int ld,
              float eps) {
  RmsPC pc{x, w, y, u32(rows), u32(n), u32(ld), eps};
  uint32_t gx, gy;
  split_groups(rows, &gx, &gy);
  rec.dispatch("rmsnorm", {}, &pc, sizeof(pc), gx, gy);
}

void rope(Recorder& rec, uint64_t x, uint64_t rope_table, int rows, int ld, int heads, int dh,
          int pos0, uint32_t sin_off) {
  RopePC pc{x, rope_table, u32(rows), u32(ld), u32(heads), u32(dh), u32(pos0), sin_off};
  rec.dispatch("rope", {}, &pc, sizeof(pc), ceil_div((size_t)heads * dh / 2, 64), (uint32_t)rows);
}

void matmul(Recorder& rec, uint64_t a, int lda, uint64_t w, WeightType wt, uint64_t c, int ldc,
            int M, int N, int K, uint64_t bias, bool accumulate, MatmulKernel kernel) {
  MatPC pc{a,      w,      c,        bias,     u32(M),
           u32(N), u32(K), u32(lda), u32(ldc), (accumulate ? 1u : 0u) | (bias != 0 ? 2u : 0u)};
  VulkanContext* ctx = rec.context();
  if (kernel == MatmulKernel::kAuto) {
    if (ctx->subgroup_arithmetic() && (ctx->is_cpu() || M <= 4))
      kernel = MatmulKernel::kSubgroup;
    else
      kernel = M <= 4 ? MatmulKernel::kVector : MatmulKernel::kTiled;
  }
  if (kernel == MatmulKernel::kSubgroup) {
    // 8×8 blocks for prefill-sized products (more FMAs per load), 4×4 for decode.
    const uint32_t b = M > 4 ? 8 : 4, bn = M > 4 ? 16 : 4;
    rec.dispatch("matmul_sg", {(uint32_t)wt, ctx->subgroup_size(), b, bn}, &pc, sizeof(pc),
                 ceil_div(N, bn), ceil_div(M, b));
  } else if (kernel == MatmulKernel::kVector && M <= 4) {
    uint32_t gx, gy;
    split_groups(ceil_div(N, 4), &gx, &gy);
    rec.dispatch("matvec", {(uint32_t)wt}, &pc, sizeof(pc), gx, gy);
  } else {
    rec.dispatch("matmul", {(uint32_t)wt}, &pc, sizeof(pc), ceil_div(N, 64), ceil_div(M, 64));
  }
}

void silu_mul(Recorder& rec, uint64_t g, uint64_t u, uint64_t y, size_t n) {
  SiluPC pc{g, u, y, u32(n)};
  uint32_t gx, gy;
  split_groups(ceil_div(n, 64), &gx, &gy);
  rec.dispatch("silu_mul", {}, &pc, sizeof(pc), gx, gy);
}

void add(Recorder& rec, uint64_t x, uint64_t y, size_t n, size_t xn) {
  AddPC pc{x, y, u32(n), u32(xn)};
  uint32_t gx, gy;
  split_groups(ceil_div(n, 64), &gx, &gy);
  rec.dispatch("add", {}, &pc, sizeof(pc), gx, gy);
}

void softmax(Recorder& rec, uint64_t x, int rows, int n, int ld) {
  SoftmaxPC pc{x, u32(rows), u32(n), u32(ld)};
  uint32_t gx, gy;
  split_groups(rows, &gx, &gy);
  rec.dispatch("softmax", {}, &pc, sizeof(pc), gx, gy);
}

void store_rows(Recorder& rec, uint64_t src, int src_ld, int src_col, const Region& dst, int n,
                int pos0) {
  StorePC pc{src,          dst.base,       u32(n),
             u32(src_ld),  u32(src_col),   u32(dst.rank),
             dst.words(),  u32(pos0),      (uint32_t)dst.storage,
             u32(dst.cap), window_of(dst), u32(dst.window_begin)};
  uint32_t gx, gy;
  split_groups(n, &gx, &gy);
  rec.dispatch("store_rows", {}, &pc, sizeof(pc), gx, gy);
}

size_t decode_partial_words(int H, int splits, int w_max) {
  return (size_t)H * splits * (size_t)(w_max + 2);
}

namespace {

// latent_decode.comp's shape for one group: KC latent columns per invocation (a compile-time
// constant of the shader: f16 32/64/128, f32 32/64; the folded rows stay in 64 registers at
// most), NC = ceil(r_k / KC_max) invocations per M row, WG = d_h·NC, RKP = NC·KC (padding zero).
struct FusedShape {
  uint32_t kc = 0, nc = 0, wg = 0, rkp = 0;
};
constexpr uint32_t kFusedColsF16 = 128, kFusedColsF32 = 64;
FusedShape fused_shape(int rk, int dh, bool f16) {
  FusedShape f;
  f.nc = ceil_div(rk, f16 ? kFusedColsF16 : kFusedColsF32);
  const uint32_t need = ceil_div(rk, f.nc);
  f.kc = need <= 32 ? 32 : need <= 64 ? 64 : 128;
  f.wg = (uint32_t)dh * f.nc;
  f.rkp = f.kc * f.nc;
  return f;
}

// latent_decode_cm.comp's shape for one group: RKB 16-column blocks of M (RKP = 16·RKB),
// d_h/16 subgroups of 32 (WG = 2·d_h), VPT value columns per invocation, TT tokens per tile:
// 32 for r_k ≤ 128, else 16 (also where 32 does not fit shared memory; 0: neither fits). The
// tile's shared memory bounds how many workgroups an SM holds: on the H100 at 64K, 256/256,
// 16-token tiles took 8.5 / 9.0 ms (f16 / q4) instead of 12.8 / 13.5, while 128/384 is
// faster with 32 (9.0 vs 9.7 ms).
struct CoopShape {
  uint32_t rkb = 0, rkp = 0, wg = 0, vpt = 0, tt = 0;
};
CoopShape coop_shape(int rk, int rv, int dh, uint32_t shared_bytes) {
  CoopShape c;
  c.rkb = ceil_div(rk, 16);
  c.rkp = 16 * c.rkb;
  c.wg = 2 * (uint32_t)dh;
  c.vpt = std::max(1u, ceil_div(rv, c.wg));
  for (uint32_t t = rk <= 128 ? 32 : 16; t >= 16; t /= 2) {
    // latent_decode_cm.comp's shared arrays: zsh, sacc, ss, ps, vs.
    const size_t bytes = (size_t)t * (c.rkp + 8) * 2 + (size_t)t * (dh + 2 * (size_t)dh / t) * 4 +
                         2 * (size_t)t * 4 + (size_t)c.vpt * c.wg * 4;
    if (bytes <= shared_bytes) {
      c.tt = t;
      break;
    }
  }
  return c;
}

// Cached tokens from which f16 rows run 128-invocation workgroups (grouped_why).
constexpr int kGroupedWg128FromT = 16384;

// latent_decode_cmg.comp's shape (all query heads of a group per workgroup, 32-token tiles):
// RKB 16-column blocks of the key tile (r_k, + 1 for the key-bias column), RVB of the value
// tile, Mᵀ slot size (halves, 16-byte multiple), and whether the rows allow 16-byte chunks.
struct GroupedShape {
  // vspl: the value tile staged in vspl parts (1 or 2; latent_decode_cmg.comp VSPL)
  uint32_t rkb = 0, rvb = 0, slot_halves = 0, hg = 0, tt = 0, nhw = 1, wg = 256, vspl = 1;
  bool bias = false, vec = false;
};

// Tuning knob for measurements (docs/perf/vulkan.md), 0 or unset: the defaults. PALU_VULKAN_CMG
// bits: 0 flips the k-loop unrolling (default: unrolled for 64-token tiles only), 1 value loads
// after the scores, 2 flips the column-block pairs (default: on for 64-token tiles only), 3..6
// timing probes (latent_decode_cmg.comp DBG: wrong results), 7 32-token tiles only, 8..9 log2
// of the workgroups per group, 10 coherent tile loads, 11 Mᵀ fragments through uvec4 loads, 12
// flips 128-invocation workgroups (default: for f16 rows at 64-token tiles from 16K tokens), 13 Mᵀ
// row-major (default: in 16×16 tiles, latent_fold.comp flags & 2), 14 one fold dispatch per group
// (default: one for all groups of the call, the groups' addresses in a table of
// Recorder::inline_data), 15 no value tile in two halves (default: 64-token tiles with the value
// tile staged in two halves where 64 tokens do not fit otherwise, r_v 384 at r_k ≤ 176).
uint32_t grouped_bits() {
  const char* knob = std::getenv("PALU_VULKAN_CMG");
  return knob != nullptr ? (uint32_t)std::strtoul(knob, nullptr, 10) : 0u;
}

bool vec_region(const Region& r) {
  if (r.rank % 8 != 0 || r.base % 16 != 0) return false;
  if (window_of(r) > 0 && ((size_t)r.cap * (r.words() + 2)) % 4 != 0) return false;
  // packed rows: the (scale, zero) pairs read as 8-byte words
  if (row_storage_bits(r.storage) > 0 && ((size_t)r.cap * r.words()) % 2 != 0) return false;
  return true;
}

// Why latent_decode_cmg.comp cannot run the n groups gs in one dispatch (empty: it can), and
// its shape in *c. The groups must be alike (ranks, storage, capacity, window, weights, bias)
// and consecutive.
std::string grouped_why(VulkanContext* ctx, const DecodeArgs& a, const LatentGroupArgs* gs, int n,
                        int max_rank, GroupedShape* c) {
  const LatentGroupArgs& g = gs[0];
  const int n_rep = a.H / a.H_kv;
  const int HG = g.s * n_rep;
  if (!ctx->cooperative_matrix()) return ctx->cooperative_matrix_note();
  if (a.fold == 0) return "no fold scratch (DecodeArgs.fold)";
  if (a.dh != 64 && a.dh != 128 && a.dh != 256)
    return "head dim " + std::to_string(a.dh) + " (64, 128 or 256 only)";
  if (HG != 1 && HG != 2 && HG != 4 && HG != 8)
    return std::to_string(HG) + " query heads per group (1, 2, 4 or 8 only)";
  if ((HG * a.dh) % 128 != 0) return "query heads × head dim not a multiple of 128";
  if (a.T < 32) return "fewer than 32 cached tokens";
  if (ctx->max_workgroup_x() < 256) return "fewer than 256 invocations per workgroup";
  for (int i = 0; i < n; ++i) {
    const LatentGroupArgs& h = gs[i];
    if (h.group != g.group + i || h.s != g.s || h.wt != g.wt ||
        (h.k_bias != 0) != (g.k_bias != 0) || h.zk.rank != g.zk.rank || h.zv.rank != g.zv.rank ||
        h.zk.storage != g.zk.storage || h.zv.storage != g.zk.storage || h.zk.cap != g.zk.cap ||
        h.zv.cap != g.zk.cap || window_of(h.zk) != window_of(g.zk) ||
        window_of(h.zv) != window_of(g.zk) || h.zk.window_begin != g.zk.window_begin ||
        h.zv.window_begin != g.zk.window_begin)
      return "groups not alike";
  }
  c->hg = (uint32_t)HG;
  // Workgroups per group (each HG / nhw heads: a smaller Mᵀ slice per workgroup, the tiles read
  // nhw times).
  c->nhw = 1u << ((grouped_bits() >> 8) & 3u);
  while (c->nhw > 1 && ((uint32_t)HG % c->nhw != 0 || (HG / c->nhw) * a.dh % 128 != 0)) c->nhw /= 2;
  c->bias = g.k_bias != 0;
  c->rkb = ceil_div(g.zk.rank + (c->bias ? 1 : 0), 16);
  c->rvb = ceil_div(g.zv.rank, 16);
  if (c->rvb > 32) return "value rank " + std::to_string(g.zv.rank) + " above 512";
  // 64-token tiles where they fit (each Mᵀ fragment read from L2 serves twice the tokens), else
  // 32: latent_decode_cmg.comp's tile, red, psh and csh arrays.
  // With the value tile in two halves (off with tuning bit 15; 256 invocations: each half's chunks
  // a multiple of them) the tile holds max(r_k, r_v / 2) columns, and O [16, r_v] f32 at the end.
  const bool force32 = (grouped_bits() & 128u) != 0;
  const bool halves_ok = (grouped_bits() & 32768u) == 0 && c->rvb % 2 == 0;
  auto shared_of = [&](uint32_t tt, uint32_t vspl) {
    const size_t xp = 16 * (size_t)std::max(c->rkb, c->rvb / vspl);
    const size_t tile = std::max({tt * (xp + 8) / 8, 40 * (size_t)tt, 64 * (size_t)c->rvb});
    return tile * 16 + 16 * (tt + 8) * 2 + 256 * 4;
  };
  c->tt = 0;
  c->vspl = 1;
  for (uint32_t tt = force32 ? 32 : 64; tt >= 32; tt /= 2) {
    if (a.T < (int)tt) continue;
    if (shared_of(tt, 1) <= ctx->max_shared_bytes()) {
      c->tt = tt;
      break;
    }
    if (halves_ok && (tt * c->rvb) % 256 == 0 && shared_of(tt, 2) <= ctx->max_shared_bytes()) {
      c->tt = tt;
      c->vspl = 2;
      break;
    }
  }
  if (c->tt == 0)
    return "key rank " + std::to_string(g.zk.rank) + " with value rank " +
           std::to_string(g.zv.rank) + " does not fit shared memory";
  // 128 invocations (4 subgroups) per workgroup where the heads and value blocks fit, else 256.
  // Default: 128 for f16 and q4 rows at 64-token tiles from 16K tokens on (H100, pairs on: 64K
  // f16 711 vs 787 us, 4K 146 vs 120; q4 256/256 once 1 013 vs 933 at 64K, but with the current
  // kernel, 2026-11-24, 863–872 vs 935–951 at 64K and 241–268 vs 260–263 at 16K, 4K 173–176 vs
  // 135–137; see docs/perf/vulkan.md). Tuning bit 12 flips the choice where 128 fits.
  {
    const uint32_t hw = (uint32_t)HG / c->nhw;
    const bool fits = hw <= 4 && (hw * a.dh / 16) % 4 == 0 && c->rvb <= 16;
    const bool want = (g.zk.storage == RowStorage::kF16 || g.zk.storage == RowStorage::kQ4) && c->tt == 64 &&
                      a.T >= kGroupedWg128FromT;
    c->wg = c->vspl == 1 && fits && (want != ((grouped_bits() & 4096u) != 0)) ? 128 : 256;
  }
  c->slot_halves = (16 * c->rkb * (uint32_t)HG * (uint32_t)a.dh + 7) / 8 * 8;
  if ((size_t)n * c->slot_halves / 2 + 4 * (size_t)n > latent_fold_words(a.H, a.dh, max_rank))
    return "fold scratch too small";
  c->vec = true;
  for (int i = 0; i < n; ++i) c->vec = c->vec && vec_region(gs[i].zk) && vec_region(gs[i].zv);
  return "";
}

// Records latent_fold_t (one dispatch for all n groups, their addresses in a table of
// Recorder::inline_data: (z^K, z^V) per group — latent_decode_cmg's tbl — then (B^K, key bias);
// or one per group, writing tbl into the fold scratch, with tuning bit 14 or when the
// submission's inline data is used up), one latent_decode_cmg dispatch (splits × n groups) and
// the split reduction (one dispatch where the groups' output columns follow each other).
void record_grouped(Recorder& rec, const DecodeArgs& a, const LatentGroupArgs* gs, int n,
                    const GroupedShape& c) {
  const int n_rep = a.H / a.H_kv;
  const int h0 = gs[0].group * (int)c.hg;
  const uint32_t bits = grouped_bits();
  const uint32_t mtl = ((bits >> 13) & 1u) ^ 1u;
  uint64_t tbl = 0;
  if ((bits & 16384u) == 0) {
    std::vector<uint64_t> t(4 * (size_t)n);
    for (int z = 0; z < n; ++z) {
      t[2 * z] = gs[z].zk.base;
      t[2 * z + 1] = gs[z].zv.base;
      t[2 * (n + z)] = gs[z].bk;
      t[2 * (n + z) + 1] = gs[z].k_bias;
    }
    tbl = rec.inline_data(t.data(), t.size() * sizeof(uint64_t));
  }
  const bool one_fold = tbl != 0;
  if (!one_fold) tbl = a.fold + (uint64_t)n * c.slot_halves * 2;
  for (int z = 0; z < (one_fold ? 1 : n); ++z) {
    const LatentGroupArgs& g = gs[z];
    FoldTPC fp{};
    fp.q = a.q;
    fp.bk = g.bk;
    fp.bias = g.k_bias;
    fp.m = a.fold;
    fp.tbl = tbl;
    fp.kc = g.zk.base;
    fp.vc = g.zv.base;
    fp.h0 = u32(h0);
    fp.n_rep = u32(n_rep);
    fp.dh = u32(a.dh);
    fp.r_k = u32(g.zk.rank);
    fp.ncol = u32(g.s * a.dh);
    fp.flags = (g.k_bias != 0 ? 1u : 0u) | (mtl << 1) | (one_fold ? 4u : 0u);
    fp.slot = u32(z);
    fp.slot_halves = c.slot_halves;
    fp.scale = inv_sqrt_dh(a.dh);
    fp.hg = c.hg;
    // Per-group folds write disjoint slots: one barrier after the last.
    rec.dispatch("latent_fold_t", {(uint32_t)g.wt}, &fp, sizeof(fp), ceil_div(a.dh / 2, 64),
                 16 * c.rkb, c.hg * (one_fold ? (uint32_t)n : 1u), one_fold || z + 1 == n);
  }
  const LatentGroupArgs& g = gs[0];
  GroupedPC pc{};
  pc.m = a.fold;
  pc.tbl = tbl;
  pc.rope = a.rope;
  pc.part = a.part;
  pc.T = u32(a.T);
  pc.tps = ceil_div(ceil_div(a.T, a.splits), c.tt) * c.tt;
  pc.cap = u32(g.zk.cap);
  pc.k_words = g.zk.words();
  pc.v_words = g.zv.words();
  pc.win = window_of(g.zk);
  pc.win_begin = u32(g.zk.window_begin);
  pc.r_k = u32(g.zk.rank);
  pc.r_v = u32(g.zv.rank);
  pc.sin_off = a.sin_off;
  pc.part_stride = u32(a.w_max + 2);
  pc.slot_halves = c.slot_halves;
  pc.h0 = u32(h0);
  pc.bias = c.bias ? 1u : 0u;
  rec.dispatch("latent_decode_cmg",
               {(uint32_t)a.dh, c.hg, (uint32_t)g.zk.storage, c.rkb, c.rvb, c.vec ? 1u : 0u,
                (c.tt == 64) != ((bits & 1) != 0) ? 1u : 0u, (bits & 2) ? 0u : 1u,
                (c.tt == 64) != ((bits & 4) != 0) ? 1u : 0u, (bits >> 3) & 15u, c.tt, c.nhw,
                (bits >> 10) & 1u, (bits >> 11) & 1u, c.wg, mtl, c.vspl},
               &pc, sizeof(pc), (uint32_t)a.splits, (uint32_t)n * c.nhw);
  bool contiguous = true;
  for (int z = 1; z < n; ++z)
    contiguous = contiguous && gs[z].out_col == g.out_col + z * (int)c.hg * g.zv.rank;
  if (contiguous) {
    ReducePC rp{a.part,         a.out,   u32(a.splits), u32(a.w_max + 2),
                u32(g.zv.rank), u32(h0), u32(g.out_col)};
    rec.dispatch("attn_reduce", {}, &rp, sizeof(rp), (uint32_t)n * c.hg, ceil_div(g.zv.rank, 64));
  } else {
    for (int z = 0; z < n; ++z) {
      ReducePC rp{a.part,
                  a.out,
                  u32(a.splits),
                  u32(a.w_max + 2),
                  u32(gs[z].zv.rank),
                  u32(h0 + z * (int)c.hg),
                  u32(gs[z].out_col)};
      rec.dispatch("attn_reduce", {}, &rp, sizeof(rp), c.hg, ceil_div(gs[z].zv.rank, 64));
    }
  }
}

}  // namespace

size_t latent_fold_words(int H, int dh, int max_rank) {
  // M [H, d_h, rkp] + the bias terms [H, d_h]; fused_shape pads r_k by less than 32 per
  // invocation column up to 64 columns, by less than 64 above: at most 2·r_k + 32 in all.
  const size_t rkp = 2 * (size_t)max_rank + 32;
  return (size_t)H * dh * rkp + (size_t)H * dh;
}

namespace {

// Tokens per tile of attn_decode.comp that fit the device's shared memory.
uint32_t decode_tile(uint32_t shared_bytes, int n_rep, int dh, int rmax) {
  for (uint32_t tt = 32; tt >= 4; tt /= 2) {
    const size_t floats = (size_t)n_rep * dh + (size_t)tt * dh + (size_t)tt * rmax +
                          (size_t)n_rep * tt + 3 * (size_t)n_rep;
    if (floats * 4 <= shared_bytes) return tt;
  }
  return 0;
}

void reduce(Recorder& rec, const DecodeArgs& a, int w, int h0, int nh, int out0) {
  ReducePC pc{a.part, a.out, u32(a.splits), u32(a.w_max + 2), u32(w), u32(h0), u32(out0)};
  rec.dispatch("attn_reduce", {}, &pc, sizeof(pc), (uint32_t)nh, ceil_div(w, 64));
}

}  // namespace

Status attention_decode_full(Recorder& rec, const DecodeArgs& a, const Region& k, const Region& v,
                             int use_subgroup) {
  if (row_storage_bits(k.storage) != 0)
    return unimplemented("vulkan decode: full K/V rows cannot be packed codes");
  const int n_rep = a.H / a.H_kv;
  const uint32_t tt = decode_tile(rec.context()->max_shared_bytes(), n_rep, a.dh, 0);
  if (tt == 0)
    return unimplemented("vulkan decode: head dim " + std::to_string(a.dh) + " with " +
                         std::to_string(n_rep) +
                         " query heads per KV head does not fit shared memory");
  if (a.w_max < a.dh) return invalid_argument("vulkan decode: partial width below d_h");
  VulkanContext* ctx = rec.context();
  const bool sg =
      use_subgroup < 0 ? ctx->is_cpu() && ctx->subgroup_arithmetic() : use_subgroup == 1;
  if (sg) {
    // CPU drivers: the barrier-free subgroup kernel, one query row (position T − 1) per head.
    PrefillArgs p;
    p.q = a.q;
    p.qw = a.H * a.dh;
    p.n = 1;
    p.p0 = a.T - 1;
    p.H = a.H;
    p.H_kv = a.H_kv;
    p.dh = a.dh;
    p.out = a.out;
    p.ow = a.H * a.dh;
    return attention_prefill(rec, p, k, v, a.dh, a.dh, 0, a.H, 0, 1);
  }
  DecodePC pc{};
  pc.q = a.q;
  pc.kc = k.base;
  pc.vc = v.base;
  pc.part = a.part;
  pc.rope = a.rope;
  pc.T = u32(a.T);
  pc.tps = ceil_div(a.T, a.splits);
  pc.cap = u32(k.cap);
  pc.k_words = k.words();
  pc.v_words = v.words();
  pc.h0 = 0;
  pc.kcol = u32(a.dh);
  pc.w = u32(a.dh);
  pc.n_rep = u32(n_rep);
  pc.dh = u32(a.dh);
  pc.part_stride = u32(a.w_max + 2);
  pc.scale = inv_sqrt_dh(a.dh);
  rec.dispatch("attn_decode", {0u, (uint32_t)n_rep, (uint32_t)a.dh, tt, 1u, (uint32_t)k.storage},
               &pc, sizeof(pc), (uint32_t)a.H_kv, (uint32_t)a.splits);
  reduce(rec, a, a.dh, 0, a.H, 0);
  return Status::ok();
}

Status attention_decode_latent(Recorder& rec, const DecodeArgs& a, const LatentGroupArgs& g,
                               int max_rank, LatentKernel kernel) {
  const int n_rep = a.H / a.H_kv;
  if (g.zv.rank > a.w_max || g.zk.rank > max_rank)
    return invalid_argument("vulkan latent decode: rank above the maximum");
  VulkanContext* ctx = rec.context();
  const int HG = g.s * n_rep;  // query heads of the group
  const int h0 = g.group * HG;
  // kAuto takes the coopmat kernel for key ranks ≤ kCoopmatAutoMaxRank and for packed keys
  // (H100, Llama-2-7B shape, 4K..128K: q4 128/384 as fast as the fused kernel with its best
  // splits and 1.8× its default at 64K, q4 256/256 10–20 % faster; f16 256/256 equal to 2 %
  // slower, so it stays on the fused kernel; docs/perf/vulkan.md), or always with
  // PALU_VULKAN_COOPMAT=1.
  if (kernel == LatentKernel::kAuto || kernel == LatentKernel::kFusedCoopmat) {
    // All query heads of the group per workgroup (latent_decode_cmg.comp) where it fits.
    GroupedShape gsh;
    if (grouped_why(ctx, a, &g, 1, max_rank, &gsh).empty()) {
      record_grouped(rec, a, &g, 1, gsh);
      return Status::ok();
    }
  }
  const bool auto_coop = kernel == LatentKernel::kAuto && ctx->cooperative_matrix() &&
                         (ctx->prefer_cooperative_matrix() || g.zk.rank <= kCoopmatAutoMaxRank ||
                          row_storage_bits(g.zk.storage) > 0);
  if (auto_coop || kernel == LatentKernel::kFusedCoopmat ||
      kernel == LatentKernel::kFusedCoopmatHead) {
    // Why the coopmat kernel cannot run here (empty: it can).
    const CoopShape c = coop_shape(g.zk.rank, g.zv.rank, a.dh, ctx->max_shared_bytes());
    std::string why;
    if (!ctx->cooperative_matrix())
      why = ctx->cooperative_matrix_note();
    else if (a.fold == 0)
      why = "no fold scratch (DecodeArgs.fold)";
    else if (a.dh != 64 && a.dh != 128 && a.dh != 256)
      why = "head dim " + std::to_string(a.dh) + " (64, 128 or 256 only)";
    else if (c.wg > ctx->max_workgroup_x())
      why = std::to_string(c.wg) + " invocations per workgroup above the device's " +
            std::to_string(ctx->max_workgroup_x());
    else if (c.tt == 0)
      why = "key rank " + std::to_string(g.zk.rank) + " with value rank " +
            std::to_string(g.zv.rank) + " does not fit shared memory";
    else if (latent_fold_words(HG, a.dh, g.zk.rank) > latent_fold_words(a.H, a.dh, max_rank))
      why = "fold scratch too small";
    if (why.empty()) {
      const FoldPC fp = fold_pc(a, g, h0, n_rep, HG, c.rkp);
      rec.dispatch("latent_fold_h", {(uint32_t)g.wt}, &fp, sizeof(fp), ceil_div(c.rkp, 64),
                   (uint32_t)a.dh / 2, (uint32_t)HG);
      const LatentPC pc = latent_pc(a, g, h0, fp);
      rec.dispatch("latent_decode_cm",
                   {c.wg, (uint32_t)a.dh, 0u, c.tt, (uint32_t)g.zk.storage, 0u, c.vpt, c.rkb}, &pc,
                   sizeof(pc), (uint32_t)HG, (uint32_t)a.splits);
      reduce(rec, a, g.zv.rank, h0, HG, g.out_col);
      return Status::ok();
    }
    if (kernel == LatentKernel::kFusedCoopmat || kernel == LatentKernel::kFusedCoopmatHead)
      return unimplemented("vulkan coopmat latent decode: " + why);
  }
  if (kernel != LatentKernel::kTile) {
    // Why the fused kernel cannot run here (empty: it can).
    const bool f16 = kernel != LatentKernel::kFusedF32 && ctx->shader_float16();
    const FusedShape f = fused_shape(g.zk.rank, a.dh, f16);
    const uint32_t sg = ctx->subgroup_size();
    uint32_t tt = 0;
    // Tiles of at most 32 tokens and d_h/2 (the shader's per-invocation load arrays).
    for (uint32_t t = 32; t >= 4 && sg > 0; t /= 2) {
      if (2 * t > (uint32_t)a.dh) continue;
      // latent_decode.comp's shared arrays: zs, red, ss, ps.
      const size_t bytes =
          (size_t)t * f.rkp * (f16 ? 2 : 4) + (size_t)(f.wg / sg) * t * 4 + 2 * (size_t)t * 4;
      if (bytes <= ctx->max_shared_bytes() && t <= f.wg) {
        tt = t;
        break;
      }
    }
    std::string why;
    if (a.fold == 0)
      why = "no fold scratch (DecodeArgs.fold)";
    else if (!ctx->subgroup_arithmetic())
      why = "no subgroup arithmetic";
    else if (a.dh % 2 != 0 || a.dh % sg != 0)
      why = "head dim " + std::to_string(a.dh) + " is not a multiple of the subgroup size " +
            std::to_string(sg);
    else if (f.wg > ctx->max_workgroup_x())
      why = std::to_string(f.wg) + " invocations per workgroup (rank " + std::to_string(g.zk.rank) +
            ") above the device's " + std::to_string(ctx->max_workgroup_x());
    else if (tt == 0)
      why = "rank " + std::to_string(g.zk.rank) + " does not fit shared memory";
    else if (ceil_div(g.zv.rank, f.wg) > 4)
      why = "value rank " + std::to_string(g.zv.rank) + " above 4 per invocation";
    else if (a.fold != 0 &&
             latent_fold_words(HG, a.dh, g.zk.rank) > latent_fold_words(a.H, a.dh, max_rank))
      why = "fold scratch too small";
    if (why.empty()) {
      const FoldPC fp = fold_pc(a, g, h0, n_rep, HG, f.rkp);
      rec.dispatch("latent_fold", {(uint32_t)g.wt}, &fp, sizeof(fp), ceil_div(f.rkp, 64),
                   (uint32_t)a.dh / 2, (uint32_t)HG);
      const LatentPC pc = latent_pc(a, g, h0, fp);
      const uint32_t vpt = std::max(1u, ceil_div(g.zv.rank, f.wg));
      const std::string shader =
          std::string(f16 ? "latent_decode_f16_k" : "latent_decode_k") + std::to_string(f.kc);
      rec.dispatch(shader.c_str(),
                   {f.wg, (uint32_t)a.dh, 0u, tt, (uint32_t)g.zk.storage, f.wg / sg, vpt}, &pc,
                   sizeof(pc), (uint32_t)HG, (uint32_t)a.splits);
      reduce(rec, a, g.zv.rank, h0, HG, g.out_col);
      return Status::ok();
    }
    if (kernel != LatentKernel::kAuto) return unimplemented("vulkan fused latent decode: " + why);
  }
  const uint32_t tt = decode_tile(ctx->max_shared_bytes(), n_rep, a.dh, max_rank);
  if (tt == 0)
    return unimplemented("vulkan latent decode: rank " + std::to_string(max_rank) +
                         " at head dim " + std::to_string(a.dh) +
                         " does not fit the device's shared memory");
  DecodePC pc{};
  pc.q = a.q;
  pc.kc = g.zk.base;
  pc.vc = g.zv.base;
  pc.bk = g.bk;
  pc.bias = g.k_bias;
  pc.rope = a.rope;
  pc.part = a.part;
  pc.T = u32(a.T);
  pc.tps = ceil_div(a.T, a.splits);
  pc.cap = u32(g.zk.cap);
  pc.k_words = g.zk.words();
  pc.v_words = g.zv.words();
  pc.win_begin = u32(g.zk.window_begin);
  pc.win = window_of(g.zk);
  pc.h0 = u32(h0);
  pc.kcol = u32(g.s * a.dh);  // the latent kernel's B^Kᵀ row length
  pc.r_k = u32(g.zk.rank);
  pc.w = u32(g.zv.rank);
  pc.n_rep = u32(n_rep);
  pc.dh = u32(a.dh);
  pc.sin_off = a.sin_off;
  pc.flags = g.k_bias != 0 ? 1u : 0u;
  pc.part_stride = u32(a.w_max + 2);
  pc.scale = inv_sqrt_dh(a.dh);
  rec.dispatch("attn_decode_latent",
               {(uint32_t)g.wt, (uint32_t)n_rep, (uint32_t)a.dh, tt, (uint32_t)max_rank,
                (uint32_t)g.zk.storage},
               &pc, sizeof(pc), (uint32_t)g.s, (uint32_t)a.splits);
  reduce(rec, a, g.zv.rank, h0, HG, g.out_col);
  return Status::ok();
}

Status attention_decode_latent_groups(Recorder& rec, const DecodeArgs& a,
                                      const LatentGroupArgs* groups, int n, int max_rank,
                                      LatentKernel kernel) {
  if (n <= 0) return Status::ok();
  if (kernel == LatentKernel::kAuto || kernel == LatentKernel::kFusedCoopmat) {
    for (int i = 0; i < n; ++i)
      if (groups[i].zv.rank > a.w_max || groups[i].zk.rank > max_rank)
        return invalid_argument("vulkan latent decode: rank above the maximum");
    GroupedShape gsh;
    if (grouped_why(rec.context(), a, groups, n, max_rank, &gsh).empty()) {
      record_grouped(rec, a, groups, n, gsh);
      return Status::ok();
    }
  }
  for (int i = 0; i < n; ++i)
    PALU_RETURN_IF_ERROR(attention_decode_latent(rec, a, groups[i], max_rank, kernel));
  return Status::ok();
}

Status attention_prefill(Recorder& rec, const PrefillArgs& a, const Region& k, const Region& v,
                         int vcol_per_kv, int w, int h0, int nh, int out0, int use_subgroup) {
  if (row_storage_bits(k.storage) != 0)
    return unimplemented("vulkan prefill: keys cannot be packed codes");
  VulkanContext* ctx = rec.context();
  const bool sg =
      use_subgroup < 0 ? ctx->subgroup_arithmetic() && ctx->is_cpu() : use_subgroup == 1;
  if (sg && !ctx->subgroup_arithmetic())
    return unimplemented("vulkan prefill: no subgroup arithmetic on this device");
  const size_t floats = (size_t)kQB * a.dh + (size_t)kKT * a.dh + kQB * kKT + 3 * kQB;
  if (floats * 4 > rec.context()->max_shared_bytes()) {
    return unimplemented("vulkan prefill: head dim " + std::to_string(a.dh) +
                         " does not fit shared memory");
  }
  PrefillPC pc{};
  pc.q = a.q;
  pc.kc = k.base;
  pc.vc = v.base;
  pc.out = a.out;
  pc.n = u32(a.n);
  pc.p0 = u32(a.p0);
  pc.qw = u32(a.qw);
  pc.k_words = k.words();
  pc.k_storage = (uint32_t)k.storage;
  pc.v_words = v.words();
  pc.v_storage = (uint32_t)v.storage;
  pc.v_cap = u32(v.cap);
  pc.n_rep = u32(a.H / a.H_kv);
  pc.dh = u32(a.dh);
  pc.h0 = u32(h0);
  pc.vcol_per_kv = u32(vcol_per_kv);
  pc.w = u32(w);
  pc.ow = u32(a.ow);
  pc.out0 = u32(out0);
  pc.scale = inv_sqrt_dh(a.dh);
  pc.win = window_of(v);
  pc.win_begin = u32(v.window_begin);
  pc.v_rank = u32(v.rank);
  if (sg) {
    const uint32_t wmax = (uint32_t)w;
    // Query rows per workgroup: each key and value row loaded feeds 16 rows (lavapipe, 1024-token
    // prefill, 8 heads × 64: 1.84 s → 0.42 s per layer; 8 rows 0.60 s, 32 rows 0.53 s).
    const uint32_t rb = 16;
    rec.dispatch(
        "attn_prefill_sg",
        {(uint32_t)a.dh, ctx->subgroup_size(), wmax, (uint32_t)k.storage, (uint32_t)v.storage, rb},
        &pc, sizeof(pc), (uint32_t)nh, ceil_div(a.n, rb));
  } else {
    rec.dispatch("attn_prefill", {(uint32_t)a.dh}, &pc, sizeof(pc), (uint32_t)nh,
                 ceil_div(a.n, kQB));
  }
  return Status::ok();
}

Status latent_rebuild_keys(Recorder& rec, const Region& zk, uint64_t bk, WeightType wt,
                           uint64_t k_bias, int s, int dh, int T, uint64_t rope_table,
                           uint32_t sin_off, uint64_t out, int ld, int col0) {
  if ((size_t)zk.rank * 4 > rec.context()->max_shared_bytes())
    return unimplemented("vulkan rebuild: rank too large");
  RebuildPC pc{zk.base,       bk,
               k_bias,        rope_table,
               out,           u32(T),
               zk.words(),    (uint32_t)zk.storage,
               u32(zk.cap),   u32(zk.rank),
               u32(s),        u32(dh),
               sin_off,       u32(ld),
               u32(col0),     k_bias != 0 ? 1u : 0u,
               window_of(zk), u32(zk.window_begin)};
  uint32_t gx, gy;
  split_groups(T, &gx, &gy);
  rec.dispatch("latent_rebuild", {(uint32_t)wt, (uint32_t)zk.rank}, &pc, sizeof(pc), gx, gy);
  return Status::ok();
}

}  // namespace palu::backends::vulkan
