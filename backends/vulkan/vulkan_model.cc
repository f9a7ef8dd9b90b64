// VulkanModel / VulkanSequence: LlamaModel::forward_pooled's math (model/llama_pooled.cc) as a
// sequence of compute dispatches recorded into one command buffer per forward call.
#include "backends/vulkan/vulkan_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/vulkan/vulkan_context.h"
#include "backends/vulkan/vulkan_ops.h"
#include "cache/cache_layout.h"

namespace palu::backends::vulkan {
namespace {

using model::LogitsMode;

constexpr size_t kAlign = 256;

// Weights laid out in one device buffer: offsets are collected first, then uploaded.
class WeightPacker {
 public:
  // Reserves room for n values of type t; returns the byte offset.
  size_t reserve(size_t n, WeightType t) {
    const size_t off = bytes_;
    bytes_ += (n * (t == WeightType::kF32 ? 4 : 2) + kAlign - 1) / kAlign * kAlign;
    return off;
  }
  size_t bytes() const { return std::max<size_t>(bytes_, 16); }

 private:
  size_t bytes_ = 0;
};

Status upload_as(VulkanContext* ctx, const VulkanBuffer& dst, size_t off, const float* src,
                 size_t n, WeightType t) {
  if (t == WeightType::kF32) return ctx->upload(dst, off, src, n * 4);
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = f32_to_f16(src[i]);
  return ctx->upload(dst, off, h.data(), n * 2);
}

struct LayerDev {
  size_t attn_norm = 0, ffn_norm = 0, wq = 0, bq = 0, wk = 0, bk = 0, wv = 0, bv = 0, wo = 0;
  size_t gate = 0, up = 0, down = 0;
  // latent
  size_t ak = 0, av = 0, wo_fused = 0, out_bias = 0;
  std::vector<size_t> bkg;                        // per group B^K_gᵀ [r_k, s·d_h]
  std::vector<int> k_rank, v_rank, k_off, v_off;  // per group; offsets in z rows
  std::vector<int> out_col;  // per group: latent output column of its first head
  int rk_all = 0, rv_all = 0, latent_width = 0;
};

class VulkanModel;

class VulkanSequence final : public model::DeviceSequence {
 public:
  VulkanSequence(VulkanModel* m, int cap) : m_(m), cap_(cap) {}
  Status init();
  Status forward(const int32_t* tokens, int n, LogitsMode mode, float* logits) override;
  int size() const override { return size_; }
  int capacity() const override { return cap_; }
  Status truncate(int n) override {
    if (n < 0 || n > size_) {
      return invalid_argument("truncate: " + std::to_string(n) + " is outside 0.." +
                              std::to_string(size_) + " (the tokens cached)");
    }
    size_ = n;
    // As cache::BlockPool: tokens that aged out of the window stay at B bits (their f16 copies
    // were overwritten), so the window refills from n on.
    window_begin_ = std::min(window_begin_, n);
    return Status::ok();
  }
  size_t cache_bytes() const override { return cache_.bytes(); }

 private:
  Status ensure_scratch(int n, bool prefill);
  Status record(Recorder& rec, int n, LogitsMode mode);
  Region region(int layer, int kv, int group) const;
  // The f16 window's slots (0: none; only packed latent storage has one).
  int window() const;

