// The whole Llama-family forward on a CUDA GPU (cuda_model.h, model/device_model.h).
//
// Weights are uploaded once as f16 (norm weights, biases, tables and the latent projections A in
// f32); activations are f32; every f16 weight GEMM rounds its input rows to f16 and runs cuBLAS
// GemmEx with f32 accumulation; z = A·x is an f32 SGEMM (it decides quantized latents' codes). The
// math is LlamaModel::forward_pooled's (model/llama_pooled.cc):
//   x = embed[ids]; per layer: xn = rms(x)·w; q = xn·W_qᵀ (+b_q), RoPE at the token positions;
//   uncompressed: k, v = xn·W_kᵀ, xn·W_vᵀ (+b), RoPE(k), rows appended to an f16 K/V cache;
//   compressed: z^K = xn·A^Kᵀ, z^V = xn·A^Vᵀ per group (pre-RoPE), appended in the cache storage
//     (f32/f16/bf16 or packed q8/q4/q3/q2, encoded exactly as cache/latent_packing.h);
//   attention → x += att·W_oᵀ (W_o' = W_o·B^V for latents, + Σ_h W_o,h b_v for Qwen2); the
//   SwiGLU FFN; logits = rms(x)·W_outᵀ.
// Attention:
//   * decode (n = 1) with head_dim 128: the fused kernels of attention_cuda.h — the latent kernel
//     (keys rebuilt from latents on the tensor cores with RoPE at each position, p·z^V) or
//     flash-decoding over the full f16 cache;
//   * everything else (prefill, and decode when head_dim ≠ 128, e.g. the 64-wide reference
//     models): keys of all T cached tokens decoded to f32 (latents: rebuilt k = B^K z + b_k with
//     RoPE at each position), scores by cuBLAS SGEMM per query chunk, a causal softmax, then
//     P·V (latents: P·z^V, values stay latent). f32 throughout, as the CPU prefill.
// Packed latents with an f16 window (CacheOptions.window_tokens = N > 0, cache::BlockPool's
// semantics): every token is stored packed; tokens at positions ≥ window_begin also get
// half(z) (round to nearest even) in a ring of min(N, capacity) f16 rows per (layer, K/V,
// group), slot p mod N. A step of n tokens first sets window_begin = max(window_begin, T + n − N)
// (every query of the step sees the same split); readers take the ring for positions ≥
// window_begin and the packed codes before. truncate(n): window_begin = min(window_begin, n)
// (aged-out rows stay packed). A windowed step always runs the generic attention (packed rows
// decoded to f32, then the window's rows overwritten from the ring); the fused decode kernel
// reads one storage per group and is not used with a window.
//
// A sequence owns one contiguous device buffer for its cache (capacity tokens), a stream and a
// cuBLAS handle. Scratch for one forward comes from the model's caching allocator and is
// returned after the stream is synchronized at the end of the call (also on failure).
#include "backends/cuda/cuda_model.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "backends/cuda/attention_cuda.h"
#include "backends/cuda/cuda_device.h"
#include "backends/cuda/cuda_model_kernels.h"
#include "backends/cuda/cuda_status.h"
#include "backends/cuda/cuda_stream.h"
#include "backends/cuda/forward_ops.h"
#include "cache/cache_layout.h"
#include "cache/contiguous_image.h"

namespace palu::backends::cuda {
namespace {

using model::LlamaModel;
using model::LogitsMode;
using model::ModelConfig;

// Scores of one query chunk of the prefill attention ([H, chunk, T] f32) stay under this.
constexpr size_t kScoreBudgetBytes = size_t{512} << 20;
// Positions of the device RoPE table (cos/sin [positions, d_h/2] f32).
constexpr int kMaxRopePositions = 1 << 17;
// Staging for the f32 → f16 weight upload.
constexpr size_t kStagingFloats = size_t{16} << 20;

Status blas_status(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status::ok();
  if (s == CUBLAS_STATUS_ALLOC_FAILED)
    return resource_exhausted(std::string(what) + ": cuBLAS could not allocate");
  return internal_error(std::string(what) + ": cuBLAS status " + std::to_string((int)s));
}
#define PALU_BLAS(call) PALU_RETURN_IF_ERROR(blas_status((call), #call))

size_t align256(size_t x) {
  return (x + 255) / 256 * 256;
}

// One layer's weights on the device.
struct LayerDev {
  CudaBuffer attn_norm, ffn_norm;  // f32 [d]
  CudaBuffer wq;                   // f16 [H·d_h, d]
  CudaBuffer bq, bk, bv;  // f32 [H·d_h], [H_kv·d_h] (Qwen2 only; bk also for latent keys)
  CudaBuffer wk, wv;      // f16 [H_kv·d_h, d] (uncompressed)
  CudaBuffer wo;          // f16 [d, H·d_h], or W_o' [d, width] with B^V folded in (latents)
  CudaBuffer out_bias;    // f32 [d]: Σ_h W_o,h b_v (latent Qwen2), else empty
  CudaBuffer ka, va;      // f32 [Σ r_k, d], [Σ r_v, d]: the groups' A stacked (f32: see upload)
  std::vector<CudaBuffer> bk16;  // [group] B^K f16 [s·d_h, r_k] (fused decode)
  std::vector<CudaBuffer> bk32;  // [group] B^K f32 [s·d_h, r_k] (prefill key rebuild)
  CudaBuffer w_gate, w_up;       // f16 [F, d]
  CudaBuffer w_down;             // f16 [d, F]
  std::vector<int> rk, rv;       // [group] ranks (latents)
  std::vector<int> koff, voff;   // [G+1] column of group g in z^K / z^V rows
  std::vector<int> h_out;        // [H+1] attention output column of head h
  int width = 0;                 // attention output width (H·d_h, or the latent width)
};

class CudaModel;

class CudaSequence final : public model::DeviceSequence {
 public:
  CudaSequence(CudaModel* m, int capacity) : m_(m), cap_(capacity) {}
  Status init();
  Status forward(const int32_t* tokens, int n, LogitsMode mode, float* logits) override;
  int size() const override { return len_; }
  int capacity() const override { return cap_; }
  Status truncate(int n) override {
    if (n < 0 || n > len_)
      return out_of_range("truncate: n must be in [0, " + std::to_string(len_) +
                          "] (the cached tokens), found " + std::to_string(n));
    len_ = n;
    // As cache::BlockPool: tokens that aged out stay packed (their f16 copies are gone).
    window_begin_ = std::min(window_begin_, n);
    return Status::ok();
  }
  size_t cache_bytes() const override { return cache_.bytes(); }
  Result<cache::SequenceImage> export_image(const cache::CacheLayout& layout) const override;
  Status import_image(const cache::CacheLayout& layout, const cache::SequenceImage& image) override;

