#include "model/llama_model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

#include "backends/base/host_alloc.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/kernels.h"
#include "backends/cpu/latent_attention.h"
#include "cache/latent_codec.h"

namespace palu::model {
namespace {

namespace cpu = palu::backends::cpu;

// Converts a tensor to float32 after checking its shape. When `interleaved_heads` > 0 the
// rows are un-permuted from llama.cpp's interleaved-RoPE order to rotate-half order:
// within each head of d_h rows, row 2i+j of the file is row j·d_h/2+i of the model.
Status fetch(const TensorMap& tensors, const std::string& name, std::vector<int64_t> shape,
             const std::string& origin, std::vector<float>* out, int interleaved_heads = 0) {
  PALU_ASSIGN_OR_RETURN(const TensorView* v, tensors.get(name, origin));
  if (v->shape != shape) {
    TensorView want;
    want.shape = shape;
    return invalid_argument(origin + ": tensor '" + name + "' has shape " + v->shape_string() + ", expected " +
                            want.shape_string());
  }
  if (v->dtype != DType::kF32 && v->dtype != DType::kF16 && v->dtype != DType::kBF16) {
    return unimplemented(origin + ": tensor '" + name + "' has dtype " + dtype_name(v->dtype) +
                         "; weights must be f32, f16 or bf16");
  }
  const size_t n = (size_t)v->numel();
  try {
    if (host_alloc_should_fail()) throw std::bad_alloc();  // the test seam (backends/base/host_alloc.h)
    out->resize(n);
  } catch (const std::bad_alloc&) {
    return resource_exhausted(origin + ": out of memory converting tensor '" + name + "'");
  }
  const cpu::KernelTable& kt = cpu::kernels();
  // Source may be unaligned inside the file: convert through the byte-wise kernels.
  if (v->dtype == DType::kF32) {
    std::memcpy(out->data(), v->data, n * 4);
  } else if (reinterpret_cast<uintptr_t>(v->data) % 2 == 0) {
    const auto* src = reinterpret_cast<const uint16_t*>(v->data);
    if (v->dtype == DType::kF16) kt.f16_to_f32(src, out->data(), n);
    else kt.bf16_to_f32(src, out->data(), n);
  } else {
    convert_to_f32(v->dtype, v->data, out->data(), n);
  }
  if (interleaved_heads > 0) {
    const int64_t rows = shape[0];
    const int64_t cols = shape.size() > 1 ? shape[1] : 1;
    const int64_t dh = rows / interleaved_heads;
    const int64_t half = dh / 2;
    std::vector<float> tmp(out->size());
    for (int64_t h = 0; h < interleaved_heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        for (int64_t j = 0; j < 2; ++j) {
          const int64_t src = h * dh + 2 * i + j;
          const int64_t dst = h * dh + j * half + i;
          std::memcpy(tmp.data() + dst * cols, out->data() + src * cols, cols * sizeof(float));
        }
      }
    }
    out->swap(tmp);
  }
  return Status::ok();
}

}  // namespace