  VulkanModel* m_;
  int cap_;
  int size_ = 0;
  // f16 window of packed latents (CacheOptions.window_tokens = N > 0): positions ≥
  // window_begin_ are read from the f16 ring. A step of n tokens first moves it to
  // max(window_begin_, size_ + n − N) (cache::BlockPool's append), so every query of the step
  // sees the same split; step_window_begin_ is that value while the step is recorded.
  int window_begin_ = 0;
  int step_window_begin_ = 0;
  VulkanBuffer cache_;
  std::vector<size_t> region_off_;  // [layer][kv][group] byte offsets
  int scratch_rows_ = 0;
  VulkanBuffer x_, xn_, q_, att_, kb_, vb_, gate_, up_, part_, tok_;
  VulkanBuffer ktemp_;  // latent prefill: rebuilt keys [cap, kvw]
  VulkanBuffer fold_;   // latent decode: the fused kernel's folded queries (latent_fold_words)
  int logits_rows_ = 0;
  VulkanBuffer logits_, logits_host_;
};

class VulkanModel final : public model::DeviceModel {
 public:
  VulkanModel(const model::LlamaModel& m, model::CacheOptions cache,
              std::shared_ptr<VulkanContext> ctx, WeightType wt)
      : m_(m), cache_(cache), ctx_(std::move(ctx)), wt_(wt) {}
  Status init();
  const DeviceInfo& device() const override { return ctx_->info(); }
  size_t weight_bytes() const override { return weights_.bytes(); }
  Result<std::unique_ptr<model::DeviceSequence>> new_sequence(int max_tokens) override {
    if (max_tokens <= 0 || max_tokens > m_.config().max_position_embeddings) {
      return invalid_argument(
          "new_sequence: max_tokens " + std::to_string(max_tokens) + " is outside 1.." +
          std::to_string(m_.config().max_position_embeddings) + " (the model's context)");
    }
    auto s = std::make_unique<VulkanSequence>(this, max_tokens);
    PALU_RETURN_IF_ERROR(s->init());
    return std::unique_ptr<model::DeviceSequence>(std::move(s));
  }
  std::string describe() const override {
    return "vulkan:" + std::to_string(ctx_->info().index) + " " + ctx_->info().name + ", " +
           (wt_ == WeightType::kF16 ? "f16" : "f32") + " weights, " +
           (latent() ? std::string("latent ") : std::string("full K/V ")) +
           row_storage_name(cache_.storage) + " cache" +
           (cache_.window_tokens > 0
                ? ", f16 window of " + std::to_string(cache_.window_tokens) + " tokens"
                : std::string());
  }

 private:
  friend class VulkanSequence;
  bool latent() const { return m_.is_compressed(); }
  uint64_t w(size_t off) const { return weights_.address(off); }

  const model::LlamaModel& m_;
  model::CacheOptions cache_;
  std::shared_ptr<VulkanContext> ctx_;
  VulkanBuffer weights_;
  WeightType wt_ = WeightType::kF16;
  size_t embed_ = 0, final_norm_ = 0, out_matrix_ = 0, rope_ = 0;
  uint32_t sin_off_ = 0;
  int rope_positions_ = 0;
  std::vector<LayerDev> layers_;
  int max_rk_ = 0, max_rv_ = 0, max_latent_width_ = 0, max_rk_all_ = 0, max_rv_all_ = 0;
};

Status VulkanModel::init() {
  const model::ModelConfig& c = m_.config();
  const model::LlamaWeights& W = m_.weights();
  const int d = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, dh = c.head_dim;
  const int H = c.num_heads, Hkv = c.num_kv_heads, n_rep = H / Hkv, qw = c.q_width(),
            kvw = c.kv_width();
  if (dh % 2 != 0) return unimplemented("vulkan: odd head dim " + std::to_string(dh));
  const bool lat = latent();
  const int s = lat ? m_.palu_manifest().group_size : 0;
  const int G = lat ? Hkv / s : 0;
  // The RoPE table for every position a sequence can reach, rounded like the CPU reference.
  rope_positions_ = std::max(1, c.max_position_embeddings);
  const int half = dh / 2;
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    const float expo = (float)(2 * i) / (float)dh;
    inv_freq[i] = 1.0f / (float)std::pow((double)(float)c.rope_theta, (double)expo);
  }
  std::vector<float> rope((size_t)2 * rope_positions_ * half);
  for (int t = 0; t < rope_positions_; ++t) {
    for (int i = 0; i < half; ++i) {
      const float angle = (float)t * inv_freq[i];
      rope[(size_t)t * half + i] = (float)std::cos((double)angle);
      rope[(size_t)rope_positions_ * half + (size_t)t * half + i] = (float)std::sin((double)angle);
    }
  }
  sin_off_ = (uint32_t)((size_t)rope_positions_ * half);