 private:
  // Where each (layer, kv, group) segment lives in cache_ (cache/contiguous_image.h), after
  // checking that `layout` describes this sequence's storage.
  Result<std::vector<cache::ContiguousSegment>> contiguous_plan(const cache::CacheLayout& layout) const;
  // Buffers of one forward; they outlive the work queued on them (freed after a sync).
  struct Scratch {
    std::vector<CudaBuffer> bufs;
    Result<float*> f32(CudaAllocator* a, size_t n) {  // n floats
      PALU_ASSIGN_OR_RETURN(CudaBuffer b, CudaBuffer::make(a, std::max<size_t>(n, 1) * 4));
      bufs.push_back(std::move(b));
      return bufs.back().as<float>();
    }
  };
  struct Seg {  // one (layer, K/V, group) latent segment of the cache buffer
    size_t rows = 0, scale = 0, zero = 0, row_bytes = 0;
    size_t ring = 0;  // the f16 window ring [min(N, capacity), rank] (window only)
    int rank = 0;
  };
  // The prefill attention's buffers, allocated once per forward and reused by every layer.
  struct GenericBufs {
    float* K = nullptr;  // [T, H_kv·d_h] keys (post-RoPE)
    float* V = nullptr;  // [T, value width] values or value latents
    float* Z = nullptr;  // [T, Σ r_k] key latents (compressed models)
    float* S = nullptr;  // [H, qc, T] scores of one query chunk
    int qc = 0;
  };
  Status run(const int32_t* tokens, int n, LogitsMode mode, float* logits, Scratch* s);
  Status gemm(const float* x, const CudaBuffer& w, float* y, int m, int n, int k, float beta);
  Status gemm_f32(const float* x, const CudaBuffer& w, float* y, int m, int n, int k);
  Status attention_generic(int l, int n, const float* q, float* att, const GenericBufs& b);
  Status attention_decode(int l, const float* q, float* att);
  std::vector<CudaLatentGroup> latent_groups(int l) const;
  const Seg& seg(int l, int kv, int g) const;
  uint16_t* full_rows(int l, int kv) const;
  // The f16 window's ring slots N (0: no window; only packed latents have one).
  int window() const;

  CudaModel* m_;
  int cap_;
  int len_ = 0;
  int window_begin_ = 0;  // first position read from the f16 window (window() > 0)
  int step_wb_ = 0;       // window_begin of the step being run: max(window_begin_, T + n − N)
  CudaStream stream_;
  CublasHandle blas_;
  CudaBuffer cache_;
  std::vector<Seg> segs_;        // [layer][kv][group]
  uint16_t* h16_ = nullptr;      // the f16 copy of a GEMM's input rows (in the forward's scratch)
  void* dec_scratch_ = nullptr;  // the fused decode kernels' partials (in the forward's scratch)
  size_t dec_scratch_bytes_ = 0;
};

class CudaModel final : public model::DeviceModel {
 public:
  CudaModel(const LlamaModel& m, const model::DeviceModelOptions& o) : src_(m), opt_(o) {}
  Status init();
  const DeviceInfo& device() const override { return info_; }
  size_t weight_bytes() const override { return weight_bytes_; }
  Result<std::unique_ptr<model::DeviceSequence>> new_sequence(int max_tokens) override {
    const int ctx = std::min(src_.config().max_position_embeddings, rope_positions_);
    if (max_tokens <= 0 || max_tokens > ctx)
      return invalid_argument(
          "new_sequence: max_tokens " + std::to_string(max_tokens) + " is outside 1.." +
          std::to_string(ctx) + " (the model's context" +
          (ctx < src_.config().max_position_embeddings
               ? ", capped at the CUDA backend's RoPE table of " + std::to_string(kMaxRopePositions)
               : std::string()) +
          ")");
    PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(dev_));
    auto s = std::make_unique<CudaSequence>(this, max_tokens);
    PALU_RETURN_IF_ERROR(s->init());
    return std::unique_ptr<model::DeviceSequence>(std::move(s));
  }
  std::string describe() const override {
    std::string c =
        latent_ ? std::string("latent ") + row_storage_name(opt_.cache.storage) +
                      " cache (group size " + std::to_string(src_.palu_manifest().group_size) + ")"
                : std::string("full ") + row_storage_name(opt_.cache.storage) + " K/V cache";
    if (opt_.cache.window_tokens > 0)
      c += ", f16 window of " + std::to_string(opt_.cache.window_tokens) + " tokens";
    return "cuda:" + std::to_string(dev_) + " " + info_.name + ", f16 weights, " + c + ", decode " +
           (opt_.cache.window_tokens > 0 ? std::string("generic attention (f16 window)")
            : fused_
                ? std::string("fused kernel")
                : "generic attention (head_dim " + std::to_string(src_.config().head_dim) + ")");
  }
  CudaAllocatorStats allocator_stats() const { return alloc_->stats(); }

 private:
  friend class CudaSequence;
  Result<CudaBuffer> up_f32(const float* p, size_t n);
  Result<CudaBuffer> up_f16(const float* p, size_t n);
  Status upload_layer(int l, const CublasHandle& blas);