Status load_layer_weights(const ModelConfig& config, const TensorMap& tensors, int layer, const std::string& origin,
                          bool skip_kv_projections, LayerWeights* out, const std::function<void()>& tick) {
  if (layer < 0 || layer >= config.num_layers) {
    return invalid_argument(origin + ": layer " + std::to_string(layer) + " is outside [0, " +
                            std::to_string(config.num_layers) + ")");
  }
  const int64_t d = config.hidden_size, F = config.intermediate_size;
  const int64_t qw = config.q_width(), kvw = config.kv_width();
  const int inter_q = config.qk_rows_interleaved ? config.num_heads : 0;
  const int inter_k = config.qk_rows_interleaved ? config.num_kv_heads : 0;
  auto step = [&] {
    if (tick) tick();
  };
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  LayerWeights L;
  PALU_RETURN_IF_ERROR(fetch(tensors, p + "input_layernorm.weight", {d}, origin, &L.attn_norm));
  step();
  PALU_RETURN_IF_ERROR(fetch(tensors, p + "self_attn.q_proj.weight", {qw, d}, origin, &L.wq, inter_q));
  step();
  if (!skip_kv_projections) {
    PALU_RETURN_IF_ERROR(fetch(tensors, p + "self_attn.k_proj.weight", {kvw, d}, origin, &L.wk, inter_k));
    PALU_RETURN_IF_ERROR(fetch(tensors, p + "self_attn.v_proj.weight", {kvw, d}, origin, &L.wv));
  }
  step();
  step();
  PALU_RETURN_IF_ERROR(fetch(tensors, p + "self_attn.o_proj.weight", {d, qw}, origin, &L.wo));
  step();
  if (config.qkv_bias) {
    PALU_RETURN_IF_ERROR(fetch(tensors, p + "self_attn.q_proj.bias", {qw}, origin, &L.bq, inter_q));
    PALU_RETURN_IF_ERROR(fetch(tensors, p + "self_attn.k_proj.bias", {kvw}, origin, &L.bk, inter_k));
    PALU_RETURN_IF_ERROR(fetch(tensors, p + "self_attn.v_proj.bias", {kvw}, origin, &L.bv));
  }
  PALU_RETURN_IF_ERROR(fetch(tensors, p + "post_attention_layernorm.weight", {d}, origin, &L.ffn_norm));
  step();
  PALU_RETURN_IF_ERROR(fetch(tensors, p + "mlp.gate_proj.weight", {F, d}, origin, &L.w_gate));
  step();
  PALU_RETURN_IF_ERROR(fetch(tensors, p + "mlp.up_proj.weight", {F, d}, origin, &L.w_up));
  step();
  PALU_RETURN_IF_ERROR(fetch(tensors, p + "mlp.down_proj.weight", {d, F}, origin, &L.w_down));
  step();
  *out = std::move(L);
  return Status::ok();
}

Status load_tensor_f32(const TensorMap& tensors, const std::string& name, const std::vector<int64_t>& shape,
                       const std::string& origin, std::vector<float>* out) {
  return fetch(tensors, name, shape, origin, out);
}

Result<std::unique_ptr<LlamaModel>> LlamaModel::from_tensors(const ModelConfig& config, const TensorMap& tensors,
                                                             std::string origin, const LoadProgress& progress,
                                                             bool skip_kv_projections) {
  PALU_RETURN_IF_ERROR(config.validate(origin));
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->config_ = config;
  const int64_t d = config.hidden_size, V = config.vocab_size;
  const int total = 3 + config.num_layers * 9;
  int done = 0;
  auto tick = [&] {
    ++done;
    if (progress) progress(done, total);
  };
  LlamaWeights& w = m->w_;
  PALU_RETURN_IF_ERROR(fetch(tensors, "model.embed_tokens.weight", {V, d}, origin, &w.embed));
  tick();
  PALU_RETURN_IF_ERROR(fetch(tensors, "model.norm.weight", {d}, origin, &w.final_norm));
  tick();
  if (tensors.find("lm_head.weight") != nullptr) {
    PALU_RETURN_IF_ERROR(fetch(tensors, "lm_head.weight", {V, d}, origin, &w.lm_head));
  } else if (!config.tie_word_embeddings) {
    return not_found(origin + ": tensor 'lm_head.weight' is missing and tie_word_embeddings is false");
  }
  tick();
  w.layers.resize(config.num_layers);
  for (int l = 0; l < config.num_layers; ++l) {
    PALU_RETURN_IF_ERROR(load_layer_weights(config, tensors, l, origin, skip_kv_projections, &w.layers[l], tick));
  }
  // inv_freq exactly as transformers computes it: 1 / θ^(arange(0, d_h, 2) / d_h) in float32.
  const int half = config.head_dim / 2;
  m->inv_freq_.resize(half);
  for (int i = 0; i < half; ++i) {
    const float expo = (float)(2 * i) / (float)config.head_dim;
    m->inv_freq_[i] = 1.0f / (float)std::pow((double)(float)config.rope_theta, (double)expo);
  }
  // cos/sin table for the positions most sequences use (positions beyond it are computed).
  constexpr int kMaxRopeTable = 32768;
  const int max_pos = config.max_position_embeddings > 0 ? config.max_position_embeddings : 4096;
  m->rope_positions_ = std::min(max_pos, kMaxRopeTable);
  m->rope_cos_.resize((size_t)m->rope_positions_ * half);
  m->rope_sin_.resize((size_t)m->rope_positions_ * half);
  cpu::build_latent_rope_table(m->inv_freq_.data(), config.head_dim, m->rope_positions_, m->rope_cos_.data(),
                               m->rope_sin_.data());
  return m;
}