  // Host copies of the derived latent weights (A stacked, W_o with B^V folded in).
  struct Derived {
    std::vector<float> ak, av, wo_fused, out_bias;
  };
  std::vector<Derived> der(c.num_layers);
  WeightPacker pk;
  embed_ = pk.reserve(W.embed.size(), wt_);
  final_norm_ = pk.reserve(d, WeightType::kF32);
  out_matrix_ = W.lm_head.empty() ? embed_ : pk.reserve(W.lm_head.size(), wt_);
  rope_ = pk.reserve(rope.size(), WeightType::kF32);
  layers_.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    const model::LayerWeights& L = W.layers[l];
    LayerDev& D = layers_[l];
    D.attn_norm = pk.reserve(d, WeightType::kF32);
    D.ffn_norm = pk.reserve(d, WeightType::kF32);
    D.wq = pk.reserve(L.wq.size(), wt_);
    if (!L.bq.empty()) D.bq = pk.reserve(L.bq.size(), WeightType::kF32);
    if (!L.bk.empty()) D.bk = pk.reserve(L.bk.size(), WeightType::kF32);
    if (!L.bv.empty() && !lat) D.bv = pk.reserve(L.bv.size(), WeightType::kF32);
    D.gate = pk.reserve(L.w_gate.size(), wt_);
    D.up = pk.reserve(L.w_up.size(), wt_);
    D.down = pk.reserve(L.w_down.size(), wt_);
    if (!lat) {
      D.wk = pk.reserve(L.wk.size(), wt_);
      D.wv = pk.reserve(L.wv.size(), wt_);
      D.wo = pk.reserve(L.wo.size(), wt_);
      continue;
    }
    const model::PaluLayerFactors& f = m_.palu_factors()[l];
    Derived& X = der[l];
    D.k_rank.resize(G);
    D.v_rank.resize(G);
    D.k_off.assign(G + 1, 0);
    D.v_off.assign(G + 1, 0);
    D.out_col.assign(G + 1, 0);
    for (int g = 0; g < G; ++g) {
      D.k_rank[g] = f.k.groups[g].rank;
      D.v_rank[g] = f.v.groups[g].rank;
      D.k_off[g + 1] = D.k_off[g] + D.k_rank[g];
      D.v_off[g + 1] = D.v_off[g] + D.v_rank[g];
      D.out_col[g + 1] = D.out_col[g] + s * n_rep * D.v_rank[g];
      X.ak.insert(X.ak.end(), f.k.groups[g].a.begin(), f.k.groups[g].a.end());
      X.av.insert(X.av.end(), f.v.groups[g].a.begin(), f.v.groups[g].a.end());
      max_rk_ = std::max(max_rk_, D.k_rank[g]);
      max_rv_ = std::max(max_rv_, D.v_rank[g]);
    }
    D.rk_all = D.k_off[G];
    D.rv_all = D.v_off[G];
    D.latent_width = D.out_col[G];
    max_rk_all_ = std::max(max_rk_all_, D.rk_all);
    max_rv_all_ = std::max(max_rv_all_, D.rv_all);
    max_latent_width_ = std::max(max_latent_width_, D.latent_width);
    // W_o'[:, col(h) .. + r_v] = W_o[:, h·d_h ..] · B^V_g[u·d_h .., :]  (model/llama_pooled.cc)
    const int lw = D.latent_width;
    X.wo_fused.assign((size_t)d * lw, 0.f);
    for (int h = 0; h < H; ++h) {
      const int j = h / n_rep, g = j / s, u = j % s, r = D.v_rank[g];
      const int col = D.out_col[g] + (h - g * s * n_rep) * r;
      const float* bv = f.v.groups[g].b.data() + (size_t)u * dh * r;
      for (int i = 0; i < d; ++i) {
        const float* wo = L.wo.data() + (size_t)i * qw + (size_t)h * dh;
        float* dst = X.wo_fused.data() + (size_t)i * lw + col;
        for (int e = 0; e < dh; ++e) {
          const float a = wo[e];
          const float* brow = bv + (size_t)e * r;
          for (int p = 0; p < r; ++p) dst[p] += a * brow[p];
        }
      }
    }
    if (c.qkv_bias) {
      X.out_bias.assign(d, 0.f);
      for (int i = 0; i < d; ++i) {
        double acc = 0.0;
        for (int h = 0; h < H; ++h) {
          const int j = h / n_rep;
          for (int e = 0; e < dh; ++e)
            acc += (double)L.wo[(size_t)i * qw + h * dh + e] * L.bv[(size_t)j * dh + e];
        }
        X.out_bias[i] = (float)acc;
      }
      D.out_bias = pk.reserve(d, WeightType::kF32);
    }
    D.ak = pk.reserve(X.ak.size(), wt_);
    D.av = pk.reserve(X.av.size(), wt_);
    D.wo_fused = pk.reserve(X.wo_fused.size(), wt_);
    D.bkg.resize(G);
    for (int g = 0; g < G; ++g) D.bkg[g] = pk.reserve(f.k.groups[g].b.size(), wt_);
  }
  (void)F;
  (void)V;
  (void)kvw;
  PALU_ASSIGN_OR_RETURN(weights_, ctx_->alloc(pk.bytes(), MemoryKind::kDevice, "model weights"));
  auto up = [&](size_t off, const std::vector<float>& v, WeightType t) {
    return upload_as(ctx_.get(), weights_, off, v.data(), v.size(), t);
  };
  PALU_RETURN_IF_ERROR(up(embed_, W.embed, wt_));
  PALU_RETURN_IF_ERROR(up(final_norm_, W.final_norm, WeightType::kF32));
  if (!W.lm_head.empty()) PALU_RETURN_IF_ERROR(up(out_matrix_, W.lm_head, wt_));
  PALU_RETURN_IF_ERROR(up(rope_, rope, WeightType::kF32));
  for (int l = 0; l < c.num_layers; ++l) {
    const model::LayerWeights& L = W.layers[l];
    const LayerDev& D = layers_[l];
    PALU_RETURN_IF_ERROR(up(D.attn_norm, L.attn_norm, WeightType::kF32));
    PALU_RETURN_IF_ERROR(up(D.ffn_norm, L.ffn_norm, WeightType::kF32));
    PALU_RETURN_IF_ERROR(up(D.wq, L.wq, wt_));
    if (!L.bq.empty()) PALU_RETURN_IF_ERROR(up(D.bq, L.bq, WeightType::kF32));
    if (!L.bk.empty()) PALU_RETURN_IF_ERROR(up(D.bk, L.bk, WeightType::kF32));
    if (!L.bv.empty() && !lat) PALU_RETURN_IF_ERROR(up(D.bv, L.bv, WeightType::kF32));
    PALU_RETURN_IF_ERROR(up(D.gate, L.w_gate, wt_));
    PALU_RETURN_IF_ERROR(up(D.up, L.w_up, wt_));
    PALU_RETURN_IF_ERROR(up(D.down, L.w_down, wt_));
    if (!lat) {
      PALU_RETURN_IF_ERROR(up(D.wk, L.wk, wt_));
      PALU_RETURN_IF_ERROR(up(D.wv, L.wv, wt_));
      PALU_RETURN_IF_ERROR(up(D.wo, L.wo, wt_));
      continue;
    }
    const model::PaluLayerFactors& f = m_.palu_factors()[l];
    PALU_RETURN_IF_ERROR(up(D.ak, der[l].ak, wt_));
    PALU_RETURN_IF_ERROR(up(D.av, der[l].av, wt_));
    PALU_RETURN_IF_ERROR(up(D.wo_fused, der[l].wo_fused, wt_));
    if (!der[l].out_bias.empty())
      PALU_RETURN_IF_ERROR(up(D.out_bias, der[l].out_bias, WeightType::kF32));
    for (int g = 0; g < G; ++g) {
      // B^K_gᵀ [r_k, s·d_h] (the kernels' layout).
      const model::LowRankGroup& grp = f.k.groups[g];
      const int N = s * dh;
      std::vector<float> bt((size_t)grp.rank * N);
      for (int e = 0; e < N; ++e)
        for (int p = 0; p < grp.rank; ++p) bt[(size_t)p * N + e] = grp.b[(size_t)e * grp.rank + p];
      PALU_RETURN_IF_ERROR(up(D.bkg[g], bt, wt_));
    }
  }
  return Status::ok();
}

