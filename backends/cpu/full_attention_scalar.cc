// Full-cache decode attention: validation, the shared flash-decoding driver (threads over
// (KV head × token chunk), blocks of 64 tokens, online softmax, final reduction) and the scalar
// building blocks. The AVX2 and AVX-512 building blocks live in full_attention_avx2.cc and
// full_attention_avx512.cc; every path runs the same driver, so they differ only in the
// arithmetic of the blocks.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/cpu/full_attention.h"

namespace palu::backends::cpu {

namespace detail {
namespace {

inline float load_elem(LatentStorage st, const void* row, size_t i) {
  const uint8_t* b = static_cast<const uint8_t*>(row);
  if (st == LatentStorage::kF32) {
    float f;
    std::memcpy(&f, b + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, b + 2 * i, 2);
  return st == LatentStorage::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
}

void scores_scalar(LatentStorage st, const void* const* rows, int nt, size_t off, const float* q,
                   int nq, int d, float scale, float* s, int lds) {
  for (int r = 0; r < nq; ++r) {
    const float* qr = q + (size_t)r * d;
    for (int t = 0; t < nt; ++t) {
      float acc = 0.f;
      for (int i = 0; i < d; ++i) acc += qr[i] * load_elem(st, rows[t], off + (size_t)i);
      s[(size_t)r * lds + t] = acc * scale;
    }
  }
}

float exp_sum_scalar(float* x, int n, float m) {
  float sum = 0.f;
  for (int i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - m));
  return sum;
}

void accumulate_scalar(LatentStorage st, const void* const* rows, int nt, size_t off,
                       const float* p, int ldp, const float* corr, int nq, int d, float* acc) {
  for (int r = 0; r < nq; ++r) {
    float* a = acc + (size_t)r * d;
    for (int i = 0; i < d; ++i) a[i] *= corr[r];
    for (int t = 0; t < nt; ++t) {
      const float pt = p[(size_t)r * ldp + t];
      for (int i = 0; i < d; ++i) a[i] += pt * load_elem(st, rows[t], off + (size_t)i);
    }
  }
}

}  // namespace

const FullAttentionPrims& full_prims_scalar() {
  static const FullAttentionPrims prims{scores_scalar, exp_sum_scalar, accumulate_scalar};
  return prims;
}

}  // namespace detail

namespace {

constexpr int kBlockTokens = 64;

Status check_rows(const LatentRows& r, const char* what, int width, int T) {
  const std::string name = std::string("full attention: ") + what;
  if (r.rows == nullptr) return invalid_argument(name + ".rows is null");
  const int s = (int)r.storage;
  if (s < 0 || s > (int)LatentStorage::kQ2) {
    return invalid_argument(name + ".storage must be f32, f16 or bf16, found value " +
                            std::to_string(s));
  }
  if (latent_storage_bits(r.storage) != 0) {
    return invalid_argument(name + ".storage must be f32, f16 or bf16 (a full cache is not " +
                            "stored in codes), found " + row_storage_name(r.storage));
  }
  if (r.rank != width) {
    return invalid_argument(name + ".rank must be num_kv_heads·head_dim = " +
                            std::to_string(width) + ", found " + std::to_string(r.rank));
  }
  const size_t row_bytes = latent_row_bytes(r.storage, r.rank);
  if (r.row_stride_bytes != 0 && r.row_stride_bytes < row_bytes) {
    return invalid_argument(name + ".row_stride_bytes must be 0 or ≥ " + std::to_string(row_bytes) +
                            ", found " + std::to_string(r.row_stride_bytes));
  }
  if (r.block_tokens < 0) {
    return invalid_argument(name + ".block_tokens must be ≥ 0, found " +
                            std::to_string(r.block_tokens));
  }
  if (r.block_tokens > 0 && r.block_ids == nullptr)
    return invalid_argument(name + ".block_ids must be set for paged rows (block_tokens " +
                            std::to_string(r.block_tokens) + "), found null");
  if (r.block_tokens > 0 && r.block_stride_bytes == 0)
    return invalid_argument(name + ".block_stride_bytes must be > 0 for paged rows, found 0");
  if (r.window_begin >= 0 && r.window_begin < T && r.window_rows == nullptr) {
    return invalid_argument(name + ".window_rows must be set when window_begin (" +
                            std::to_string(r.window_begin) + ") < T (" + std::to_string(T) +
                            "), found null");
  }
  return Status::ok();
}

Status validate(const FullAttentionShape& sh, const LatentRows& k, const LatentRows& v, int T,
                const float* q, const float* out) {
  if (sh.num_heads <= 0 || sh.num_kv_heads <= 0 || sh.head_dim <= 0) {
    return invalid_argument(
        "full attention: num_heads, num_kv_heads, head_dim must be > 0, found " +
        std::to_string(sh.num_heads) + ", " + std::to_string(sh.num_kv_heads) + ", " +
        std::to_string(sh.head_dim));
  }
  if (sh.num_heads % sh.num_kv_heads != 0) {
    return invalid_argument("full attention: num_heads (" + std::to_string(sh.num_heads) +
                            ") must be a multiple of num_kv_heads, found num_kv_heads = " +
                            std::to_string(sh.num_kv_heads));
  }
  if (T <= 0) {
    return invalid_argument("full attention: T (cached tokens) must be ≥ 1, found " +
                            std::to_string(T));
  }
  if (q == nullptr) return invalid_argument("full attention: q must be [H, d_h], found null");
  if (out == nullptr) return invalid_argument("full attention: out must be [H, d_h], found null");
  const int width = sh.num_kv_heads * sh.head_dim;
  PALU_RETURN_IF_ERROR(check_rows(k, "k", width, T));
  PALU_RETURN_IF_ERROR(check_rows(v, "v", width, T));
  return Status::ok();
}

// Row pointers of tokens t0..t0+n−1 (paging honoured) into ptr[0..n); rows at or after the
// window start point at the f16 window rows instead. Returns the index of the first window row
// in ptr (n when none).
int row_pointers(const LatentRows& r, int t0, int n, const void** ptr) {
  const size_t stride =
      r.row_stride_bytes != 0 ? r.row_stride_bytes : latent_row_bytes(r.storage, r.rank);
  const uint8_t* base = static_cast<const uint8_t*>(r.rows);
  if (r.block_tokens == 0) {
    for (int i = 0; i < n; ++i) ptr[i] = base + (size_t)(t0 + i) * stride;
  } else {
    const int bt = r.block_tokens;
    int i = 0;
    while (i < n) {
      const int t = t0 + i, b = t / bt, in = t % bt;
      const int cnt = std::min(bt - in, n - i);
      const uint8_t* blk = base + (size_t)r.block_ids[b] * r.block_stride_bytes;
      for (int u = 0; u < cnt; ++u) ptr[i + u] = blk + (size_t)(in + u) * stride;
      i += cnt;
    }
  }
  if (r.window_begin < 0 || t0 + n <= r.window_begin) return n;
  const int w = (int)std::max<int64_t>(0, r.window_begin - t0);
  for (int i = w; i < n; ++i) ptr[i] = r.window_rows[t0 + i - r.window_begin];
  return w;
}

// Rows per step of the walk across KV heads (one 16-row scores tile of the AVX-512 kernel).
constexpr int kRowTile = 16;

struct Partial {
  float m;  // running max of the scores
  float l;  // Σ exp(s − m)
};

void run(const detail::FullAttentionPrims& P, const FullAttentionShape& sh, const LatentRows& k,
         const LatentRows& v, int T, const float* q, float* out) {
  const int Hkv = sh.num_kv_heads, dh = sh.head_dim;
  const int n_rep = sh.num_heads / Hkv;
  const float scale = 1.0f / std::sqrt((float)dh);

  // Work items: (KV-head tile, token chunk). Long contexts: token chunks of all KV heads (~4
  // items per thread), so an item reads whole rows block by block; short ones: the KV heads are
  // split into tiles too, to keep every thread busy.
  const int threads = omp_get_max_threads();
  const int blocks = (T + kBlockTokens - 1) / kBlockTokens;
  int chunks = std::min(blocks, 4 * threads);
  const int chunk_blocks = (blocks + chunks - 1) / chunks;
  chunks = (blocks + chunk_blocks - 1) / chunk_blocks;
  const int chunk_tokens = chunk_blocks * kBlockTokens;
  int tiles = std::min(Hkv, (4 * threads + chunks - 1) / chunks);
  const int tile_heads = (Hkv + tiles - 1) / tiles;
  tiles = (Hkv + tile_heads - 1) / tile_heads;

  // Partials per (chunk, query head): (m, l) and acc[d_h].
  std::vector<Partial> stats((size_t)chunks * sh.num_heads,
                             Partial{-std::numeric_limits<float>::infinity(), 0.f});
  std::vector<float> acc((size_t)chunks * sh.num_heads * dh, 0.f);

#pragma omp parallel
  {
    std::vector<const void*> kp(kBlockTokens), vp(kBlockTokens);
    std::vector<float> s((size_t)tile_heads * n_rep * kBlockTokens), ones(n_rep, 1.f);
#pragma omp for schedule(dynamic, 1)
    for (int item = 0; item < tiles * chunks; ++item) {
      const int c = item / tiles, tile = item % tiles;
      const int j_begin = tile * tile_heads, j_end = std::min(Hkv, j_begin + tile_heads);
      const int t_begin = c * chunk_tokens, t_end = std::min(T, t_begin + chunk_tokens);
      // Query heads of the tile: h_begin .. h_begin + nh − 1; their partials are contiguous.
      const int h_begin = j_begin * n_rep, nh = (j_end - j_begin) * n_rep;
      Partial* st = stats.data() + (size_t)c * sh.num_heads + h_begin;
      float* a = acc.data() + ((size_t)c * sh.num_heads + h_begin) * dh;
      for (int t0 = t_begin; t0 < t_end; t0 += kBlockTokens) {
        const int nb = std::min(kBlockTokens, t_end - t0);
        // Row pointers once per block; rows [0, kw) are stored rows, [kw, nb) f16 window rows.
        const int kw = row_pointers(k, t0, nb, kp.data());
        const int vw = row_pointers(v, t0, nb, vp.data());
        // Scores of every query head of the tile. Rows are visited kRowTile at a time across
        // all KV heads, so each row is read front to back (a head's slice alone is a short run
        // every H_kv·d_h values, which the hardware prefetchers do not follow).
        for (int u0 = 0; u0 < nb; u0 += kRowTile) {
          const int u1 = std::min(nb, u0 + kRowTile), us = std::min(u1, kw), uw = std::max(u0, kw);
          for (int j = j_begin; j < j_end; ++j) {
            const size_t off = (size_t)j * dh;
            const float* qj = q + (size_t)j * n_rep * dh;
            float* sj = s.data() + (size_t)(j - j_begin) * n_rep * kBlockTokens;
            if (us > u0) {
              P.scores(k.storage, kp.data() + u0, us - u0, off, qj, n_rep, dh, scale, sj + u0,
                       kBlockTokens);
            }
            if (u1 > uw) {
              P.scores(LatentStorage::kF16, kp.data() + uw, u1 - uw, off, qj, n_rep, dh, scale,
                       sj + uw, kBlockTokens);
            }
          }
        }
        // Online softmax: p = exp(s − m_new); the old sum and accumulator scale by e^{m−m_new}.
        for (int h = 0; h < nh; ++h) {
          float* sr = s.data() + (size_t)h * kBlockTokens;
          float bmax = -std::numeric_limits<float>::infinity();
          for (int t = 0; t < nb; ++t) bmax = std::max(bmax, sr[t]);
          const float m_new = std::max(st[h].m, bmax);
          const float corr = std::exp(st[h].m - m_new);  // 0 on the first block (m = −inf)
          st[h].l = st[h].l * corr + P.exp_sum(sr, nb, m_new);
          st[h].m = m_new;
          float* ah = a + (size_t)h * dh;
          for (int i = 0; i < dh; ++i) ah[i] *= corr;
        }
        // acc += Σ_t p_t·V_t, rows again kRowTile at a time across all KV heads.
        for (int u0 = 0; u0 < nb; u0 += kRowTile) {
          const int u1 = std::min(nb, u0 + kRowTile), us = std::min(u1, vw), uw = std::max(u0, vw);
          for (int j = j_begin; j < j_end; ++j) {
            const size_t off = (size_t)j * dh;
            const float* pj = s.data() + (size_t)(j - j_begin) * n_rep * kBlockTokens;
            float* aj = a + (size_t)(j - j_begin) * n_rep * dh;
            if (us > u0) {
              P.accumulate(v.storage, vp.data() + u0, us - u0, off, pj + u0, kBlockTokens,
                           ones.data(), n_rep, dh, aj);
            }
            if (u1 > uw) {
              P.accumulate(LatentStorage::kF16, vp.data() + uw, u1 - uw, off, pj + uw, kBlockTokens,
                           ones.data(), n_rep, dh, aj);
            }
          }
        }
      }
    }
  }

  // Reduction over chunks per query head: o = Σ_c e^{m_c−M} acc_c / Σ_c e^{m_c−M} l_c.
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int h = 0; h < sh.num_heads; ++h) {
    float M = -std::numeric_limits<float>::infinity();
    for (int c = 0; c < chunks; ++c) M = std::max(M, stats[(size_t)c * sh.num_heads + h].m);
    double l = 0.0;
    std::vector<double> o(dh, 0.0);
    for (int c = 0; c < chunks; ++c) {
      const Partial& p = stats[(size_t)c * sh.num_heads + h];
      if (p.l == 0.f) continue;
      const double w = std::exp((double)p.m - (double)M);
      l += w * p.l;
      const float* a = acc.data() + ((size_t)c * sh.num_heads + h) * dh;
      for (int i = 0; i < dh; ++i) o[i] += w * a[i];
    }
    float* dst = out + (size_t)h * dh;
    for (int i = 0; i < dh; ++i) dst[i] = (float)(o[i] / l);
  }
}

}  // namespace

Status full_attention_decode_isa(CpuIsa isa, const FullAttentionShape& shape, const LatentRows& k,
                                 const LatentRows& v, int T, const float* q, float* out) {
  PALU_RETURN_IF_ERROR(validate(shape, k, v, T, q, out));
  if ((int)isa > (int)detect_cpu_isa()) {
    return failed_precondition(std::string("full attention: the ") + cpu_isa_name(isa) +
                               " kernel was asked for but this CPU only has " +
                               cpu_isa_name(detect_cpu_isa()));
  }
  switch (isa) {
    case CpuIsa::kScalar:
      run(detail::full_prims_scalar(), shape, k, v, T, q, out);
      break;
    case CpuIsa::kAvx2:
      run(detail::full_prims_avx2(), shape, k, v, T, q, out);
      break;
    case CpuIsa::kAvx512:
      run(detail::full_prims_avx512(), shape, k, v, T, q, out);
      break;
  }
  return Status::ok();
}

Status full_attention_decode(const FullAttentionShape& shape, const LatentRows& k,
                             const LatentRows& v, int T, const float* q, float* out) {
  return full_attention_decode_isa(active_cpu_isa(), shape, k, v, T, q, out);
}

}  // namespace palu::backends::cpu