size_t LlamaModel::weight_bytes() const {
  size_t n = w_.embed.size() + w_.final_norm.size() + w_.lm_head.size();
  for (const auto& L : w_.layers) {
    n += L.attn_norm.size() + L.wq.size() + L.wk.size() + L.wv.size() + L.wo.size() + L.bq.size() + L.bk.size() +
         L.bv.size() + L.ffn_norm.size() + L.w_gate.size() + L.w_up.size() + L.w_down.size();
  }
  return n * sizeof(float);
}

int64_t LlamaModel::parameter_count() const { return (int64_t)(weight_bytes() / sizeof(float)); }

Result<cache::KvCache> LlamaModel::make_cache(int max_tokens) const {
  return cache::KvCache::create(config_.num_layers, config_.kv_width(), max_tokens, latent_window_ > 0);
}

Status LlamaModel::set_latent_window(int window) {
  if (window < 0) return invalid_argument("latent window must be ≥ 0, got " + std::to_string(window));
  if (window > 0 && (palu_.empty() || latent_bits_ == 0)) {
    return invalid_argument("a latent window needs a compressed model with quantized latents (latent bits > 0)");
  }
  latent_window_ = window;
  return Status::ok();
}

void LlamaModel::apply_rope(float* x, int n, int heads, int start) const {
  const int dh = config_.head_dim, half = dh / 2;
  const int width = heads * dh;
#pragma omp parallel for schedule(static) if (n > 8)
  for (int t = 0; t < n; ++t) {
    // cos/sin of (position · inv_freq) with the product rounded to float32 like transformers.
    float cs[512], sn[512];
    float* c = half <= 512 ? cs : new float[half];
    float* s = half <= 512 ? sn : new float[half];
    const float pos = (float)(start + t);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * inv_freq_[i];
      c[i] = (float)std::cos((double)angle);
      s[i] = (float)std::sin((double)angle);
    }
    float* row = x + (size_t)t * width;
    for (int h = 0; h < heads; ++h) {
      float* v = row + h * dh;
      for (int i = 0; i < half; ++i) {
        const float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c[i] - x1 * s[i];
        v[i + half] = x1 * c[i] + x0 * s[i];
      }
    }
    if (c != cs) {
      delete[] c;
      delete[] s;
    }
  }
}