// ---- sequences ------------------------------------------------------------------------------

int VulkanSequence::window() const {
  return m_->latent() && row_storage_bits(m_->cache_.storage) > 0 ? m_->cache_.window_tokens : 0;
}

Region VulkanSequence::region(int layer, int kv, int group) const {
  const model::ModelConfig& c = m_->m_.config();
  Region r;
  r.storage = m_->cache_.storage;
  r.cap = cap_;
  if (m_->latent()) {
    const LayerDev& D = m_->layers_[layer];
    r.rank = kv == 0 ? D.k_rank[group] : D.v_rank[group];
  } else {
    r.rank = c.kv_width();
  }
  r.window = window();
  r.window_begin = step_window_begin_;
  const int G = m_->latent() ? (int)m_->layers_[layer].k_rank.size() : 1;
  r.base = cache_.address(region_off_[((size_t)layer * 2 + kv) * G + group]);
  return r;
}

Status VulkanSequence::init() {
  const model::ModelConfig& c = m_->m_.config();
  const int G = m_->latent() ? c.num_kv_heads / m_->m_.palu_manifest().group_size : 1;
  size_t bytes = 0;
  region_off_.clear();
  for (int l = 0; l < c.num_layers; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      for (int g = 0; g < G; ++g) {
        int rank = c.kv_width();
        if (m_->latent()) rank = kv == 0 ? m_->layers_[l].k_rank[g] : m_->layers_[l].v_rank[g];
        region_off_.push_back(bytes);
        bytes += region_words(m_->cache_.storage, rank, cap_, window()) * 4;
        bytes = (bytes + 15) / 16 * 16;
      }
    }
  }
  PALU_ASSIGN_OR_RETURN(cache_, m_->ctx_->alloc(bytes, MemoryKind::kDevice,
                                                "KV cache of " + std::to_string(cap_) + " tokens"));
  return Status::ok();
}