  const LlamaModel& src_;
  model::DeviceModelOptions opt_;
  DeviceInfo info_;
  int dev_ = 0;
  std::unique_ptr<CudaAllocator> alloc_;  // declared before every buffer: destroyed after them
  CudaBuffer staging_;
  std::vector<LayerDev> layers_;
  CudaBuffer embed_, final_norm_, lm_head_;    // lm_head_ empty when tied to embed_
  CudaBuffer rope_cos_, rope_sin_, inv_freq_;  // [positions, d_h/2] f32, [d_h/2] f32
  int rope_positions_ = 0;
  bool latent_ = false;
  bool fused_ = false;  // decode through attention_cuda.h's kernels
  int max_width_ = 0, max_rk_ = 0, max_rv_ = 0;
  size_t weight_bytes_ = 0;
  // A page-locked host buffer for moving a sequence's cache out and in (export_image /
  // import_image: palud's GPU ↔ host moves), grown to the largest cache moved and reused; a
  // failed cudaMallocHost falls back to pageable memory. PALU_CUDA_PAGEABLE_MOVES=1 forces the
  // fallback (to compare).
  struct PinnedStaging {
    std::mutex mu;
    void* p = nullptr;
    size_t bytes = 0;
    ~PinnedStaging() {
      if (p != nullptr) cudaFreeHost(p);
    }
    uint8_t* get(size_t n) {
      if (const char* e = std::getenv("PALU_CUDA_PAGEABLE_MOVES"); e != nullptr && e[0] == '1') return nullptr;
      if (n <= bytes) return static_cast<uint8_t*>(p);
      if (p != nullptr) cudaFreeHost(p);
      p = nullptr;
      bytes = 0;
      if (cudaMallocHost(&p, n) != cudaSuccess) {
        (void)cudaGetLastError();
        p = nullptr;
        return nullptr;
      }
      bytes = n;
      return static_cast<uint8_t*>(p);
    }
  };
  PinnedStaging pinned_;
};

// ---- model ---------------------------------------------------------------------------------

Result<CudaBuffer> CudaModel::up_f32(const float* p, size_t n) {
  PALU_ASSIGN_OR_RETURN(CudaBuffer b, CudaBuffer::make(alloc_.get(), n * 4));
  PALU_RETURN_IF_ERROR(b.upload(p, n * 4));
  return b;
}

Result<CudaBuffer> CudaModel::up_f16(const float* p, size_t n) {
  PALU_ASSIGN_OR_RETURN(CudaBuffer b, CudaBuffer::make(alloc_.get(), n * 2));
  for (size_t i = 0; i < n; i += kStagingFloats) {
    const size_t k = std::min(kStagingFloats, n - i);
    // cudaMemcpy and the kernel on the legacy stream: the next copy waits for this conversion.
    PALU_RETURN_IF_ERROR(staging_.upload(p + i, k * 4));
    PALU_RETURN_IF_ERROR(detail::to_half(staging_.as<float>(), b.as<uint16_t>() + i, k, nullptr));
  }
  return b;
}

Status CudaModel::upload_layer(int l, const CublasHandle& blas) {
  const ModelConfig& c = src_.config();
  const model::LayerWeights& w = src_.weights().layers[l];
  const int d = c.hidden_size, F = c.intermediate_size, H = c.num_heads, dh = c.head_dim;
  const int qw = c.q_width(), kvw = c.kv_width(), n_rep = H / c.num_kv_heads;
  LayerDev& L = layers_[l];
  PALU_ASSIGN_OR_RETURN(L.attn_norm, up_f32(w.attn_norm.data(), d));
  PALU_ASSIGN_OR_RETURN(L.ffn_norm, up_f32(w.ffn_norm.data(), d));
  PALU_ASSIGN_OR_RETURN(L.wq, up_f16(w.wq.data(), (size_t)qw * d));
  if (c.qkv_bias && !w.bq.empty()) {
    PALU_ASSIGN_OR_RETURN(L.bq, up_f32(w.bq.data(), qw));
  }
  if (c.qkv_bias && !w.bk.empty()) {
    PALU_ASSIGN_OR_RETURN(L.bk, up_f32(w.bk.data(), kvw));
  }
  PALU_ASSIGN_OR_RETURN(L.w_gate, up_f16(w.w_gate.data(), (size_t)F * d));
  PALU_ASSIGN_OR_RETURN(L.w_up, up_f16(w.w_up.data(), (size_t)F * d));
  PALU_ASSIGN_OR_RETURN(L.w_down, up_f16(w.w_down.data(), (size_t)d * F));
  L.h_out.assign(H + 1, 0);
  if (!latent_) {
    PALU_ASSIGN_OR_RETURN(L.wk, up_f16(w.wk.data(), (size_t)kvw * d));
    PALU_ASSIGN_OR_RETURN(L.wv, up_f16(w.wv.data(), (size_t)kvw * d));
    if (c.qkv_bias && !w.bv.empty()) {
      PALU_ASSIGN_OR_RETURN(L.bv, up_f32(w.bv.data(), kvw));
    }
    PALU_ASSIGN_OR_RETURN(L.wo, up_f16(w.wo.data(), (size_t)d * qw));
    for (int h = 0; h < H; ++h) L.h_out[h + 1] = L.h_out[h] + dh;
    L.width = qw;
    return Status::ok();
  }
  const model::PaluLayerFactors& f = src_.palu_factors()[l];
  const int s = src_.palu_manifest().group_size, G = (int)f.k.groups.size();
  L.koff.assign(G + 1, 0);
  L.voff.assign(G + 1, 0);
  std::vector<float> ka, va;
  for (int g = 0; g < G; ++g) {
    const model::LowRankGroup& kg = f.k.groups[g];
    const model::LowRankGroup& vg = f.v.groups[g];
    L.rk.push_back(kg.rank);
    L.rv.push_back(vg.rank);
    L.koff[g + 1] = L.koff[g] + kg.rank;
    L.voff[g + 1] = L.voff[g] + vg.rank;
    ka.insert(ka.end(), kg.a.begin(), kg.a.end());
    va.insert(va.end(), vg.a.begin(), vg.a.end());
    PALU_ASSIGN_OR_RETURN(CudaBuffer b16, up_f16(kg.b.data(), kg.b.size()));
    PALU_ASSIGN_OR_RETURN(CudaBuffer b32, up_f32(kg.b.data(), kg.b.size()));
    L.bk16.push_back(std::move(b16));
    L.bk32.push_back(std::move(b32));
  }
  // A stays f32 and z = A·x runs in f32 (SGEMM on the f32 activations): z decides the codes of
  // packed latents, and the ~3e-4 relative error of an f16 GEMM there flips codes at rounding
  // boundaries by a whole quantization step (measured: q4 ppl 0.12% off the CPU with f16 A).
  PALU_ASSIGN_OR_RETURN(L.ka, up_f32(ka.data(), ka.size()));
  PALU_ASSIGN_OR_RETURN(L.va, up_f32(va.data(), va.size()));
  for (int h = 0; h < H; ++h) L.h_out[h + 1] = L.h_out[h] + L.rv[(h / n_rep) / s];
  L.width = L.h_out[H];
  // W_o'[:, h_out(h) .. + r_v) = W_o[:, h·d_h .. (h+1)·d_h) · B^V_g[u·d_h .. (u+1)·d_h, :] in f32
  // (cuBLAS), then f16.
  PALU_ASSIGN_OR_RETURN(CudaBuffer wo32, up_f32(w.wo.data(), (size_t)d * qw));
  PALU_ASSIGN_OR_RETURN(CudaBuffer wf32, CudaBuffer::make(alloc_.get(), (size_t)d * L.width * 4));
  std::vector<CudaBuffer> bv32;
  for (int g = 0; g < G; ++g) {
    PALU_ASSIGN_OR_RETURN(CudaBuffer b, up_f32(f.v.groups[g].b.data(), f.v.groups[g].b.size()));
    bv32.push_back(std::move(b));
  }
  cublasHandle_t h = static_cast<cublasHandle_t>(blas.handle());
  PALU_BLAS(cublasSetStream(h, nullptr));
  const float one = 1.f, zero = 0.f;
  for (int hd = 0; hd < H; ++hd) {
    const int j = hd / n_rep, g = j / s, u = j % s, r = L.rv[g];
    PALU_BLAS(cublasSgemm(
        h, CUBLAS_OP_N, CUBLAS_OP_N, r, d, dh, &one, bv32[g].as<float>() + (size_t)u * dh * r, r,
        wo32.as<float>() + (size_t)hd * dh, qw, &zero, wf32.as<float>() + L.h_out[hd], L.width));
  }
  PALU_ASSIGN_OR_RETURN(L.wo, CudaBuffer::make(alloc_.get(), (size_t)d * L.width * 2));
  PALU_RETURN_IF_ERROR(
      detail::to_half(wf32.as<float>(), L.wo.as<uint16_t>(), (size_t)d * L.width, nullptr));
  PALU_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());  // the temporaries go back to the allocator
  if (c.qkv_bias && !w.bv.empty()) {
    // v = B^V z + b_v and Σ_t p_t = 1: the bias adds Σ_h W_o,h b_v(h) to every output row.
    std::vector<float> ob(d);
    for (int i = 0; i < d; ++i) {
      double acc = 0.0;
      for (int hd = 0; hd < H; ++hd)
        for (int e = 0; e < dh; ++e)
          acc += (double)w.wo[(size_t)i * qw + hd * dh + e] * w.bv[(size_t)(hd / n_rep) * dh + e];
      ob[i] = (float)acc;
    }
    PALU_ASSIGN_OR_RETURN(L.out_bias, up_f32(ob.data(), d));
  }
  return Status::ok();
}