// Causal attention of n query rows (positions start..start+n−1) over cache rows 0..start+n−1.
// q: [n, H·d_h] (RoPE applied), out: [n, H·d_h]. Query rows are processed in chunks so the
// score buffer stays bounded ([chunk, start+n] per head).
void LlamaModel::attention(int layer, const float* q, int n, int start, const cache::KvCache& cache,
                           float* out) const {
  const int H = config_.num_heads, dh = config_.head_dim, group = H / config_.num_kv_heads;
  const int qw = config_.q_width(), kvw = config_.kv_width();
  const float scale = 1.0f / std::sqrt((float)dh);
  const float* K = cache.keys(layer);
  const float* Vv = cache.values(layer);
  // The window simulation: a query at position p uses the unquantized rows of positions
  // > p − W (what the latent cache keeps in f16) and the quantized ones before.
  const int W = cache.has_exact() ? latent_window_ : 0;
  const float* EK = W > 0 ? cache.exact_keys(layer) : nullptr;
  const float* EV = W > 0 ? cache.exact_values(layer) : nullptr;
  const cpu::KernelTable& kt = cpu::kernels();
  constexpr int kChunk = 128;
  std::vector<float> scores((size_t)std::min(n, kChunk) * (start + n));
  std::vector<float> escores(W > 0 ? scores.size() : 0);
  for (int c0 = 0; c0 < n; c0 += kChunk) {
    const int rows = std::min(kChunk, n - c0);
    const int keys = start + c0 + rows;  // keys visible to the last row of the chunk
    for (int h = 0; h < H; ++h) {
      const int kvh = h / group;
      // S[rows, keys] = Q_h · K_hᵀ
      cpu::gemm_nt(rows, keys, dh, q + (size_t)c0 * qw + h * dh, qw, K + kvh * dh, kvw, scores.data(), keys);
      if (W > 0) {
        cpu::gemm_nt(rows, keys, dh, q + (size_t)c0 * qw + h * dh, qw, EK + kvh * dh, kvw, escores.data(), keys);
      }
#pragma omp parallel for schedule(static) if (rows * keys > 4096)
      for (int r = 0; r < rows; ++r) {
        float* srow = scores.data() + (size_t)r * keys;
        const int visible = start + c0 + r + 1;
        const int w0 = W > 0 ? std::max(0, visible - W) : visible;  // first unquantized position
        float* erow = W > 0 ? escores.data() + (size_t)r * keys : nullptr;
        for (int j = w0; j < visible; ++j) srow[j] = erow[j];
        for (int j = 0; j < visible; ++j) srow[j] *= scale;
        kt.softmax(srow, (size_t)visible);
        std::fill(srow + visible, srow + keys, 0.f);
        if (W > 0) {
          // Split P: quantized columns stay in S, window columns move to E.
          std::fill(erow, erow + w0, 0.f);
          for (int j = w0; j < visible; ++j) {
            erow[j] = srow[j];
            srow[j] = 0.f;
          }
          std::fill(erow + visible, erow + keys, 0.f);
        }
      }
      // O_h[rows, d_h] = P · V_h (+ P_window · V_exact,h)
      cpu::gemm_nn(rows, dh, keys, scores.data(), keys, Vv + kvh * dh, kvw, out + (size_t)c0 * qw + h * dh, qw);
      if (W > 0) {
        cpu::gemm_nn(rows, dh, keys, escores.data(), keys, EV + kvh * dh, kvw, out + (size_t)c0 * qw + h * dh, qw,
                     1.0f);
      }
    }
  }
}

Status LlamaModel::attach_palu(PaluManifest manifest, std::vector<PaluLayerFactors> factors, int latent_bits) {
  const ModelConfig& c = config_;
  if (latent_bits != 0 && !cache::valid_latent_bits(latent_bits)) {
    return invalid_argument("latent bits must be 0 (float), 2, 3, 4 or 8, got " + std::to_string(latent_bits));
  }
  if ((int)factors.size() != c.num_layers) {
    return invalid_argument("palu factors for " + std::to_string(factors.size()) + " layers, the model has " +
                            std::to_string(c.num_layers));
  }
  if (manifest.group_size <= 0 || c.num_kv_heads % manifest.group_size != 0) {
    return invalid_argument("group size " + std::to_string(manifest.group_size) + " does not divide " +
                            std::to_string(c.num_kv_heads) + " KV heads");
  }
  const int groups = c.num_kv_heads / manifest.group_size;
  const size_t width = (size_t)manifest.group_size * c.head_dim;
  k_a_all_.assign(c.num_layers, {});
  v_a_all_.assign(c.num_layers, {});
  for (int l = 0; l < c.num_layers; ++l) {
    for (int which = 0; which < 2; ++which) {
      const LowRankProjection& p = which == 0 ? factors[l].k : factors[l].v;
      if ((int)p.groups.size() != groups) {
        return invalid_argument("layer " + std::to_string(l) + ": " + std::to_string(p.groups.size()) +
                                " low-rank groups, expected " + std::to_string(groups));
      }
      std::vector<float>& all = which == 0 ? k_a_all_[l] : v_a_all_[l];
      for (const auto& g : p.groups) {
        if (g.rank <= 0 || g.a.size() != (size_t)g.rank * c.hidden_size || g.b.size() != width * g.rank) {
          return invalid_argument("layer " + std::to_string(l) + ": a low-rank group's A/B shapes do not match rank " +
                                  std::to_string(g.rank));
        }
        all.insert(all.end(), g.a.begin(), g.a.end());
      }
    }
  }
  manifest_ = std::move(manifest);
  palu_ = std::move(factors);
  latent_bits_ = latent_bits;
  build_latent_runtime();
  return Status::ok();
}