Status VulkanSequence::ensure_scratch(int n, bool prefill) {
  VulkanContext* ctx = m_->ctx_.get();
  const model::ModelConfig& c = m_->m_.config();
  if (n > scratch_rows_) {
    const int rows = std::max(n, 1);
    const size_t d = c.hidden_size, qw = c.q_width(), F = c.intermediate_size;
    const size_t aw = m_->latent() ? (size_t)m_->max_latent_width_ : qw;
    const size_t kw = m_->latent() ? (size_t)m_->max_rk_all_ : (size_t)c.kv_width();
    const size_t vw = m_->latent() ? (size_t)m_->max_rv_all_ : (size_t)c.kv_width();
    PALU_ASSIGN_OR_RETURN(x_, ctx->alloc(rows * d * 4, MemoryKind::kDevice, "activations"));
    PALU_ASSIGN_OR_RETURN(xn_, ctx->alloc(rows * d * 4, MemoryKind::kDevice, "activations"));
    PALU_ASSIGN_OR_RETURN(q_, ctx->alloc(rows * qw * 4, MemoryKind::kDevice, "queries"));
    PALU_ASSIGN_OR_RETURN(att_, ctx->alloc(rows * aw * 4, MemoryKind::kDevice, "attention output"));
    PALU_ASSIGN_OR_RETURN(kb_, ctx->alloc(rows * kw * 4, MemoryKind::kDevice, "new keys"));
    PALU_ASSIGN_OR_RETURN(vb_, ctx->alloc(rows * vw * 4, MemoryKind::kDevice, "new values"));
    PALU_ASSIGN_OR_RETURN(gate_, ctx->alloc(rows * F * 4, MemoryKind::kDevice, "ffn gate"));
    PALU_ASSIGN_OR_RETURN(up_, ctx->alloc(rows * F * 4, MemoryKind::kDevice, "ffn up"));
    PALU_ASSIGN_OR_RETURN(tok_, ctx->alloc(rows * 4, MemoryKind::kHostWrite, "token ids"));
    scratch_rows_ = rows;
  }
  if (!part_.valid()) {
    const int w_max = std::max(c.head_dim, m_->max_rv_);
    PALU_ASSIGN_OR_RETURN(part_, ctx->alloc(decode_partial_words(c.num_heads, 64, w_max) * 4,
                                            MemoryKind::kDevice, "decode partials"));
  }
  if (m_->latent() && !fold_.valid()) {
    PALU_ASSIGN_OR_RETURN(fold_,
                          ctx->alloc(latent_fold_words(c.num_heads, c.head_dim, m_->max_rk_) * 4,
                                     MemoryKind::kDevice, "latent decode folded queries"));
  }
  if (prefill && m_->latent() && !ktemp_.valid()) {
    PALU_ASSIGN_OR_RETURN(ktemp_, ctx->alloc((size_t)cap_ * c.kv_width() * 4, MemoryKind::kDevice,
                                             "latent prefill keys"));
  }
  return Status::ok();
}