Status CudaModel::init() {
  const ModelConfig& c = src_.config();
  const int count = cuda_device_count();
  if (count == 0)
    return failed_precondition("backend cuda: no CUDA device (no GPU or no driver visible)");
  if (opt_.device_index < 0 || opt_.device_index >= count)
    return invalid_argument("backend cuda: --device " + std::to_string(opt_.device_index) +
                            " is outside 0.." + std::to_string(count - 1) + " (" +
                            std::to_string(count) + " CUDA devices)");
  dev_ = opt_.device_index;
  PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(dev_));
  cudaDeviceProp prop{};
  PALU_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, dev_));
  info_.kind = DeviceKind::kCuda;
  info_.index = dev_;
  info_.name = prop.name;
  info_.memory_bytes = prop.totalGlobalMem;
  latent_ = src_.is_compressed();
  // Cache options: validated as the CPU validates them, then what this backend implements.
  // (the layout's checks too, e.g. a window needs packed storage, as the CPU session makes them).
  {
    PALU_ASSIGN_OR_RETURN(cache::CacheLayoutSpec spec, src_.cache_layout_spec(opt_.cache));
    PALU_RETURN_IF_ERROR(cache::CacheLayout::create(spec).status());
  }
  const RowStorage st = opt_.cache.storage;
  if (!latent_ && st != RowStorage::kF16)
    return unimplemented(std::string("backend cuda: full K/V rows in ") + row_storage_name(st) +
                         " are not implemented (the CUDA full cache is f16)");
  alloc_ = std::make_unique<CudaAllocator>(dev_);
  const size_t base = alloc_->stats().in_use_bytes;
  const int d = c.hidden_size, V = c.vocab_size, dh = c.head_dim, half = dh / 2;
  PALU_ASSIGN_OR_RETURN(staging_, CudaBuffer::make(alloc_.get(), kStagingFloats * 4));
  PALU_ASSIGN_OR_RETURN(embed_, up_f16(src_.weights().embed.data(), (size_t)V * d));
  PALU_ASSIGN_OR_RETURN(final_norm_, up_f32(src_.weights().final_norm.data(), d));
  if (!src_.weights().lm_head.empty()) {
    PALU_ASSIGN_OR_RETURN(lm_head_, up_f16(src_.weights().lm_head.data(), (size_t)V * d));
  }
  PALU_ASSIGN_OR_RETURN(CublasHandle blas, CublasHandle::make(dev_));
  layers_.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) PALU_RETURN_IF_ERROR(upload_layer(l, blas));
  // inv_freq and the RoPE table exactly as LlamaModel computes them (transformers' float32
  // inv_freq; angle rounded to float; cos/sin in double, rounded to float).
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i) {
    const float expo = (float)(2 * i) / (float)dh;
    inv[i] = 1.0f / (float)std::pow((double)(float)c.rope_theta, (double)expo);
  }
  // The table covers the model's context up to kMaxRopePositions (64 MiB at d_h 128); longer
  // sequences are refused by new_sequence, naming the limit.
  rope_positions_ =
      std::max(1, std::min(c.max_position_embeddings > 0 ? c.max_position_embeddings : 4096,
                           kMaxRopePositions));
  std::vector<float> cs((size_t)rope_positions_ * half), sn((size_t)rope_positions_ * half);
  for (int t = 0; t < rope_positions_; ++t)
    for (int i = 0; i < half; ++i) {
      const float angle = (float)t * inv[i];
      cs[(size_t)t * half + i] = (float)std::cos((double)angle);
      sn[(size_t)t * half + i] = (float)std::sin((double)angle);
    }
  PALU_ASSIGN_OR_RETURN(inv_freq_, up_f32(inv.data(), half));
  PALU_ASSIGN_OR_RETURN(rope_cos_, up_f32(cs.data(), cs.size()));
  PALU_ASSIGN_OR_RETURN(rope_sin_, up_f32(sn.data(), sn.size()));
  PALU_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  staging_ = CudaBuffer();
  PALU_RETURN_IF_ERROR(alloc_->release_cache());
  weight_bytes_ = alloc_->stats().in_use_bytes - base;
  for (const LayerDev& L : layers_) {
    max_width_ = std::max(max_width_, L.width);
    max_rk_ = std::max(max_rk_, L.koff.empty() ? 0 : L.koff.back());
    max_rv_ = std::max(max_rv_, L.voff.empty() ? 0 : L.voff.back());
  }
  // The fused decode kernels: head_dim 128, H/H_kv ≤ 8 (full: 1, 2, 4 or 8), latent ranks
  // multiples of 32 up to 512.
  const int n_rep = c.num_heads / c.num_kv_heads;
  fused_ = dh == 128 && n_rep <= 8;
  if (!latent_) fused_ = fused_ && (n_rep == 1 || n_rep == 2 || n_rep == 4 || n_rep == 8);
  for (const LayerDev& L : layers_) {
    for (int r : L.rk) fused_ = fused_ && r % 32 == 0 && r <= 512;
    for (int r : L.rv) fused_ = fused_ && r % 32 == 0 && r <= 512;
  }
  return Status::ok();
}

// ---- sequence ------------------------------------------------------------------------------