void LlamaModel::low_rank_project(const LowRankProjection& p, const std::vector<float>& a_all, const float* x,
                                  int n, float* out, float* exact_out) const {
  const int d = config_.hidden_size, kvw = config_.kv_width();
  const int R = (int)(a_all.size() / d);
  const int width = kvw / (int)p.groups.size();
  std::vector<float> z((size_t)n * R);
  cpu::gemm_nt(n, R, d, x, d, a_all.data(), d, z.data(), R);  // latents of every group: [n, Σ r]
  if (exact_out != nullptr) {
    int off = 0;
    for (size_t g = 0; g < p.groups.size(); ++g) {
      const LowRankGroup& grp = p.groups[g];
      cpu::gemm_nt(n, width, grp.rank, z.data() + off, R, grp.b.data(), grp.rank, exact_out + g * width, kvw);
      off += grp.rank;
    }
  }
  if (latent_bits_ > 0) {
#pragma omp parallel for schedule(static) if (n > 8)
    for (int t = 0; t < n; ++t) {
      int off = 0;
      for (const auto& g : p.groups) {
        cache::fake_quantize(z.data() + (size_t)t * R + off, (size_t)g.rank, latent_bits_);
        off += g.rank;
      }
    }
  }
  int off = 0;
  for (size_t g = 0; g < p.groups.size(); ++g) {
    const LowRankGroup& grp = p.groups[g];
    cpu::gemm_nt(n, width, grp.rank, z.data() + off, R, grp.b.data(), grp.rank, out + g * width, kvw);
    off += grp.rank;
  }
}

