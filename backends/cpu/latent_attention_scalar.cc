// Fused latent decode attention: validation, the shared blocked driver (threads, online
// softmax, reduction) and the scalar building blocks. The AVX2 and AVX-512 building blocks live
// in latent_attention_avx2.cc and latent_attention_avx512.cc; the driver is the same for all, so
// the paths differ only in the arithmetic of the blocks.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/latent_attention.h"

namespace palu::backends::cpu {

int latent_storage_bits(LatentStorage s) { return row_storage_bits(s); }

size_t latent_row_bytes(LatentStorage s, int rank) { return row_storage_bytes(s, (size_t)rank); }

int latent_output_width(const LatentAttentionShape& shape, const LatentGroupCache* groups) {
  const int G = shape.num_kv_heads / shape.group_size;
  const int heads_per_group = shape.num_heads / G;
  int w = 0;
  for (int g = 0; g < G; ++g) w += heads_per_group * groups[g].v.rank;
  return w;
}

namespace detail {
namespace {

// Generic unpacking of code i of a little-endian bit string (B ≤ 8: at most two bytes).
inline uint32_t packed_code(const uint8_t* row, int i, int bits) {
  const size_t bit = (size_t)i * (size_t)bits;
  const size_t byte = bit >> 3;
  const unsigned off = (unsigned)(bit & 7);
  uint32_t v = row[byte];
  if (off + (unsigned)bits > 8) v |= (uint32_t)row[byte + 1] << 8;
  return (v >> off) & ((1u << bits) - 1u);
}

void decode_rows_scalar(const LatentRows& r, int t0, int n, float* out) {
  const size_t stride =
      r.row_stride_bytes != 0 ? r.row_stride_bytes : latent_row_bytes(r.storage, r.rank);
  const int bits = latent_storage_bits(r.storage);
  for (int t = 0; t < n; ++t) {
    const uint8_t* row = static_cast<const uint8_t*>(r.rows) + (size_t)(t0 + t) * stride;
    float* o = out + (size_t)t * r.rank;
    switch (r.storage) {
      case LatentStorage::kF32:
        std::memcpy(o, row, (size_t)r.rank * 4);
        break;
      case LatentStorage::kF16:
        for (int i = 0; i < r.rank; ++i) {
          uint16_t h;
          std::memcpy(&h, row + 2 * i, 2);
          o[i] = f16_to_f32(h);
        }
        break;
      case LatentStorage::kBF16:
        for (int i = 0; i < r.rank; ++i) {
          uint16_t h;
          std::memcpy(&h, row + 2 * i, 2);
          o[i] = bf16_to_f32(h);
        }
        break;
      default: {
        const float scale = r.scale[t0 + t], zero = r.zero[t0 + t];
        for (int i = 0; i < r.rank; ++i) o[i] = (float)packed_code(row, i, bits) * scale + zero;
      }
    }
  }
}

void gemm_nn_scalar(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                    int ldc) {
  for (int i = 0; i < m; ++i) {
    float* ci = c + (size_t)i * ldc;
    std::fill(ci, ci + n, 0.f);
    const float* ai = a + (size_t)i * lda;
    for (int p = 0; p < k; ++p) {
      const float av = ai[p];
      const float* bp = b + (size_t)p * ldb;
      for (int j = 0; j < n; ++j) ci[j] += av * bp[j];
    }
  }
}

void rope_scalar(float* x, int heads, int d_h, const float* c, const float* s) {
  const int half = d_h / 2;
  for (int h = 0; h < heads; ++h) {
    float* v = x + (size_t)h * d_h;
    for (int i = 0; i < half; ++i) {
      const float x0 = v[i], x1 = v[i + half];
      v[i] = x0 * c[i] - x1 * s[i];
      v[i + half] = x1 * c[i] + x0 * s[i];
    }
  }
}

float dot_scalar(const float* a, const float* b, int n) {
  float acc = 0.f;
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void scale_accumulate_scalar(float c, const float* p, int nt, const float* x, int ldx, float* y,
                             int n) {
  for (int i = 0; i < n; ++i) y[i] *= c;
  for (int t = 0; t < nt; ++t) {
    const float pt = p[t];
    const float* xt = x + (size_t)t * ldx;
    for (int i = 0; i < n; ++i) y[i] += pt * xt[i];
  }
}

}  // namespace

const LatentAttentionPrims& latent_prims_scalar() {
  static const LatentAttentionPrims prims{decode_rows_scalar, gemm_nn_scalar, rope_scalar,
                                          dot_scalar, scale_accumulate_scalar};
  return prims;
}

}  // namespace detail

namespace {

constexpr int kBlockTokens = 64;

// The building blocks of `isa` (the caller checked detect_cpu_isa() ≥ isa).
const detail::LatentAttentionPrims& prims_for(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return detail::latent_prims_scalar();
    case CpuIsa::kAvx2: return detail::latent_prims_avx2();
    case CpuIsa::kAvx512: return detail::latent_prims_avx512();
  }
  return detail::latent_prims_scalar();
}

std::string str(const char* a, long long v) {
  return std::string(a) + std::to_string(v);
}

Status check_rows(const LatentRows& r, const char* what, int g, int T) {
  const std::string name = "latent attention: group " + std::to_string(g) + " " + what;
  if (r.rows == nullptr) return invalid_argument(name + ".rows is null");
  if (r.rank <= 0) return invalid_argument(name + str(".rank must be > 0, found ", r.rank));
  const int s = (int)r.storage;
  if (s < 0 || s > (int)LatentStorage::kQ2)
    return invalid_argument(name + str(".storage is not a storage type: ", s));
  if (r.row_stride_bytes != 0 && r.row_stride_bytes < latent_row_bytes(r.storage, r.rank)) {
    return invalid_argument(name + ".row_stride_bytes must be 0 or ≥ " +
                            std::to_string(latent_row_bytes(r.storage, r.rank)) + ", found " +
                            std::to_string(r.row_stride_bytes));
  }
  if (latent_storage_bits(r.storage) != 0 && (r.scale == nullptr || r.zero == nullptr)) {
    return invalid_argument(name + ": packed storage needs per-row scale and zero, found null");
  }
  if (r.block_tokens < 0)
    return invalid_argument(name + str(".block_tokens must be ≥ 0, found ", r.block_tokens));
  if (r.block_tokens > 0 && (r.block_ids == nullptr || r.block_stride_bytes == 0)) {
    return invalid_argument(name + ": paged rows need block_ids and block_stride_bytes > 0");
  }
  if (r.window_begin >= 0 && r.window_begin < T && r.window_rows == nullptr) {
    return invalid_argument(name + ": window_begin " + std::to_string(r.window_begin) +
                            " < T but window_rows is null");
  }
  return Status::ok();
}

Status validate(const LatentAttentionShape& sh, const LatentGroupCache* groups, int T, int pos_q,
                const float* q, const float* inv_freq, const float* out) {
  if (sh.num_heads <= 0 || sh.num_kv_heads <= 0 || sh.head_dim <= 0 || sh.group_size <= 0) {
    return invalid_argument(
        "latent attention: num_heads, num_kv_heads, head_dim, group_size must be > 0, found " +
        std::to_string(sh.num_heads) + ", " + std::to_string(sh.num_kv_heads) + ", " +
        std::to_string(sh.head_dim) + ", " + std::to_string(sh.group_size));
  }
  if (sh.num_heads % sh.num_kv_heads != 0) {
    return invalid_argument("latent attention: num_heads (" + std::to_string(sh.num_heads) +
                            ") must be a multiple of num_kv_heads (" +
                            std::to_string(sh.num_kv_heads) + ")");
  }
  if (sh.num_kv_heads % sh.group_size != 0) {
    return invalid_argument("latent attention: group_size (" + std::to_string(sh.group_size) +
                            ") must divide num_kv_heads (" + std::to_string(sh.num_kv_heads) + ")");
  }
  if (sh.head_dim % 2 != 0)
    return invalid_argument(str("latent attention: head_dim must be even, found ", sh.head_dim));
  if (T <= 0)
    return invalid_argument(str("latent attention: T (cached tokens) must be ≥ 1, found ", T));
  if (pos_q < T - 1) {
    return invalid_argument("latent attention: pos_q must be ≥ T−1 = " + std::to_string(T - 1) +
                            " (causal), found " + std::to_string(pos_q));
  }
  if (groups == nullptr) return invalid_argument("latent attention: groups is null");
  if (q == nullptr) return invalid_argument("latent attention: q is null");
  if (inv_freq == nullptr) return invalid_argument("latent attention: inv_freq is null");
  if (out == nullptr) return invalid_argument("latent attention: out_latents is null");
  const int G = sh.num_kv_heads / sh.group_size;
  for (int g = 0; g < G; ++g) {
    if (groups[g].b_k == nullptr)
      return invalid_argument("latent attention: group " + std::to_string(g) + " b_k is null");
    PALU_RETURN_IF_ERROR(check_rows(groups[g].k, "k", g, T));
    PALU_RETURN_IF_ERROR(check_rows(groups[g].v, "v", g, T));
  }
  return Status::ok();
}

// Rows t0..t0+n−1 through the ISA's contiguous decoder: one call per block run, then the f16
// window overlay.
void decode_span(const detail::LatentAttentionPrims& P, const LatentRows& r, int t0, int n,
                 float* out) {
  if (r.block_tokens == 0) {
    P.decode_rows(r, t0, n, out);
  } else {
    int t = t0;
    while (t < t0 + n) {
      const int b = t / r.block_tokens, i = t % r.block_tokens;
      const int cnt = std::min(r.block_tokens - i, t0 + n - t);
      const size_t shift = (size_t)r.block_ids[b] * r.block_stride_bytes;
      LatentRows blk = r;
      blk.block_tokens = 0;
      blk.rows = static_cast<const uint8_t*>(r.rows) + shift;
      if (r.scale != nullptr) {
        blk.scale = reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(r.scale) + shift);
        blk.zero = reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(r.zero) + shift);
      }
      P.decode_rows(blk, i, cnt, out + (size_t)(t - t0) * r.rank);
      t += cnt;
    }
  }
  if (r.window_begin >= 0 && t0 + n > r.window_begin) {
    for (int t = (int)std::max<int64_t>(t0, r.window_begin); t < t0 + n; ++t) {
      const uint16_t* h = r.window_rows[t - r.window_begin];
      float* o = out + (size_t)(t - t0) * r.rank;
      for (int i = 0; i < r.rank; ++i) o[i] = f16_to_f32(h[i]);
    }
  }
}