Status CudaSequence::init() {
  const ModelConfig& c = m_->src_.config();
  PALU_ASSIGN_OR_RETURN(stream_, CudaStream::make(m_->dev_));
  PALU_ASSIGN_OR_RETURN(blas_, CublasHandle::make(m_->dev_));
  PALU_BLAS(cublasSetStream(static_cast<cublasHandle_t>(blas_.handle()),
                            static_cast<cudaStream_t>(stream_.handle())));
  size_t bytes = 0;
  if (!m_->latent_) {
    bytes = (size_t)c.num_layers * 2 * cap_ * c.kv_width() * 2;
  } else {
    const RowStorage st = m_->opt_.cache.storage;
    const bool packed = row_storage_bits(st) != 0;
    for (int l = 0; l < c.num_layers; ++l)
      for (int kv = 0; kv < 2; ++kv) {
        const std::vector<int>& ranks = kv == 0 ? m_->layers_[l].rk : m_->layers_[l].rv;
        for (int r : ranks) {
          Seg s;
          s.rank = r;
          s.row_bytes = row_storage_bytes(st, r);
          s.rows = bytes;
          bytes += align256(s.row_bytes * cap_);
          if (packed) {
            s.scale = bytes;
            bytes += align256((size_t)cap_ * 4);
            s.zero = bytes;
            bytes += align256((size_t)cap_ * 4);
          }
          if (window() > 0) {
            s.ring = bytes;
            bytes += align256((size_t)std::min(window(), cap_) * r * 2);
          }
          segs_.push_back(s);
        }
      }
  }
  PALU_ASSIGN_OR_RETURN(cache_, CudaBuffer::make(m_->alloc_.get(), bytes));
  return Status::ok();
}

Result<std::vector<cache::ContiguousSegment>> CudaSequence::contiguous_plan(const cache::CacheLayout& layout) const {
  const ModelConfig& c = m_->src_.config();
  const model::CacheOptions& o = m_->opt_.cache;
  if (layout.full() == m_->latent_ || layout.storage() != o.storage || layout.window_tokens() != window() ||
      layout.num_layers() != c.num_layers) {
    return invalid_argument("cache layout " + layout.describe() + " is not this CUDA sequence's (" +
                            (m_->latent_ ? "latent " : "full ") + std::string(row_storage_name(o.storage)) +
                            ", window " + std::to_string(window()) + ")");
  }
  std::vector<cache::ContiguousSegment> plan;
  for (int l = 0; l < c.num_layers; ++l)
    for (int kv = 0; kv < 2; ++kv) {
      if (!m_->latent_) {
        cache::ContiguousSegment cs;
        cs.rank = c.kv_width();
        cs.row_bytes = (size_t)c.kv_width() * 2;
        cs.rows = (size_t)(full_rows(l, kv) - cache_.as<uint16_t>()) * 2;
        plan.push_back(cs);
        continue;
      }
      const int G = (int)(kv == 0 ? m_->layers_[l].rk : m_->layers_[l].rv).size();
      for (int g = 0; g < G; ++g) {
        const Seg& sg = seg(l, kv, g);
        cache::ContiguousSegment cs;
        cs.rank = sg.rank;
        cs.row_bytes = sg.row_bytes;
        cs.rows = sg.rows;
        cs.scales = sg.scale;
        cs.zeros = sg.zero;
        cs.ring = sg.ring;
        plan.push_back(cs);
      }
    }
  return plan;
}

Result<cache::SequenceImage> CudaSequence::export_image(const cache::CacheLayout& layout) const {
  PALU_ASSIGN_OR_RETURN(std::vector<cache::ContiguousSegment> plan, contiguous_plan(layout));
  const int ring = window() > 0 ? std::min(window(), cap_) : 0;
  const int64_t wb = window() > 0 ? window_begin_ : len_;
  {
    // Through the pinned staging buffer: one async copy on this sequence's stream.
    std::lock_guard<std::mutex> lock(m_->pinned_.mu);
    if (uint8_t* pin = m_->pinned_.get(cache_.bytes())) {
      cudaStream_t st = static_cast<cudaStream_t>(stream_.handle());
      PALU_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pin, cache_.data(), cache_.bytes(), cudaMemcpyDeviceToHost, st));
      PALU_RETURN_IF_ERROR(stream_.synchronize());
      return cache::image_from_contiguous(layout, cache::ContiguousCache{plan, cap_, ring},
                                          std::span<const uint8_t>(pin, cache_.bytes()), len_, wb);
    }
  }
  std::vector<uint8_t> host;
  try {
    host.resize(cache_.bytes());
  } catch (const std::bad_alloc&) {
    return resource_exhausted("export_image: cannot allocate " + std::to_string(cache_.bytes()) + " host bytes");
  }
  PALU_RETURN_IF_ERROR(stream_.synchronize());
  PALU_RETURN_IF_ERROR(cache_.download(host.data(), host.size()));
  return cache::image_from_contiguous(layout, cache::ContiguousCache{plan, cap_, ring}, host, len_, wb);
}

Status CudaSequence::import_image(const cache::CacheLayout& layout, const cache::SequenceImage& image) {
  PALU_ASSIGN_OR_RETURN(std::vector<cache::ContiguousSegment> plan, contiguous_plan(layout));
  const int ring = window() > 0 ? std::min(window(), cap_) : 0;
  {
    std::lock_guard<std::mutex> lock(m_->pinned_.mu);
    if (uint8_t* pin = m_->pinned_.get(cache_.bytes())) {
      const std::span<uint8_t> buf(pin, cache_.bytes());
      PALU_RETURN_IF_ERROR(cache::contiguous_from_image(layout, cache::ContiguousCache{plan, cap_, ring}, image, buf));
      cudaStream_t st = static_cast<cudaStream_t>(stream_.handle());
      PALU_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(cache_.data(), pin, cache_.bytes(), cudaMemcpyHostToDevice, st));
      PALU_RETURN_IF_ERROR(stream_.synchronize());
      len_ = (int)image.length;
      window_begin_ = window() > 0 ? (int)image.window_begin : 0;
      return Status::ok();
    }
  }
  std::vector<uint8_t> host;
  try {
    host.resize(cache_.bytes());
  } catch (const std::bad_alloc&) {
    return resource_exhausted("import_image: cannot allocate " + std::to_string(cache_.bytes()) + " host bytes");
  }
  PALU_RETURN_IF_ERROR(cache::contiguous_from_image(layout, cache::ContiguousCache{plan, cap_, ring}, image, host));
  PALU_RETURN_IF_ERROR(stream_.synchronize());
  PALU_RETURN_IF_ERROR(cache_.upload(host.data(), host.size()));
  len_ = (int)image.length;
  window_begin_ = window() > 0 ? (int)image.window_begin : 0;
  return Status::ok();
}

const CudaSequence::Seg& CudaSequence::seg(int l, int kv, int g) const {
  const int G = (int)m_->layers_[0].rk.size();
  return segs_[((size_t)l * 2 + kv) * G + g];
}

int CudaSequence::window() const {
  const model::CacheOptions& o = m_->opt_.cache;
  return m_->latent_ && row_storage_bits(o.storage) != 0 ? std::max(0, o.window_tokens) : 0;
}

uint16_t* CudaSequence::full_rows(int l, int kv) const {
  return cache_.as<uint16_t>() + ((size_t)l * 2 + kv) * cap_ * m_->src_.config().kv_width();
}