Status LlamaModel::forward(const int32_t* tokens, int n, cache::KvCache* cache, LogitsMode mode,
                           float* logits, const AttentionInputObserver* observer) const {
  if (n <= 0) return invalid_argument("forward: no tokens");
  if (cache->num_layers() != config_.num_layers || cache->kv_width() != config_.kv_width()) {
    return invalid_argument("forward: the cache was made for another model shape");
  }
  const int start = cache->size();
  if (start + n > cache->capacity()) {
    return out_of_range("forward: " + std::to_string(start) + " cached + " + std::to_string(n) +
                        " new tokens exceed the context of " + std::to_string(cache->capacity()));
  }
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return invalid_argument("forward: token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                              " is outside the vocabulary [0, " + std::to_string(config_.vocab_size) + ")");
    }
  }
  const int d = config_.hidden_size, F = config_.intermediate_size, V = config_.vocab_size;
  const int qw = config_.q_width(), kvw = config_.kv_width();
  const cpu::KernelTable& kt = cpu::kernels();
  const bool window = latent_window_ > 0 && !palu_.empty();
  if (window && !cache->has_exact()) {
    return invalid_argument("forward: a model with a latent window needs a cache from its make_cache()");
  }

  std::vector<float> x((size_t)n * d), xn((size_t)n * d), q((size_t)n * qw), att((size_t)n * qw),
      gate((size_t)n * F), up((size_t)n * F);
  for (int i = 0; i < n; ++i) {
    std::memcpy(x.data() + (size_t)i * d, w_.embed.data() + (size_t)tokens[i] * d, d * sizeof(float));
  }
  for (int l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& L = w_.layers[l];
#pragma omp parallel for schedule(static) if (n > 8)
    for (int i = 0; i < n; ++i) kt.rms_norm(x.data() + (size_t)i * d, L.attn_norm.data(), config_.rms_norm_eps,
                                            xn.data() + (size_t)i * d, d);
    float* kdst = cache->keys(l) + (size_t)start * kvw;
    float* vdst = cache->values(l) + (size_t)start * kvw;
    // The window simulation's unquantized rows (compressed models with a latent window only).
    float* ekdst = window ? cache->exact_keys(l) + (size_t)start * kvw : nullptr;
    float* evdst = window ? cache->exact_values(l) + (size_t)start * kvw : nullptr;
    cpu::gemm_nt(n, qw, d, xn.data(), d, L.wq.data(), d, q.data(), qw);
    if (observer != nullptr && *observer) (*observer)(l, xn.data(), n);
    if (palu_.empty()) {
      cpu::gemm_nt(n, kvw, d, xn.data(), d, L.wk.data(), d, kdst, kvw);
      cpu::gemm_nt(n, kvw, d, xn.data(), d, L.wv.data(), d, vdst, kvw);
    } else {
      low_rank_project(palu_[l].k, k_a_all_[l], xn.data(), n, kdst, ekdst);
      low_rank_project(palu_[l].v, v_a_all_[l], xn.data(), n, vdst, evdst);
    }
    if (config_.qkv_bias) {
      for (int i = 0; i < n; ++i) {
        kt.add(L.bq.data(), q.data() + (size_t)i * qw, qw);
        kt.add(L.bk.data(), kdst + (size_t)i * kvw, kvw);
        kt.add(L.bv.data(), vdst + (size_t)i * kvw, kvw);
        if (ekdst != nullptr) {
          kt.add(L.bk.data(), ekdst + (size_t)i * kvw, kvw);
          kt.add(L.bv.data(), evdst + (size_t)i * kvw, kvw);
        }
      }
    }
    apply_rope(q.data(), n, config_.num_heads, start);
    apply_rope(kdst, n, config_.num_kv_heads, start);
    if (ekdst != nullptr) apply_rope(ekdst, n, config_.num_kv_heads, start);
    attention(l, q.data(), n, start, *cache, att.data());
    // x += att · W_oᵀ
    cpu::gemm_nt(n, d, qw, att.data(), qw, L.wo.data(), qw, x.data(), d, 1.0f);
#pragma omp parallel for schedule(static) if (n > 8)
    for (int i = 0; i < n; ++i) kt.rms_norm(x.data() + (size_t)i * d, L.ffn_norm.data(), config_.rms_norm_eps,
                                            xn.data() + (size_t)i * d, d);
    cpu::gemm_nt(n, F, d, xn.data(), d, L.w_gate.data(), d, gate.data(), F);
    cpu::gemm_nt(n, F, d, xn.data(), d, L.w_up.data(), d, up.data(), F);
#pragma omp parallel for schedule(static) if (n > 8)
    for (int i = 0; i < n; ++i) kt.silu_mul(gate.data() + (size_t)i * F, up.data() + (size_t)i * F,
                                            gate.data() + (size_t)i * F, F);
    cpu::gemm_nt(n, d, F, gate.data(), F, L.w_down.data(), F, x.data(), d, 1.0f);
  }
  PALU_RETURN_IF_ERROR(cache->advance(n));
  if (mode == LogitsMode::kNone) return Status::ok();
  const int first = mode == LogitsMode::kLast ? n - 1 : 0;
  const int rows = n - first;
  for (int i = first; i < n; ++i) {
    kt.rms_norm(x.data() + (size_t)i * d, w_.final_norm.data(), config_.rms_norm_eps, xn.data() + (size_t)i * d, d);
  }
  cpu::gemm_nt(rows, V, d, xn.data() + (size_t)first * d, d, w_.output_matrix(), d, logits, V);
  return Status::ok();
}

}  // namespace palu::model