Status VulkanSequence::record(Recorder& rec, int n, LogitsMode mode) {
  const VulkanModel& M = *m_;
  const model::ModelConfig& c = M.m_.config();
  const int d = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, dh = c.head_dim;
  const int H = c.num_heads, Hkv = c.num_kv_heads, n_rep = H / Hkv, qw = c.q_width(),
            kvw = c.kv_width();
  const int start = size_, T = start + n;
  const WeightType wt = M.wt_;
  const bool lat = M.latent();
  const uint64_t rope_tab = M.w(M.rope_);
  const int w_max = std::max(dh, M.max_rv_);
  // Latent layers: one 512-token split per workgroup column (up to the 64 the partials hold),
  // so the grouped kernel's splits × groups grid fills the device at long contexts.
  const int splits = lat ? std::clamp((T + 511) / 512, 1, 64)
                         : std::clamp((T + 63) / 64, 1, std::clamp(256 / Hkv, 1, 64));
  // One decode step's arguments, the same for the full and the latent kernels.
  const auto decode_args = [&] {
    DecodeArgs a;
    a.q = q_.address();
    a.part = part_.address();
    a.out = att_.address();
    a.T = T;
    a.H = H;
    a.H_kv = Hkv;
    a.dh = dh;
    a.splits = splits;
    a.w_max = w_max;
    return a;
  };
  // One prefill chunk's arguments; ow = the width of an attention output row.
  const auto prefill_args = [&](int ow) {
    PrefillArgs a;
    a.q = q_.address();
    a.qw = qw;
    a.n = n;
    a.p0 = start;
    a.H = H;
    a.H_kv = Hkv;
    a.dh = dh;
    a.out = att_.address();
    a.ow = ow;
    return a;
  };

  embed(rec, tok_.address(), M.w(M.embed_), wt, x_.address(), n, d, V);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerDev& D = M.layers_[l];
    rms_norm(rec, x_.address(), M.w(D.attn_norm), xn_.address(), n, d, d, c.rms_norm_eps);
    matmul(rec, xn_.address(), d, M.w(D.wq), wt, q_.address(), qw, n, qw, d, D.bq ? M.w(D.bq) : 0);
    rope(rec, q_.address(), rope_tab, n, qw, H, dh, start, M.sin_off_);
    if (!lat) {
      matmul(rec, xn_.address(), d, M.w(D.wk), wt, kb_.address(), kvw, n, kvw, d,
             D.bk ? M.w(D.bk) : 0);
      matmul(rec, xn_.address(), d, M.w(D.wv), wt, vb_.address(), kvw, n, kvw, d,
             D.bv ? M.w(D.bv) : 0);
      rope(rec, kb_.address(), rope_tab, n, kvw, Hkv, dh, start, M.sin_off_);
      const Region kr = region(l, 0, 0), vr = region(l, 1, 0);
      store_rows(rec, kb_.address(), kvw, 0, kr, n, start);
      store_rows(rec, vb_.address(), kvw, 0, vr, n, start);
      if (n == 1) {
        PALU_RETURN_IF_ERROR(attention_decode_full(rec, decode_args(), kr, vr));
      } else {
        PALU_RETURN_IF_ERROR(attention_prefill(rec, prefill_args(qw), kr, vr, dh, dh, 0, H, 0));
      }
      matmul(rec, att_.address(), qw, M.w(D.wo), wt, x_.address(), d, n, d, qw, 0, true);
    } else {
      const int G = (int)D.k_rank.size(), s = Hkv / G;
      matmul(rec, xn_.address(), d, M.w(D.ak), wt, kb_.address(), D.rk_all, n, D.rk_all, d);
      matmul(rec, xn_.address(), d, M.w(D.av), wt, vb_.address(), D.rv_all, n, D.rv_all, d);
      for (int g = 0; g < G; ++g) {
        store_rows(rec, kb_.address(), D.rk_all, D.k_off[g], region(l, 0, g), n, start);
        store_rows(rec, vb_.address(), D.rv_all, D.v_off[g], region(l, 1, g), n, start);
      }
      const int lw = D.latent_width;
      // Group g's slice of the key bias (s·d_h floats), 0 without one.
      const auto key_bias = [&](int g) -> uint64_t {
        return D.bk ? M.w(D.bk) + (uint64_t)g * s * dh * 4 : 0;
      };
      if (n == 1) {
        // All groups of the layer in one call: one decode dispatch where the grouped coopmat
        // kernel takes them (attention_decode_latent_groups), else one per group.
        DecodeArgs a = decode_args();
        a.rope = rope_tab;
        a.sin_off = M.sin_off_;
        a.fold = fold_.address();
        std::vector<LatentGroupArgs> gas(G);
        for (int g = 0; g < G; ++g) {
          LatentGroupArgs& ga = gas[g];
          ga.zk = region(l, 0, g);
          ga.zv = region(l, 1, g);
          ga.bk = M.w(D.bkg[g]);
          ga.wt = wt;
          ga.k_bias = key_bias(g);
          ga.group = g;
          ga.s = s;
          ga.out_col = D.out_col[g];
        }
        PALU_RETURN_IF_ERROR(attention_decode_latent_groups(rec, a, gas.data(), G, M.max_rk_));
      }
      if (n > 1) {
        for (int g = 0; g < G; ++g) {
          PALU_RETURN_IF_ERROR(latent_rebuild_keys(rec, region(l, 0, g), M.w(D.bkg[g]), wt,
                                                   key_bias(g), s, dh, T, rope_tab, M.sin_off_,
                                                   ktemp_.address(), kvw, g * s * dh));
        }
        Region kt;
        kt.base = ktemp_.address();
        kt.storage = RowStorage::kF32;
        kt.rank = kvw;
        kt.cap = cap_;
        const PrefillArgs a = prefill_args(lw);
        for (int g = 0; g < G; ++g) {
          PALU_RETURN_IF_ERROR(attention_prefill(rec, a, kt, region(l, 1, g), 0, D.v_rank[g],
                                                 g * s * n_rep, s * n_rep, D.out_col[g]));
        }
      }
      matmul(rec, att_.address(), lw, M.w(D.wo_fused), wt, x_.address(), d, n, d, lw, 0, true);
      if (D.out_bias) add(rec, M.w(D.out_bias), x_.address(), (size_t)n * d, d);
    }
    rms_norm(rec, x_.address(), M.w(D.ffn_norm), xn_.address(), n, d, d, c.rms_norm_eps);
    matmul(rec, xn_.address(), d, M.w(D.gate), wt, gate_.address(), F, n, F, d);
    matmul(rec, xn_.address(), d, M.w(D.up), wt, up_.address(), F, n, F, d);
    silu_mul(rec, gate_.address(), up_.address(), gate_.address(), (size_t)n * F);
    matmul(rec, gate_.address(), F, M.w(D.down), wt, x_.address(), d, n, d, F, 0, true);
  }
  if (mode == LogitsMode::kNone) return Status::ok();
  const int first = mode == LogitsMode::kLast ? n - 1 : 0, rows = n - first;
  rms_norm(rec, x_.address((size_t)first * d * 4), M.w(M.final_norm_),
           xn_.address((size_t)first * d * 4), rows, d, d, c.rms_norm_eps);
  matmul(rec, xn_.address((size_t)first * d * 4), d, M.w(M.out_matrix_), wt, logits_.address(), V,
         rows, V, d);
  if (logits_.mapped() == nullptr) rec.copy(logits_, 0, logits_host_, 0, (size_t)rows * V * 4);
  return Status::ok();
}