Status CudaSequence::gemm(const float* x, const CudaBuffer& w, float* y, int m, int n, int k,
                          float beta) {
  cudaStream_t st = static_cast<cudaStream_t>(stream_.handle());
  PALU_RETURN_IF_ERROR(detail::to_half(x, h16_, (size_t)m * k, st));
  const float one = 1.f;
  // Row-major y[m,n] = x[m,k]·W[n,k]ᵀ is column-major yᵀ[n,m] = op_T(W as col-major [k,n]) · xᵀ.
  PALU_BLAS(cublasGemmEx(static_cast<cublasHandle_t>(blas_.handle()), CUBLAS_OP_T, CUBLAS_OP_N, n,
                         m, k, &one, w.data(), CUDA_R_16F, k, h16_, CUDA_R_16F, k, &beta, y,
                         CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::ok();
}

// y[m, n] = x[m, k] · W[n, k]ᵀ with f32 W (cuBLAS SGEMM, no TF32).
Status CudaSequence::gemm_f32(const float* x, const CudaBuffer& w, float* y, int m, int n, int k) {
  const float one = 1.f, zero = 0.f;
  PALU_BLAS(cublasSgemm(static_cast<cublasHandle_t>(blas_.handle()), CUBLAS_OP_T, CUBLAS_OP_N, n, m,
                        k, &one, w.as<float>(), k, x, k, &zero, y, n));
  return Status::ok();
}

Status CudaSequence::forward(const int32_t* tokens, int n, LogitsMode mode, float* logits) {
  const ModelConfig& c = m_->src_.config();
  if (n <= 0)
    return invalid_argument("forward: n (tokens) must be ≥ 1, found " + std::to_string(n));
  if (tokens == nullptr) return invalid_argument("forward: tokens is null");
  if (mode != LogitsMode::kNone && logits == nullptr)
    return invalid_argument("forward: logits is null");
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      return invalid_argument("forward: token id " + std::to_string(tokens[i]) + " at index " +
                              std::to_string(i) + " is outside the vocabulary [0, " +
                              std::to_string(c.vocab_size) + ")");
  if (n > cap_ - len_)
    return out_of_range("forward: " + std::to_string(n) +
                        " tokens do not fit: the sequence holds " + std::to_string(len_) + " of " +
                        std::to_string(cap_) + " tokens");
  PALU_CUDA_RETURN_IF_ERROR(cudaSetDevice(m_->dev_));
  const int N = window();
  step_wb_ = N > 0 ? std::max(window_begin_, len_ + n - N) : 0;
  Scratch s;
  Status st = run(tokens, n, mode, logits, &s);
  if (!st.is_ok()) {
    // Let queued work finish before the scratch goes back to the allocator; size() unchanged.
    (void)cudaStreamSynchronize(static_cast<cudaStream_t>(stream_.handle()));
    (void)cudaGetLastError();
    // Ring slots of positions ≥ step_wb_ may have been overwritten: what the CPU session keeps
    // after a failed step (append, then truncate back to size()).
    window_begin_ = std::min(step_wb_, len_);
    return st;
  }
  window_begin_ = step_wb_;
  len_ += n;
  return Status::ok();
}

Status CudaSequence::run(const int32_t* tokens, int n, LogitsMode mode, float* logits, Scratch* s) {
  const CudaModel& M = *m_;
  const ModelConfig& c = M.src_.config();
  CudaAllocator* a = M.alloc_.get();
  cudaStream_t st = static_cast<cudaStream_t>(stream_.handle());
  const int d = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, qw = c.q_width(),
            kvw = c.kv_width();
  const int p0 = len_;
  const int kcols = M.latent_ ? M.max_rk_ : kvw, vcols = M.latent_ ? M.max_rv_ : kvw;
  PALU_ASSIGN_OR_RETURN(float* x, s->f32(a, (size_t)n * d));
  PALU_ASSIGN_OR_RETURN(float* xn, s->f32(a, (size_t)n * d));
  PALU_ASSIGN_OR_RETURN(float* q, s->f32(a, (size_t)n * qw));
  PALU_ASSIGN_OR_RETURN(float* kz, s->f32(a, (size_t)n * kcols));
  PALU_ASSIGN_OR_RETURN(float* vz, s->f32(a, (size_t)n * vcols));
  PALU_ASSIGN_OR_RETURN(float* att, s->f32(a, (size_t)n * M.max_width_));
  PALU_ASSIGN_OR_RETURN(float* gate, s->f32(a, (size_t)n * F));
  PALU_ASSIGN_OR_RETURN(float* up, s->f32(a, (size_t)n * F));
  const size_t hk = std::max({(size_t)d, (size_t)F, (size_t)M.max_width_, (size_t)qw});
  PALU_ASSIGN_OR_RETURN(float* h16, s->f32(a, ((size_t)n * hk + 1) / 2));
  h16_ = reinterpret_cast<uint16_t*>(h16);
  PALU_ASSIGN_OR_RETURN(float* ids, s->f32(a, (size_t)n));
  int32_t* dids = reinterpret_cast<int32_t*>(ids);
  PALU_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dids, tokens, (size_t)n * 4, cudaMemcpyHostToDevice, st));
  PALU_RETURN_IF_ERROR(detail::gather_rows_f16(M.embed_.as<uint16_t>(), dids, n, d, x, st));
  const float* cs = M.rope_cos_.as<float>();
  const float* sn = M.rope_sin_.as<float>();
  const RowStorage storage = M.opt_.cache.storage;
  // One scratch for the fused decode kernels' split partials, sized for the largest layer: the
  // kernels then neither allocate nor wait, and the whole step stays queued on the stream.
  dec_scratch_ = nullptr;
  dec_scratch_bytes_ = 0;
  const int N = window();
  const bool fused = n == 1 && M.fused_ && N == 0;
  if (fused) {
    CudaAttentionShape sh{c.num_heads, c.num_kv_heads, c.head_dim,
                          M.latent_ ? M.src_.palu_manifest().group_size : 0};
    size_t bytes = 0;
    for (int l = 0; l < c.num_layers; ++l) {
      bytes = std::max(bytes, M.latent_
                                  ? latent_decode_scratch_bound(sh, latent_groups(l).data(), p0 + 1)
                                  : full_decode_scratch_bound(sh, p0 + 1));
      if (!M.latent_) break;
    }
    PALU_ASSIGN_OR_RETURN(float* ds, s->f32(a, (bytes + 3) / 4));
    dec_scratch_ = ds;
    dec_scratch_bytes_ = bytes;
  }
  GenericBufs gb;
  if (!fused) {
    const size_t T = (size_t)p0 + n;
    PALU_ASSIGN_OR_RETURN(gb.K, s->f32(a, T * kvw));
    PALU_ASSIGN_OR_RETURN(gb.V, s->f32(a, T * vcols));
    if (M.latent_) {
      PALU_ASSIGN_OR_RETURN(gb.Z, s->f32(a, T * kcols));
    }
    gb.qc = (int)std::max<size_t>(
        1, std::min<size_t>((size_t)n, kScoreBudgetBytes / ((size_t)c.num_heads * T * 4)));
    PALU_ASSIGN_OR_RETURN(gb.S, s->f32(a, (size_t)c.num_heads * gb.qc * T));
  }

  for (int l = 0; l < c.num_layers; ++l) {
    const LayerDev& L = M.layers_[l];
    PALU_RETURN_IF_ERROR(rms_norm_cuda(x, L.attn_norm.as<float>(), c.rms_norm_eps, xn, n, d, st));
    PALU_RETURN_IF_ERROR(gemm(xn, L.wq, q, n, qw, d, 0.f));
    if (L.bq.data() != nullptr)
      PALU_RETURN_IF_ERROR(detail::add_bias_rows(q, L.bq.as<float>(), n, qw, qw, st));
    PALU_RETURN_IF_ERROR(
        detail::rope_rows_table(q, n, qw, c.num_heads, c.head_dim, p0, cs, sn, st));
    if (!M.latent_) {
      PALU_RETURN_IF_ERROR(gemm(xn, L.wk, kz, n, kvw, d, 0.f));
      PALU_RETURN_IF_ERROR(gemm(xn, L.wv, vz, n, kvw, d, 0.f));
      if (L.bk.data() != nullptr)
        PALU_RETURN_IF_ERROR(detail::add_bias_rows(kz, L.bk.as<float>(), n, kvw, kvw, st));
      if (L.bv.data() != nullptr)
        PALU_RETURN_IF_ERROR(detail::add_bias_rows(vz, L.bv.as<float>(), n, kvw, kvw, st));
      PALU_RETURN_IF_ERROR(
          detail::rope_rows_table(kz, n, kvw, c.num_kv_heads, c.head_dim, p0, cs, sn, st));
      PALU_RETURN_IF_ERROR(
          detail::to_half(kz, full_rows(l, 0) + (size_t)p0 * kvw, (size_t)n * kvw, st));
      PALU_RETURN_IF_ERROR(
          detail::to_half(vz, full_rows(l, 1) + (size_t)p0 * kvw, (size_t)n * kvw, st));
    } else {
      const int rk_all = L.koff.back(), rv_all = L.voff.back();
      PALU_RETURN_IF_ERROR(gemm_f32(xn, L.ka, kz, n, rk_all, d));
      PALU_RETURN_IF_ERROR(gemm_f32(xn, L.va, vz, n, rv_all, d));
      uint8_t* base = cache_.as<uint8_t>();
      for (int g = 0; g < (int)L.rk.size(); ++g) {
        for (int kv = 0; kv < 2; ++kv) {
          const Seg& sg = seg(l, kv, g);
          const float* z = (kv == 0 ? kz + L.koff[g] : vz + L.voff[g]);
          PALU_RETURN_IF_ERROR(detail::encode_latent_rows(
              z, kv == 0 ? rk_all : rv_all, n, sg.rank, storage, base + sg.rows, sg.row_bytes,
              reinterpret_cast<float*>(base + sg.scale), reinterpret_cast<float*>(base + sg.zero),
              p0, st));
          if (N > 0)
            PALU_RETURN_IF_ERROR(detail::store_window_rows(
                z, kv == 0 ? rk_all : rv_all, n, sg.rank,
                reinterpret_cast<uint16_t*>(base + sg.ring), N, p0, step_wb_, st));
        }
      }
    }
    if (fused) {
      PALU_RETURN_IF_ERROR(attention_decode(l, q, att));
    } else {
      PALU_RETURN_IF_ERROR(attention_generic(l, n, q, att, gb));
    }
    PALU_RETURN_IF_ERROR(gemm(att, L.wo, x, n, d, L.width, 1.f));
    if (L.out_bias.data() != nullptr)
      PALU_RETURN_IF_ERROR(detail::add_bias_rows(x, L.out_bias.as<float>(), n, d, d, st));
    PALU_RETURN_IF_ERROR(rms_norm_cuda(x, L.ffn_norm.as<float>(), c.rms_norm_eps, xn, n, d, st));
    PALU_RETURN_IF_ERROR(gemm(xn, L.w_gate, gate, n, F, d, 0.f));
    PALU_RETURN_IF_ERROR(gemm(xn, L.w_up, up, n, F, d, 0.f));
    PALU_RETURN_IF_ERROR(silu_mul_cuda(gate, up, gate, (size_t)n * F, st));
    PALU_RETURN_IF_ERROR(gemm(gate, L.w_down, x, n, d, F, 1.f));
  }
  if (mode != LogitsMode::kNone) {
    const int rows = mode == LogitsMode::kAll ? n : 1, first = n - rows;
    PALU_ASSIGN_OR_RETURN(float* lg, s->f32(a, (size_t)rows * V));
    PALU_RETURN_IF_ERROR(rms_norm_cuda(x + (size_t)first * d, M.final_norm_.as<float>(),
                                       c.rms_norm_eps, xn, rows, d, st));
    PALU_RETURN_IF_ERROR(
        gemm(xn, M.lm_head_.data() != nullptr ? M.lm_head_ : M.embed_, lg, rows, V, d, 0.f));
    PALU_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(logits, lg, (size_t)rows * V * 4, cudaMemcpyDeviceToHost, st));
  }
  PALU_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  return Status::ok();
}