// Online-softmax partial of one query head over one token chunk.
struct Partial {
  float m;  // running max of scores
  float l;  // Σ exp(s − m)
};

Status run(const detail::LatentAttentionPrims& P, const LatentAttentionShape& sh,
           const LatentGroupCache* groups, int T, const float* q, const float* inv_freq,
           const LatentRopeTable* rope, float* out) {
  const int H = sh.num_heads, dh = sh.head_dim, half = dh / 2, s = sh.group_size;
  const int n_rep = H / sh.num_kv_heads;
  const int G = sh.num_kv_heads / s;
  const int hq = s * n_rep;  // query heads per group
  const int N = s * dh;      // rebuilt key width per group
  const float inv_sqrt = 1.0f / std::sqrt((float)dh);

  // RoPE tables [T, half] (row stride half): the caller's, or computed here.
  std::vector<float> cos_own, sin_own;
  const float* cos_t;
  const float* sin_t;
  if (rope != nullptr) {
    cos_t = rope->cos;
    sin_t = rope->sin;
  } else {
    cos_own.resize((size_t)T * half);
    sin_own.resize((size_t)T * half);
    build_latent_rope_table(inv_freq, dh, T, cos_own.data(), sin_own.data());
    cos_t = cos_own.data();
    sin_t = sin_own.data();
  }

  // B^Kᵀ per group [r_k, N] so the key rebuild is a plain row-major GEMM.
  std::vector<size_t> bt_off(G + 1, 0), part_off(G + 1, 0), out_off(G + 1, 0);
  for (int g = 0; g < G; ++g) {
    bt_off[g + 1] = bt_off[g] + (size_t)groups[g].k.rank * N;
    out_off[g + 1] = out_off[g] + (size_t)hq * groups[g].v.rank;
  }
  bool need_bt = false;
  for (int g = 0; g < G; ++g) need_bt = need_bt || groups[g].b_k_t == nullptr;
  std::vector<float> bt(need_bt ? bt_off[G] : 0);
#pragma omp parallel for schedule(static) collapse(2)
  for (int g = 0; g < G; ++g) {
    for (int n = 0; n < N; ++n) {
      if (groups[g].b_k_t != nullptr) continue;
      const int r = groups[g].k.rank;
      const float* src = groups[g].b_k + (size_t)n * r;
      float* dst = bt.data() + bt_off[g];
      for (int p = 0; p < r; ++p) dst[(size_t)p * N + n] = src[p];
    }
  }

  // Work items: (group, token chunk); enough chunks for ~4 items per thread.
  const int threads = omp_get_max_threads();
  const int blocks = (T + kBlockTokens - 1) / kBlockTokens;
  int chunks = std::min(blocks, std::max(1, (4 * threads + G - 1) / G));
  const int chunk_blocks = (blocks + chunks - 1) / chunks;
  chunks = (blocks + chunk_blocks - 1) / chunk_blocks;
  const int chunk_tokens = chunk_blocks * kBlockTokens;

  // Partials: per group, per chunk, per local query head: (m, l) and acc[r_v].
  for (int g = 0; g < G; ++g)
    part_off[g + 1] = part_off[g] + (size_t)chunks * hq * groups[g].v.rank;
  std::vector<float> acc(part_off[G], 0.f);
  std::vector<Partial> stats((size_t)G * chunks * hq,
                             Partial{-std::numeric_limits<float>::infinity(), 0.f});

  int max_rk = 0, max_rv = 0;
  for (int g = 0; g < G; ++g) {
    max_rk = std::max(max_rk, groups[g].k.rank);
    max_rv = std::max(max_rv, groups[g].v.rank);
  }

#pragma omp parallel
  {
    std::vector<float> zk((size_t)kBlockTokens * max_rk), zv((size_t)kBlockTokens * max_rv);
    std::vector<float> keys((size_t)kBlockTokens * N), scores(kBlockTokens);
#pragma omp for schedule(dynamic, 1)
    for (int item = 0; item < G * chunks; ++item) {
      const int g = item / chunks, c = item % chunks;
      const LatentGroupCache& grp = groups[g];
      const int rk = grp.k.rank, rv = grp.v.rank;
      const int t_begin = c * chunk_tokens, t_end = std::min(T, t_begin + chunk_tokens);
      for (int t0 = t_begin; t0 < t_end; t0 += kBlockTokens) {
        const int nb = std::min(kBlockTokens, t_end - t0);
        // Dequantize the block's key latents once; rebuild all s heads' keys once; RoPE.
        decode_span(P, grp.k, t0, nb, zk.data());
        const float* btg = grp.b_k_t != nullptr ? grp.b_k_t : bt.data() + bt_off[g];
        P.gemm_nn(nb, N, rk, zk.data(), rk, btg, N, keys.data(), N);
        for (int t = 0; t < nb; ++t) {
          if (grp.k_bias != nullptr) {
            float* kr = keys.data() + (size_t)t * N;
            for (int i = 0; i < N; ++i) kr[i] += grp.k_bias[i];
          }
          P.rope(keys.data() + (size_t)t * N, s, dh, cos_t + (size_t)(t0 + t) * half,
                 sin_t + (size_t)(t0 + t) * half);
        }
        decode_span(P, grp.v, t0, nb, zv.data());
        // Every query head of the group uses the rebuilt keys of its KV head.
        for (int lh = 0; lh < hq; ++lh) {
          const int u = lh / n_rep;  // KV head index inside the group
          const float* qh = q + (size_t)(g * hq + lh) * dh;
          float bmax = -std::numeric_limits<float>::infinity();
          for (int t = 0; t < nb; ++t) {
            scores[t] = P.dot(qh, keys.data() + (size_t)t * N + (size_t)u * dh, dh) * inv_sqrt;
            bmax = std::max(bmax, scores[t]);
          }
          Partial& st = stats[((size_t)g * chunks + c) * hq + lh];
          const float m_new = std::max(st.m, bmax);
          const float corr = std::exp(st.m - m_new);  // 0 on the first block (m = −inf)
          float sum = 0.f;
          for (int t = 0; t < nb; ++t) {
            scores[t] = std::exp(scores[t] - m_new);
            sum += scores[t];
          }
          st.l = st.l * corr + sum;
          st.m = m_new;
          float* a = acc.data() + part_off[g] + ((size_t)c * hq + lh) * rv;
          P.scale_accumulate(corr, scores.data(), nb, zv.data(), rv, a, rv);
        }
      }
    }
  }

  // Reduction over chunks per query head: o = Σ_c e^{m_c−M} acc_c / Σ_c e^{m_c−M} l_c.
#pragma omp parallel for schedule(static) collapse(2)
  for (int g = 0; g < G; ++g) {
    for (int lh = 0; lh < hq; ++lh) {
      const int rv = groups[g].v.rank;
      float M = -std::numeric_limits<float>::infinity();
      for (int c = 0; c < chunks; ++c) M = std::max(M, stats[((size_t)g * chunks + c) * hq + lh].m);
      double l = 0.0;
      std::vector<double> o(rv, 0.0);
      for (int c = 0; c < chunks; ++c) {
        const Partial& st = stats[((size_t)g * chunks + c) * hq + lh];
        if (st.l == 0.f) continue;
        const double w = std::exp((double)st.m - (double)M);
        l += w * st.l;
        const float* a = acc.data() + part_off[g] + ((size_t)c * hq + lh) * rv;
        for (int i = 0; i < rv; ++i) o[i] += w * a[i];
      }
      float* dst = out + out_off[g] + (size_t)lh * rv;
      for (int i = 0; i < rv; ++i) dst[i] = (float)(o[i] / l);
    }
  }
  return Status::ok();
}

}  // namespace

