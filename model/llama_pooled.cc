// The block-pool forward of LlamaModel: batched GEMMs over all sequences of a step, K/V rows or
// latents written into a cache::BlockPool, and attention over the pool's paged rows — the
// fused latent decode kernel for single-token steps of compressed models, a tiled causal
// attention (keys rebuilt from latents tile by tile) for everything else.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "backends/cpu/full_attention.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/kernels.h"
#include "backends/cpu/latent_attention.h"
#include "model/llama_model.h"

namespace palu::model {
namespace {

namespace cpu = palu::backends::cpu;
using cache::Proj;

// Keys per tile and queries per chunk of the tiled prefill attention.
constexpr int kKeyTile = 128;
constexpr int kQueryChunk = 64;

std::string seq_name(cache::SeqId s) { return "sequence " + std::to_string(s); }

// A pool segment (paged rows + optional f16 window) as the kernels' row descriptor. The
// window pointers are stored in `window` (kept alive by the caller).
Result<cpu::LatentRows> rows_of(const cache::BlockPool& pool, cache::SeqId seq, int layer, Proj kv, int group,
                                std::vector<const uint16_t*>* window) {
  PALU_ASSIGN_OR_RETURN(cache::SegmentView v, pool.segment_view(seq, layer, kv, group));
  cpu::LatentRows r;
  r.storage = v.storage;
  r.rank = v.rank;
  r.rows = v.rows0;
  r.row_stride_bytes = v.row_bytes;
  r.scale = v.scales0;
  r.zero = v.zeros0;
  r.block_tokens = v.block_tokens;
  r.block_ids = v.block_ids;
  r.block_stride_bytes = v.block_bytes;
  if (pool.layout().window_tokens() > 0) {
    PALU_ASSIGN_OR_RETURN(cache::WindowView w, pool.window_view(seq, layer, kv, group));
    if (w.end > w.begin) {
      window->resize((size_t)(w.end - w.begin));
      for (int64_t p = w.begin; p < w.end; ++p) (*window)[(size_t)(p - w.begin)] = w.row(p);
      r.window_begin = w.begin;
      r.window_rows = window->data();
    }
  }
  return r;
}

}  // namespace

// ---- the latent runtime built at attach time ----------------------------------------------

void LlamaModel::build_latent_runtime() {
  const ModelConfig& c = config_;
  const int L = c.num_layers, H = c.num_heads, dh = c.head_dim, d = c.hidden_size;
  const int s = manifest_.group_size, n_rep = c.num_heads / c.num_kv_heads;
  const int N = s * dh;
  wo_fused_.assign(L, {});
  out_bias_.assign(L, {});
  bkt_.assign(L, {});
  head_v_off_.assign((size_t)L * (H + 1), 0);
  for (int l = 0; l < L; ++l) {
    const PaluLayerFactors& f = palu_[l];
    int* off = head_v_off_.data() + (size_t)l * (H + 1);
    for (int h = 0; h < H; ++h) off[h + 1] = off[h] + f.v.groups[(h / n_rep) / s].rank;
    const int width = off[H];
    // W_o'[:, off_h .. off_h + r) = W_o[:, h·d_h .. (h+1)·d_h) · B^V_g[u·d_h .. (u+1)·d_h, :]
    std::vector<float>& wf = wo_fused_[l];
    wf.assign((size_t)d * width, 0.f);
    const std::vector<float>& wo = w_.layers[l].wo;
    for (int h = 0; h < H; ++h) {
      const int j = h / n_rep, g = j / s, u = j % s;
      const LowRankGroup& grp = f.v.groups[g];
      cpu::gemm_nn(d, grp.rank, dh, wo.data() + (size_t)h * dh, c.q_width(), grp.b.data() + (size_t)u * dh * grp.rank,
                   grp.rank, wf.data() + off[h], width);
    }
    // v = B^V z + b_v and Σ_t p_t = 1, so the bias contributes Σ_h W_o,h b_v(h) to every output.
    if (c.qkv_bias) {
      const std::vector<float>& bv = w_.layers[l].bv;
      std::vector<float>& ob = out_bias_[l];
      ob.assign(d, 0.f);
      for (int i = 0; i < d; ++i) {
        double acc = 0.0;
        for (int h = 0; h < H; ++h) {
          const int j = h / n_rep;
          for (int e = 0; e < dh; ++e) acc += (double)wo[(size_t)i * c.q_width() + h * dh + e] * bv[(size_t)j * dh + e];
        }
        ob[i] = (float)acc;
      }
    }
    bkt_[l].resize(f.k.groups.size());
    for (size_t g = 0; g < f.k.groups.size(); ++g) {
      const LowRankGroup& grp = f.k.groups[g];
      std::vector<float>& t = bkt_[l][g];
      t.resize((size_t)grp.rank * N);
      for (int n = 0; n < N; ++n)
        for (int p = 0; p < grp.rank; ++p) t[(size_t)p * N + n] = grp.b[(size_t)n * grp.rank + p];
    }
  }
}

// ---- layouts --------------------------------------------------------------------------------

Result<cache::CacheLayoutSpec> LlamaModel::cache_layout_spec(const CacheOptions& o) const {
  cache::CacheLayoutSpec spec;
  spec.block_tokens = o.block_tokens;
  spec.storage = o.storage;
  spec.window_tokens = o.window_tokens;
  if (palu_.empty()) {
    if (cache::storage_is_packed(o.storage)) {
      return invalid_argument(std::string("cache storage ") + cache::storage_name(o.storage) +
                              " needs a compressed model (made by palu-compress); an uncompressed model stores "
                              "full K/V rows in f32, f16 or bf16");
    }
    spec = cache::full_layout_spec(config_.num_layers, config_.kv_width(), o.storage, o.block_tokens);
    spec.window_tokens = o.window_tokens;
    return spec;
  }
  spec.ranks.resize(config_.num_layers);
  for (int l = 0; l < config_.num_layers; ++l) {
    for (const auto& g : palu_[l].k.groups) spec.ranks[l][0].push_back(g.rank);
    for (const auto& g : palu_[l].v.groups) spec.ranks[l][1].push_back(g.rank);
  }
  return spec;
}

Status LlamaModel::check_cache_layout(const cache::CacheLayout& layout) const {
  PALU_ASSIGN_OR_RETURN(cache::CacheLayoutSpec want, cache_layout_spec(CacheOptions{layout.storage(), 0, 16}));
  const std::string what = palu_.empty() ? "full K/V rows" : "latents";
  if (layout.full() != want.full || layout.spec().ranks != want.ranks) {
    return invalid_argument("the cache layout (" + layout.describe() + ") does not fit this model, which needs " +
                            what + " with the shape of " + (palu_.empty() ? "its K/V width" : "its palu.json ranks"));
  }
  return Status::ok();
}

// ---- RoPE on rows at arbitrary positions ----------------------------------------------------

void LlamaModel::rope_rows(float* x, int rows, int ld, int heads, const int64_t* positions) const {
  const int dh = config_.head_dim, half = dh / 2;
#pragma omp parallel for schedule(static) if (rows > 8)
  for (int t = 0; t < rows; ++t) {
    std::vector<float> own;
    const float* c;
    const float* s;
    if (positions[t] < rope_positions_) {
      c = rope_cos_.data() + (size_t)positions[t] * half;
      s = rope_sin_.data() + (size_t)positions[t] * half;
    } else {
      own.resize(dh);
      const float pos = (float)positions[t];
      for (int i = 0; i < half; ++i) {
        const float angle = pos * inv_freq_[i];
        own[i] = (float)std::cos((double)angle);
        own[half + i] = (float)std::sin((double)angle);
      }
      c = own.data();
      s = own.data() + half;
    }
    float* row = x + (size_t)t * ld;
    for (int h = 0; h < heads; ++h) {
      float* v = row + h * dh;
      for (int i = 0; i < half; ++i) {
        const float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c[i] - x1 * s[i];
        v[i + half] = x1 * c[i] + x0 * s[i];
      }
    }
  }
}

// ---- attention over the pool ----------------------------------------------------------------

Status LlamaModel::attend_decode_latent(int layer, const cache::BlockPool& pool, cache::SeqId seq, const float* q,
                                        float* out) const {
  const ModelConfig& c = config_;
  PALU_ASSIGN_OR_RETURN(int64_t T, pool.length(seq));
  const int G = c.num_kv_heads / manifest_.group_size;
  std::vector<cpu::LatentGroupCache> groups(G);
  std::vector<std::vector<const uint16_t*>> windows(2 * (size_t)G);
  for (int g = 0; g < G; ++g) {
    PALU_ASSIGN_OR_RETURN(groups[g].k, rows_of(pool, seq, layer, Proj::kKey, g, &windows[2 * g]));
    PALU_ASSIGN_OR_RETURN(groups[g].v, rows_of(pool, seq, layer, Proj::kValue, g, &windows[2 * g + 1]));
    groups[g].b_k = palu_[layer].k.groups[g].b.data();
    groups[g].b_k_t = bkt_[layer][g].data();
    if (c.qkv_bias) groups[g].k_bias = w_.layers[layer].bk.data() + (size_t)g * manifest_.group_size * c.head_dim;
  }
  cpu::LatentAttentionShape shape{c.num_heads, c.num_kv_heads, c.head_dim, manifest_.group_size};
  cpu::LatentRopeTable rope{rope_cos_.data(), rope_sin_.data(), rope_positions_};
  return cpu::latent_attention_decode(shape, groups.data(), (int)T, (int)T - 1, q, inv_freq_.data(), out,
                                      T <= rope_positions_ ? &rope : nullptr);
}

Status LlamaModel::attend_decode_full(int layer, const cache::BlockPool& pool, cache::SeqId seq, const float* q,
                                      float* out) const {
  PALU_ASSIGN_OR_RETURN(int64_t T, pool.length(seq));
  std::vector<const uint16_t*> wk, wv;
  PALU_ASSIGN_OR_RETURN(cpu::LatentRows k, rows_of(pool, seq, layer, Proj::kKey, 0, &wk));
  PALU_ASSIGN_OR_RETURN(cpu::LatentRows v, rows_of(pool, seq, layer, Proj::kValue, 0, &wv));
  cpu::FullAttentionShape shape{config_.num_heads, config_.num_kv_heads, config_.head_dim};
  return cpu::full_attention_decode(shape, k, v, (int)T, q, out);
}

// Causal attention of the sequence's newest n positions over all its positions, in key tiles:
// per tile the keys are decoded (full rows, post-RoPE) or rebuilt from latents (k = B^K z + b,
// RoPE at each token's position), and every (query head, query chunk) updates an online
// softmax whose accumulator is over the head's value rows (full: d_h values of its KV head;
// latent: the r_v latent of its group, so out is the latent attention output).
// q: [n, H·d_h] (RoPE applied). out: [n, width], width = H·d_h (full) or the latent width.
Status LlamaModel::attend_prefill(int layer, const cache::BlockPool& pool, cache::SeqId seq, int n, const float* q,
                                  float* out) const {
  const ModelConfig& c = config_;
  const int H = c.num_heads, dh = c.head_dim, kvw = c.kv_width(), qw = c.q_width();
  const int n_rep = H / c.num_kv_heads;
  const bool latent = !palu_.empty();
  const int s = latent ? manifest_.group_size : c.num_kv_heads;
  const int G = c.num_kv_heads / s;
  PALU_ASSIGN_OR_RETURN(int64_t T64, pool.length(seq));
  const int T = (int)T64, p0 = T - n;
  const float scale = 1.0f / std::sqrt((float)dh);
  const cpu::KernelTable& kt = cpu::kernels();

  // Row descriptors per group (full: one "group" with the whole K / V row).
  std::vector<cpu::LatentRows> krows(G), vrows(G);
  std::vector<std::vector<const uint16_t*>> windows(2 * (size_t)G);
  std::vector<int> voff(G + 1, 0);  // column of group g in the value tile
  for (int g = 0; g < G; ++g) {
    PALU_ASSIGN_OR_RETURN(krows[g], rows_of(pool, seq, layer, Proj::kKey, g, &windows[2 * g]));
    PALU_ASSIGN_OR_RETURN(vrows[g], rows_of(pool, seq, layer, Proj::kValue, g, &windows[2 * g + 1]));
    voff[g + 1] = voff[g] + vrows[g].rank;
  }
  const int vw = voff[G];
  // Per query head: value columns in the tile, width, and output column.
  std::vector<int> hv_col(H), hv_w(H), h_out(H + 1, 0);
  for (int h = 0; h < H; ++h) {
    const int j = h / n_rep;
    if (latent) {
      hv_col[h] = voff[j / s];
      hv_w[h] = vrows[j / s].rank;
    } else {
      hv_col[h] = j * dh;
      hv_w[h] = dh;
    }
    h_out[h + 1] = h_out[h] + hv_w[h];
  }
  const int width = h_out[H];

  std::vector<float> ktile((size_t)kKeyTile * kvw), vtile_t((size_t)vw * kKeyTile);
  std::vector<float> vtile((size_t)kKeyTile * vw);
  std::vector<float> m((size_t)n * H, -std::numeric_limits<float>::infinity()), l((size_t)n * H, 0.f);
  std::fill(out, out + (size_t)n * width, 0.f);
  int max_rk = 0;
  for (int g = 0; g < G; ++g) max_rk = std::max(max_rk, krows[g].rank);
  const int chunks = (n + kQueryChunk - 1) / kQueryChunk;
  std::vector<int64_t> tile_pos(kKeyTile);

  for (int k0 = 0; k0 < T; k0 += kKeyTile) {
    const int nk = std::min(kKeyTile, T - k0);
    for (int t = 0; t < nk; ++t) tile_pos[t] = k0 + t;
    // Keys [nk, kvw] and values [nk, vw] of the tile.
#pragma omp parallel for schedule(static)
    for (int g = 0; g < G; ++g) {
      if (latent) {
        std::vector<float> z((size_t)nk * max_rk);
        const int rk = krows[g].rank, N = s * dh;
        cpu::decode_latent_rows(krows[g], k0, nk, z.data());
        kt.gemm_nt(nk, N, rk, z.data(), rk, palu_[layer].k.groups[g].b.data(), rk, ktile.data() + (size_t)g * N, kvw,
                   0.f);
        if (c.qkv_bias) {
          const float* b = w_.layers[layer].bk.data() + (size_t)g * N;
          for (int t = 0; t < nk; ++t) kt.add(b, ktile.data() + (size_t)t * kvw + (size_t)g * N, N);
        }
      } else {
        cpu::decode_latent_rows(krows[g], k0, nk, ktile.data());
      }
      std::vector<float> vz((size_t)nk * vrows[g].rank);
      cpu::decode_latent_rows(vrows[g], k0, nk, vz.data());
      for (int t = 0; t < nk; ++t)
        std::memcpy(vtile.data() + (size_t)t * vw + voff[g], vz.data() + (size_t)t * vrows[g].rank,
                    sizeof(float) * vrows[g].rank);
    }
    if (latent) rope_rows(ktile.data(), nk, kvw, c.num_kv_heads, tile_pos.data());
    // Vᵀ [vw, nk] so P·V is an NT GEMM.
    for (int t = 0; t < nk; ++t)
      for (int i = 0; i < vw; ++i) vtile_t[(size_t)i * nk + t] = vtile[(size_t)t * vw + i];

#pragma omp parallel
    {
      std::vector<float> S((size_t)kQueryChunk * nk);
#pragma omp for schedule(dynamic, 1) collapse(2)
      for (int h = 0; h < H; ++h) {
        for (int ci = 0; ci < chunks; ++ci) {
          const int r0 = ci * kQueryChunk, rows = std::min(kQueryChunk, n - r0);
          // Queries r0.. see keys ≤ p0 + r; skip tiles entirely in the future of the chunk.
          if (k0 > p0 + r0 + rows - 1) continue;
          const int kvh = h / n_rep;
          const float* kh = ktile.data() + (size_t)kvh * dh;
          kt.gemm_nt(rows, nk, dh, q + (size_t)r0 * qw + (size_t)h * dh, qw, kh, kvw, S.data(), nk, 0.f);
          for (int r = 0; r < rows; ++r) {
            float* srow = S.data() + (size_t)r * nk;
            const int visible = std::min(nk, p0 + r0 + r + 1 - k0);  // ≥ 1 here for r's chunk start
            float& mi = m[(size_t)(r0 + r) * H + h];
            float& li = l[(size_t)(r0 + r) * H + h];
            float* acc = out + (size_t)(r0 + r) * width + h_out[h];
            if (visible <= 0) {
              std::fill(srow, srow + nk, 0.f);
              continue;
            }
            float bmax = -std::numeric_limits<float>::infinity();
            for (int t = 0; t < visible; ++t) {
              srow[t] *= scale;
              bmax = std::max(bmax, srow[t]);
            }
            const float m_new = std::max(mi, bmax);
            const float corr = std::exp(mi - m_new);
            const float sum = kt.exp_sum(srow, (size_t)visible, m_new);
            std::fill(srow + visible, srow + nk, 0.f);
            li = li * corr + sum;
            mi = m_new;
            if (corr != 1.f)
              for (int i = 0; i < hv_w[h]; ++i) acc[i] *= corr;
          }
          // acc[rows, w_h] += P[rows, nk] · V_h[nk, w_h]
          kt.gemm_nt(rows, hv_w[h], nk, S.data(), nk, vtile_t.data() + (size_t)hv_col[h] * nk, nk,
                     out + (size_t)r0 * width + h_out[h], width, 1.f);
        }
      }
    }
  }
#pragma omp parallel for schedule(static)
  for (int r = 0; r < n; ++r) {
    for (int h = 0; h < H; ++h) {
      const float inv = 1.0f / l[(size_t)r * H + h];
      float* acc = out + (size_t)r * width + h_out[h];
      for (int i = 0; i < hv_w[h]; ++i) acc[i] *= inv;
    }
  }
  return Status::ok();
}

// ---- the batched forward ------------------------------------------------------------------

Status LlamaModel::forward_pooled(std::span<const SeqStep> steps, cache::BlockPool* pool) const {
  if (pool == nullptr) return invalid_argument("forward: pool is null");
  if (steps.empty()) return invalid_argument("forward: no sequences in the batch");
  PALU_RETURN_IF_ERROR(check_cache_layout(pool->layout()));
  const ModelConfig& c = config_;
  const int d = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int qw = c.q_width(), kvw = c.kv_width();
  const bool latent = !palu_.empty();

  // Validate everything before the first write.
  std::set<cache::SeqId> seen;
  std::vector<int64_t> first_pos(steps.size());
  int N = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const SeqStep& st = steps[i];
    if (!seen.insert(st.seq).second) return invalid_argument("forward: " + seq_name(st.seq) + " appears twice in the batch");
    PALU_ASSIGN_OR_RETURN(int64_t len, pool->length(st.seq));
    if (st.n <= 0 || st.n > len) {
      return invalid_argument("forward: " + seq_name(st.seq) + " has " + std::to_string(len) + " positions; a step of " +
                              std::to_string(st.n) + " tokens must be in [1, length] (append before forward)");
    }
    if (st.tokens == nullptr) return invalid_argument("forward: " + seq_name(st.seq) + ": tokens is null");
    if (st.mode != LogitsMode::kNone && st.logits == nullptr)
      return invalid_argument("forward: " + seq_name(st.seq) + ": logits is null");
    for (int j = 0; j < st.n; ++j) {
      if (st.tokens[j] < 0 || st.tokens[j] >= V) {
        return invalid_argument("forward: token id " + std::to_string(st.tokens[j]) + " at index " + std::to_string(j) +
                                " of " + seq_name(st.seq) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
      }
    }
    if (len > (int64_t)std::numeric_limits<int>::max() / 2) return out_of_range("forward: sequence too long");
    first_pos[i] = len - st.n;
    N += st.n;
  }
  std::vector<int64_t> pos(N);
  std::vector<int> row0(steps.size() + 1, 0);
  for (size_t i = 0; i < steps.size(); ++i) {
    row0[i + 1] = row0[i] + steps[i].n;
    for (int j = 0; j < steps[i].n; ++j) pos[row0[i] + j] = first_pos[i] + j;
  }

  const cpu::KernelTable& kt = cpu::kernels();
  int width = qw;  // attention output width
  int rk_all = kvw, rv_all = kvw;
  if (latent) {
    width = 0;
    for (int l = 0; l < c.num_layers; ++l) width = std::max(width, head_v_off_[(size_t)l * (c.num_heads + 1) + c.num_heads]);
    rk_all = rv_all = 0;
    for (int l = 0; l < c.num_layers; ++l) {
      rk_all = std::max(rk_all, palu_[l].k.total_rank());
      rv_all = std::max(rv_all, palu_[l].v.total_rank());
    }
  }
  std::vector<float> x((size_t)N * d), xn((size_t)N * d), q((size_t)N * qw), att((size_t)N * width),
      kbuf((size_t)N * rk_all), vbuf((size_t)N * rv_all), gate((size_t)N * F), up((size_t)N * F);
  for (int r = 0; r < N; ++r) {
    int i = 0;
    while (row0[i + 1] <= r) ++i;
    const int32_t tok = steps[i].tokens[r - row0[i]];
    std::memcpy(x.data() + (size_t)r * d, w_.embed.data() + (size_t)tok * d, d * sizeof(float));
  }

  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& Lw = w_.layers[l];
#pragma omp parallel for schedule(static) if (N > 8)
    for (int r = 0; r < N; ++r)
      kt.rms_norm(x.data() + (size_t)r * d, Lw.attn_norm.data(), c.rms_norm_eps, xn.data() + (size_t)r * d, d);
    cpu::gemm_nt(N, qw, d, xn.data(), d, Lw.wq.data(), d, q.data(), qw);
    if (c.qkv_bias)
      for (int r = 0; r < N; ++r) kt.add(Lw.bq.data(), q.data() + (size_t)r * qw, qw);
    rope_rows(q.data(), N, qw, c.num_heads, pos.data());
    int kwidth = kvw, vwidth = kvw;
    if (latent) {
      kwidth = palu_[l].k.total_rank();
      vwidth = palu_[l].v.total_rank();
      cpu::gemm_nt(N, kwidth, d, xn.data(), d, k_a_all_[l].data(), d, kbuf.data(), kwidth);
      cpu::gemm_nt(N, vwidth, d, xn.data(), d, v_a_all_[l].data(), d, vbuf.data(), vwidth);
    } else {
      cpu::gemm_nt(N, kvw, d, xn.data(), d, Lw.wk.data(), d, kbuf.data(), kvw);
      cpu::gemm_nt(N, kvw, d, xn.data(), d, Lw.wv.data(), d, vbuf.data(), kvw);
      if (c.qkv_bias) {
        for (int r = 0; r < N; ++r) {
          kt.add(Lw.bk.data(), kbuf.data() + (size_t)r * kvw, kvw);
          kt.add(Lw.bv.data(), vbuf.data() + (size_t)r * kvw, kvw);
        }
      }
      rope_rows(kbuf.data(), N, kvw, c.num_kv_heads, pos.data());
    }
    for (size_t i = 0; i < steps.size(); ++i) {
      for (int j = 0; j < steps[i].n; ++j) {
        const int r = row0[i] + j;
        PALU_RETURN_IF_ERROR(pool->write_token_row(steps[i].seq, pos[r], l, Proj::kKey, kbuf.data() + (size_t)r * kwidth));
        PALU_RETURN_IF_ERROR(
            pool->write_token_row(steps[i].seq, pos[r], l, Proj::kValue, vbuf.data() + (size_t)r * vwidth));
      }
    }
    const int lw = latent ? head_v_off_[(size_t)l * (c.num_heads + 1) + c.num_heads] : qw;
    for (size_t i = 0; i < steps.size(); ++i) {
      const int r = row0[i];
      if (latent && steps[i].n == 1) {
        PALU_RETURN_IF_ERROR(attend_decode_latent(l, *pool, steps[i].seq, q.data() + (size_t)r * qw,
                                                  att.data() + (size_t)r * lw));
      } else if (steps[i].n == 1) {
        PALU_RETURN_IF_ERROR(attend_decode_full(l, *pool, steps[i].seq, q.data() + (size_t)r * qw,
                                                att.data() + (size_t)r * lw));
      } else {
        PALU_RETURN_IF_ERROR(attend_prefill(l, *pool, steps[i].seq, steps[i].n, q.data() + (size_t)r * qw,
                                            att.data() + (size_t)r * lw));
      }
    }
    // x += att · W_oᵀ (W_o' with B^V folded in for latents)
    const float* wo = latent ? wo_fused_[l].data() : Lw.wo.data();
    cpu::gemm_nt(N, d, lw, att.data(), lw, wo, lw, x.data(), d, 1.0f);
    if (latent && !out_bias_[l].empty())
      for (int r = 0; r < N; ++r) kt.add(out_bias_[l].data(), x.data() + (size_t)r * d, d);
#pragma omp parallel for schedule(static) if (N > 8)
    for (int r = 0; r < N; ++r)
      kt.rms_norm(x.data() + (size_t)r * d, Lw.ffn_norm.data(), c.rms_norm_eps, xn.data() + (size_t)r * d, d);
    cpu::gemm_nt(N, F, d, xn.data(), d, Lw.w_gate.data(), d, gate.data(), F);
    cpu::gemm_nt(N, F, d, xn.data(), d, Lw.w_up.data(), d, up.data(), F);
#pragma omp parallel for schedule(static) if (N > 8)
    for (int r = 0; r < N; ++r)
      kt.silu_mul(gate.data() + (size_t)r * F, up.data() + (size_t)r * F, gate.data() + (size_t)r * F, F);
    cpu::gemm_nt(N, d, F, gate.data(), F, Lw.w_down.data(), F, x.data(), d, 1.0f);
  }

  for (size_t i = 0; i < steps.size(); ++i) {
    const SeqStep& st = steps[i];
    if (st.mode == LogitsMode::kNone) continue;
    const int first = row0[i] + (st.mode == LogitsMode::kLast ? st.n - 1 : 0);
    const int rows = row0[i + 1] - first;
    for (int r = first; r < row0[i + 1]; ++r)
      kt.rms_norm(x.data() + (size_t)r * d, w_.final_norm.data(), c.rms_norm_eps, xn.data() + (size_t)r * d, d);
    cpu::gemm_nt(rows, V, d, xn.data() + (size_t)first * d, d, w_.output_matrix(), d, st.logits, V);
  }
  return Status::ok();
}

}  // namespace palu::model