std::vector<CudaLatentGroup> CudaSequence::latent_groups(int l) const {
  const CudaModel& M = *m_;
  const ModelConfig& c = M.src_.config();
  const LayerDev& L = M.layers_[l];
  const int s = M.src_.palu_manifest().group_size, G = (int)L.rk.size();
  const RowStorage storage = M.opt_.cache.storage;
  const bool packed = row_storage_bits(storage) != 0;
  uint8_t* base = cache_.as<uint8_t>();
  std::vector<CudaLatentGroup> groups(G);
  for (int g = 0; g < G; ++g) {
    for (int kv = 0; kv < 2; ++kv) {
      const Seg& sg = seg(l, kv, g);
      CudaLatentRows& r = kv == 0 ? groups[g].k : groups[g].v;
      r.storage = storage;
      r.rows = base + sg.rows;
      r.row_stride_bytes = 0;
      r.scale = packed ? reinterpret_cast<const float*>(base + sg.scale) : nullptr;
      r.zero = packed ? reinterpret_cast<const float*>(base + sg.zero) : nullptr;
      r.rank = sg.rank;
    }
    groups[g].b_k = L.bk16[g].as<uint16_t>();
    groups[g].k_bias =
        L.bk.data() != nullptr ? L.bk.as<float>() + (size_t)g * s * c.head_dim : nullptr;
  }
  return groups;
}