void decode_latent_rows(const LatentRows& rows, int t0, int n, float* out) {
  decode_span(prims_for(active_cpu_isa()), rows, t0, n, out);
}

void build_latent_rope_table(const float* inv_freq, int d_h, int positions, float* cos,
                             float* sin) {
  const int half = d_h / 2;
  // The angle rounded to float32, cos/sin in double then float (like LlamaModel::apply_rope).
#pragma omp parallel for schedule(static) if (positions > 64)
  for (int t = 0; t < positions; ++t) {
    for (int i = 0; i < half; ++i) {
      const float angle = (float)t * inv_freq[i];
      cos[(size_t)t * half + i] = (float)std::cos((double)angle);
      sin[(size_t)t * half + i] = (float)std::sin((double)angle);
    }
  }
}

Status latent_attention_decode_isa(CpuIsa isa, const LatentAttentionShape& shape,
                                   const LatentGroupCache* groups, int T, int pos_q, const float* q,
                                   const float* inv_freq, float* out_latents,
                                   const LatentRopeTable* rope) {
  PALU_RETURN_IF_ERROR(validate(shape, groups, T, pos_q, q, inv_freq, out_latents));
  if (rope != nullptr) {
    if (rope->cos == nullptr || rope->sin == nullptr) {
      return invalid_argument("latent attention: rope table cos/sin is null");
    }
    if (rope->positions < T) {
      return invalid_argument("latent attention: rope table must cover T = " + std::to_string(T) +
                              " positions, found " + std::to_string(rope->positions));
    }
  }
  if ((int)isa > (int)detect_cpu_isa()) {
    return failed_precondition(std::string("latent attention: the ") + cpu_isa_name(isa) +
                               " kernel was asked for but this CPU only has " +
                               cpu_isa_name(detect_cpu_isa()));
  }
  return run(prims_for(isa), shape, groups, T, q, inv_freq, rope, out_latents);
}

Status latent_attention_decode(const LatentAttentionShape& shape, const LatentGroupCache* groups,
                               int T, int pos_q, const float* q, const float* inv_freq,
                               float* out_latents, const LatentRopeTable* rope) {
  return latent_attention_decode_isa(active_cpu_isa(), shape, groups, T, pos_q, q, inv_freq,
                                     out_latents, rope);
}

Status latent_output_projection(const float* w_o, int d, int width, const float* o, float* out,
                                float beta) {
  if (w_o == nullptr || o == nullptr || out == nullptr) {
    return invalid_argument("latent output projection: w_o, o and out must not be null");
  }
  if (d <= 0 || width <= 0) {
    return invalid_argument("latent output projection: d and width must be > 0, found " +
                            std::to_string(d) + ", " + std::to_string(width));
  }
  // out[1, d] = o[1, width] · W_o'[d, width]ᵀ
  gemm_nt(1, d, width, o, width, w_o, width, out, d, beta);
  return Status::ok();
}

}  // namespace palu::backends::cpu