Status VulkanSequence::forward(const int32_t* tokens, int n, LogitsMode mode, float* logits) {
  const model::ModelConfig& c = m_->m_.config();
  if (n <= 0) return invalid_argument("forward: no tokens (n = " + std::to_string(n) + ")");
  if (tokens == nullptr) return invalid_argument("forward: tokens is null");
  if (mode != LogitsMode::kNone && logits == nullptr)
    return invalid_argument("forward: logits is null");
  if (size_ + n > cap_) {
    return out_of_range("forward: " + std::to_string(size_) + " cached + " + std::to_string(n) +
                        " new tokens exceed the sequence's capacity of " + std::to_string(cap_));
  }
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return invalid_argument("forward: token id " + std::to_string(tokens[i]) + " at index " +
                              std::to_string(i) + " is outside the vocabulary [0, " +
                              std::to_string(c.vocab_size) + ")");
    }
  }
  PALU_RETURN_IF_ERROR(ensure_scratch(n, n > 1));
  const int rows = mode == LogitsMode::kAll ? n : 1;
  if (mode != LogitsMode::kNone && rows > logits_rows_) {
    VulkanContext* ctx = m_->ctx_.get();
    const size_t bytes = (size_t)rows * c.vocab_size * 4;
    logits_host_ = VulkanBuffer();
    PALU_ASSIGN_OR_RETURN(logits_, ctx->alloc(bytes, MemoryKind::kDevice, "logits"));
    if (logits_.mapped() == nullptr) {
      PALU_ASSIGN_OR_RETURN(logits_host_,
                            ctx->alloc(bytes, MemoryKind::kHostRead, "logits read-back"));
    }
    logits_rows_ = rows;
  }
  std::memcpy(tok_.mapped(), tokens, (size_t)n * 4);
  const int N = window();
  step_window_begin_ = N > 0 ? std::max(window_begin_, size_ + n - N) : 0;
  {
    Recorder rec(m_->ctx_.get());
    Status st = record(rec, n, mode);
    if (st.is_ok()) st = rec.submit("vulkan forward");
    if (!st.is_ok()) {
      // Ring slots of positions ≥ step_window_begin_ may have been overwritten: what the CPU
      // session keeps after a failed step (append, then truncate back to size_).
      window_begin_ = std::min(step_window_begin_, size_);
      return st;
    }
  }
  window_begin_ = step_window_begin_;
  if (mode != LogitsMode::kNone) {
    const VulkanBuffer& src = logits_.mapped() != nullptr ? logits_ : logits_host_;
    std::memcpy(logits, src.mapped(), (size_t)rows * c.vocab_size * 4);
  }
  size_ += n;
  return Status::ok();
}