Status CudaSequence::attention_decode(int l, const float* q, float* att) {
  const CudaModel& M = *m_;
  const ModelConfig& c = M.src_.config();
  const int T = len_ + 1;
  CudaAttentionShape shape{c.num_heads, c.num_kv_heads, c.head_dim, 0};
  CudaDecodeOptions opt;
  opt.scratch = dec_scratch_;
  opt.scratch_bytes = dec_scratch_bytes_;
  if (!M.latent_) {
    return full_attention_decode_cuda(shape, full_rows(l, 0), full_rows(l, 1), T, q, att,
                                      M.alloc_.get(), stream_.handle(), opt);
  }
  shape.group_size = M.src_.palu_manifest().group_size;
  const std::vector<CudaLatentGroup> groups = latent_groups(l);
  return latent_attention_decode_cuda(shape, groups.data(), T, T - 1, q, M.inv_freq_.as<float>(),
                                      att, M.alloc_.get(), stream_.handle(), opt);
}

Status CudaSequence::attention_generic(int l, int n, const float* q, float* att,
                                       const GenericBufs& b) {
  const CudaModel& M = *m_;
  const ModelConfig& c = M.src_.config();
  const LayerDev& L = M.layers_[l];
  cudaStream_t st = static_cast<cudaStream_t>(stream_.handle());
  cublasHandle_t bh = static_cast<cublasHandle_t>(blas_.handle());
  const int H = c.num_heads, Hkv = c.num_kv_heads, dh = c.head_dim, qw = c.q_width(),
            kvw = c.kv_width();
  const int n_rep = H / Hkv, p0 = len_, T = p0 + n;
  const RowStorage storage = M.opt_.cache.storage;
  const int vw = M.latent_ ? L.voff.back() : kvw;
  // Keys [T, kvw] (post-RoPE) and values [T, vw] of every cached token, f32.
  float* K = b.K;
  float* Vv = b.V;
  std::vector<int> hv_col(H);
  if (!M.latent_) {
    PALU_RETURN_IF_ERROR(detail::half_to_float(full_rows(l, 0), K, (size_t)T * kvw, st));
    PALU_RETURN_IF_ERROR(detail::half_to_float(full_rows(l, 1), Vv, (size_t)T * kvw, st));
    for (int h = 0; h < H; ++h) hv_col[h] = (h / n_rep) * dh;
  } else {
    const int sz = M.src_.palu_manifest().group_size, G = (int)L.rk.size(), N = sz * dh,
              rk_all = L.koff.back();
    float* Z = b.Z;
    const uint8_t* base = cache_.as<uint8_t>();
    const float one = 1.f, zero = 0.f;
    for (int g = 0; g < G; ++g) {
      const Seg& sk = seg(l, 0, g);
      const Seg& sv = seg(l, 1, g);
      PALU_RETURN_IF_ERROR(detail::decode_latent_rows(
          base + sk.rows, sk.row_bytes, reinterpret_cast<const float*>(base + sk.scale),
          reinterpret_cast<const float*>(base + sk.zero), storage, sk.rank, T, Z, rk_all, L.koff[g],
          st));
      PALU_RETURN_IF_ERROR(detail::decode_latent_rows(
          base + sv.rows, sv.row_bytes, reinterpret_cast<const float*>(base + sv.scale),
          reinterpret_cast<const float*>(base + sv.zero), storage, sv.rank, T, Vv, vw, L.voff[g],
          st));
      if (window() > 0) {
        // Positions ≥ window_begin read the exact f16 copies instead of the packed codes.
        PALU_RETURN_IF_ERROR(
            detail::load_window_rows(reinterpret_cast<const uint16_t*>(base + sk.ring), window(),
                                     sk.rank, step_wb_, T, Z, rk_all, L.koff[g], st));
        PALU_RETURN_IF_ERROR(
            detail::load_window_rows(reinterpret_cast<const uint16_t*>(base + sv.ring), window(),
                                     sv.rank, step_wb_, T, Vv, vw, L.voff[g], st));
      }
      // K[:, g·N .. (g+1)·N) = Z_g[T, r_k] · B^K_gᵀ  (col-major: Kᵀ = op_T(B as [r_k, N]) · Zᵀ)
      PALU_BLAS(cublasSgemm(bh, CUBLAS_OP_T, CUBLAS_OP_N, N, T, L.rk[g], &one,
                            L.bk32[g].as<float>(), L.rk[g], Z + L.koff[g], rk_all, &zero,
                            K + (size_t)g * N, kvw));
    }
    if (L.bk.data() != nullptr)
      PALU_RETURN_IF_ERROR(detail::add_bias_rows(K, L.bk.as<float>(), T, kvw, kvw, st));
    PALU_RETURN_IF_ERROR(detail::rope_rows_table(K, T, kvw, Hkv, dh, 0, M.rope_cos_.as<float>(),
                                                 M.rope_sin_.as<float>(), st));
    for (int h = 0; h < H; ++h) hv_col[h] = L.voff[(h / n_rep) / sz];
  }
  const int qc = b.qc;
  float* S = b.S;
  const float scale = 1.0f / std::sqrt((float)dh), one = 1.f, zero = 0.f;
  for (int r0 = 0; r0 < n; r0 += qc) {
    const int rows = std::min(qc, n - r0),
              Te = p0 + r0 + rows;  // keys visible to the chunk's last row
    // S_h[rows, Te] = Q_h · K_{h/n_rep}ᵀ · scale, batched over KV heads for each of the n_rep
    // heads.
    for (int rr = 0; rr < n_rep; ++rr) {
      PALU_BLAS(cublasSgemmStridedBatched(bh, CUBLAS_OP_T, CUBLAS_OP_N, Te, rows, dh, &scale, K,
                                          kvw, dh, q + (size_t)r0 * qw + (size_t)rr * dh, qw,
                                          (long long)n_rep * dh, &zero, S + (size_t)rr * rows * Te,
                                          Te, (long long)n_rep * rows * Te, Hkv));
    }
    PALU_RETURN_IF_ERROR(detail::causal_softmax(S, H, rows, Te, p0 + r0, st));
    // out_h[rows, w_h] = P_h[rows, Te] · V_h[Te, w_h]
    for (int h = 0; h < H; ++h) {
      const int w = L.h_out[h + 1] - L.h_out[h];
      PALU_BLAS(cublasSgemm(bh, CUBLAS_OP_N, CUBLAS_OP_N, w, rows, Te, &one, Vv + hv_col[h], vw,
                            S + (size_t)h * rows * Te, Te, &zero,
                            att + (size_t)r0 * L.width + L.h_out[h], L.width));
    }
  }
  return Status::ok();
}

}  // namespace

Result<std::unique_ptr<model::DeviceModel>> make_cuda_model(
    const model::LlamaModel& model, const model::DeviceModelOptions& options) {
  auto m = std::make_unique<CudaModel>(model, options);
  PALU_RETURN_IF_ERROR(m->init());
  return std::unique_ptr<model::DeviceModel>(std::move(m));
}

Result<CudaAllocatorStats> cuda_model_allocator_stats(const model::DeviceModel& model) {
  const auto* m = dynamic_cast<const CudaModel*>(&model);
  if (m == nullptr) return invalid_argument("cuda_model_allocator_stats: not a CUDA DeviceModel");
  return m->allocator_stats();
}

}  // namespace palu::backends::cuda