// Models on the same device share one context (its compiled pipelines above all: building them
// takes seconds on CPU drivers) while any of them lives.
Result<std::shared_ptr<VulkanContext>> shared_context(int index) {
  static std::mutex mu;
  static std::map<int, std::weak_ptr<VulkanContext>> live;
  std::lock_guard<std::mutex> g(mu);
  if (auto c = live[index].lock()) return c;
  PALU_ASSIGN_OR_RETURN(std::unique_ptr<VulkanContext> made, VulkanContext::create(index));
  std::shared_ptr<VulkanContext> c = std::move(made);
  live[index] = c;
  return c;
}

}  // namespace

Result<std::unique_ptr<model::DeviceModel>> make_vulkan_model(
    const model::LlamaModel& model, const model::DeviceModelOptions& options) {
  return make_vulkan_model(model, options, VulkanModelOptions{});
}

Result<std::unique_ptr<model::DeviceModel>> make_vulkan_model(
    const model::LlamaModel& model, const model::DeviceModelOptions& options,
    const VulkanModelOptions& vulkan) {
  // The layout's checks (e.g. a window needs packed storage), as the CPU session makes them.
  PALU_ASSIGN_OR_RETURN(cache::CacheLayoutSpec spec, model.cache_layout_spec(options.cache));
  PALU_RETURN_IF_ERROR(cache::CacheLayout::create(spec).status());
  if (options.device_index < 0) return invalid_argument("vulkan: negative device index");
  const int index = options.device_index == 0 ? -1 : options.device_index;
  std::shared_ptr<VulkanContext> ctx;
  if (vulkan.memory_limit_bytes > 0) {
    // A budgeted model gets a device of its own, so the limit counts its allocations only.
    PALU_ASSIGN_OR_RETURN(std::unique_ptr<VulkanContext> own, VulkanContext::create(index));
    own->set_memory_limit_bytes(vulkan.memory_limit_bytes);
    ctx = std::move(own);
  } else {
    PALU_ASSIGN_OR_RETURN(ctx, shared_context(index));
  }
  WeightType wt = ctx->is_cpu() ? WeightType::kF32 : WeightType::kF16;
  if (vulkan.weights == VulkanModelOptions::Weights::kF16) wt = WeightType::kF16;
  if (vulkan.weights == VulkanModelOptions::Weights::kF32) wt = WeightType::kF32;
  auto m = std::make_unique<VulkanModel>(model, options.cache, std::move(ctx), wt);
  PALU_RETURN_IF_ERROR(m->init());
  return std::unique_ptr<model::DeviceModel>(std::move(m));
}

}  // namespace palu::backends::vulkan
