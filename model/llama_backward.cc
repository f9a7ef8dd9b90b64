#include "model/llama_backward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <string>

#include "backends/cpu/gemm.h"
#include "backends/cpu/kernels.h"

namespace palu::model {
namespace {

namespace cpu = palu::backends::cpu;

// A per-row loop over fewer elements than this runs on one thread: waking the team costs more.
constexpr size_t kMinParallelElements = 1 << 15;
inline bool worth_threads(size_t rows, size_t width) {
  return rows > 1 && rows * width >= kMinParallelElements;
}

// dst[c, r] = src[r, c] for a rows × cols block (leading dimensions lds, ldd).
void transpose(int rows, int cols, const float* src, int lds, float* dst, int ldd) {
  constexpr int kTile = 32;
  const int col_tiles = (cols + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) if (worth_threads(rows, cols))
  for (int ct = 0; ct < col_tiles; ++ct) {
    const int c0 = ct * kTile, c1 = std::min(cols, c0 + kTile);
    for (int r0 = 0; r0 < rows; r0 += kTile) {
      const int r1 = std::min(rows, r0 + kTile);
      for (int c = c0; c < c1; ++c) {
        float* d = dst + (size_t)c * ldd;
        for (int r = r0; r < r1; ++r) d[r] = src[(size_t)r * lds + c];
      }
    }
  }
}

// dx += d(rms_norm(x)·w)/dx applied to dy, for one row of n:
//   y = x·r·w with r = 1/sqrt(mean(x²) + eps)  ⇒  dx = r·u − r³·x·(u·x)/n,  u = dy·w.
void rms_norm_backward_add(const float* x, const float* w, float eps, const float* dy, float* dx,
                           int n) {
  double ss = 0.0, ux = 0.0;
  for (int i = 0; i < n; ++i) {
    ss += (double)x[i] * x[i];
    ux += (double)dy[i] * w[i] * x[i];
  }
  const double r = 1.0 / std::sqrt(ss / n + (double)eps);
  const double coef = r * r * r * ux / n;
  for (int i = 0; i < n; ++i) dx[i] += (float)(r * dy[i] * w[i] - coef * x[i]);
}

// cos/sin of (position · inv_freq) for positions 0..n−1, rounded like LlamaModel::apply_rope:
// inv_freq = 1/θ^(2i/d_h) in float32 as transformers computes it, the product in float32.
struct RopeTable {
  int half = 0;
  std::vector<float> cos, sin;  // [n, d_h/2]

  RopeTable(const ModelConfig& c, int n)
      : half(c.head_dim / 2), cos((size_t)n * half), sin((size_t)n * half) {
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; ++i) {
      const float expo = (float)(2 * i) / (float)c.head_dim;
      inv_freq[i] = 1.0f / (float)std::pow((double)(float)c.rope_theta, (double)expo);
    }
    for (int t = 0; t < n; ++t) {
      for (int i = 0; i < half; ++i) {
        const float angle = (float)t * inv_freq[i];
        cos[(size_t)t * half + i] = (float)std::cos((double)angle);
        sin[(size_t)t * half + i] = (float)std::sin((double)angle);
      }
    }
  }

  // Rotate-half RoPE on x [n, heads·d_h]; `inverse` applies the transpose (rotation by −angle),
  // which is the backward of the forward rotation.
  void apply(float* x, int n, int heads, bool inverse) const {
    const int dh = 2 * half, width = heads * dh;
    const float sign = inverse ? -1.f : 1.f;
#pragma omp parallel for schedule(static) if (worth_threads(n, width))
    for (int t = 0; t < n; ++t) {
      const float* c = cos.data() + (size_t)t * half;
      const float* s = sin.data() + (size_t)t * half;
      float* row = x + (size_t)t * width;
      for (int h = 0; h < heads; ++h) {
        float* v = row + h * dh;
        for (int i = 0; i < half; ++i) {
          const float x0 = v[i], x1 = v[i + half], si = sign * s[i];
          v[i] = x0 * c[i] - x1 * si;
          v[i + half] = x1 * c[i] + x0 * si;
        }
      }
    }
  }
};

// What the backward needs of one layer's forward, each [n, width] row-major.
struct LayerActivations {
  std::vector<float> x_in;   // [n, d]    residual stream entering the layer
  std::vector<float> x_mid;  // [n, d]    residual stream after attention
  std::vector<float> q;      // [n, qw]   queries after bias and RoPE
  std::vector<float> k;      // [n, kvw]  keys after bias and RoPE
  std::vector<float> v;      // [n, kvw]  values (after bias)
  std::vector<float> gate;   // [n, F]    gate_proj output (before SiLU)
  std::vector<float> up;     // [n, F]    up_proj output
};

// Query rows per attention chunk: a chunk of rows r0..r0+rows−1 sees keys 0..r0+rows−1 only,
// which skips most of the masked upper triangle and keeps [rows, keys] blocks in cache.
constexpr int kAttnChunk = 128;

// Causal softmax probabilities of one head for query rows r0..r0+rows−1:
// P[rows, keys] = softmax(scale · Q_h[r0..] K_h[0..keys)ᵀ) with keys = r0 + rows and row t
// seeing keys 0..r0+t; masked entries are zero.
void attention_probs(int r0, int rows, int dh, const float* q, int ldq, const float* k, int ldk,
                     float scale, float* p) {
  const cpu::KernelTable& kt = cpu::kernels();
  const int keys = r0 + rows;
  cpu::gemm_nt(rows, keys, dh, q + (size_t)r0 * ldq, ldq, k, ldk, p, keys);
#pragma omp parallel for schedule(static) if (worth_threads(rows, keys))
  for (int t = 0; t < rows; ++t) {
    float* row = p + (size_t)t * keys;
    const int visible = r0 + t + 1;
    for (int j = 0; j < visible; ++j) row[j] *= scale;
    kt.softmax(row, (size_t)visible);
    std::fill(row + visible, row + keys, 0.f);
  }
}

class Backward {
 public:
  Backward(const LlamaModel& model, const int32_t* tokens, int n)
      : c_(model.config()), w_(model.weights()), tokens_(tokens), n_(n), rope_(c_, n) {}

  Result<double> run(KvGradients* grads);

 private:
  void forward_layer(int l, std::vector<float>* x);
  double head_loss(const std::vector<float>& x_final, std::vector<float>* dx);
  void backward_layer(int l, std::vector<float>* dx, KvGradients* grads);

  const ModelConfig& c_;
  const LlamaWeights& w_;
  const int32_t* tokens_;
  const int n_;
  RopeTable rope_;
  std::vector<LayerActivations> acts_;
  // Scratch shared by the layers (sized in run()).
  std::vector<float> xn_;       // [n, d]
  std::vector<float> buf_d_;    // [n, d]
  std::vector<float> att_;      // [n, qw]    attention output, then dLoss/d attention output
  std::vector<float> dq_;       // [n, qw]
  std::vector<float> dk_;       // [n, kvw]
  std::vector<float> dv_;       // [n, kvw]
  std::vector<float> ffn_a_;    // [n, F]     SiLU(gate)·up, then dLoss/d gate
  std::vector<float> ffn_b_;    // [n, F]     dLoss/d up
  std::vector<float> dkt_;      // [kvw, n]   dLoss/dK transposed
  std::vector<float> dvt_;      // [kvw, n]   dLoss/dV transposed
  std::vector<float> p_;        // [chunk, n] one head's probabilities for a chunk of query rows
  std::vector<float> dp_;       // [chunk, n] their dLoss/dP, then dLoss/dScores
  std::vector<float> small_t_;  // [d_h, chunk] a transposed block of dO or Q
};

void Backward::forward_layer(int l, std::vector<float>* xv) {
  const int n = n_, d = c_.hidden_size, F = c_.intermediate_size;
  const int H = c_.num_heads, Hkv = c_.num_kv_heads, dh = c_.head_dim, group = H / Hkv;
  const int qw = c_.q_width(), kvw = c_.kv_width();
  const float scale = 1.0f / std::sqrt((float)dh);
  const cpu::KernelTable& kt = cpu::kernels();
  const LayerWeights& L = w_.layers[l];
  LayerActivations& A = acts_[l];
  float* x = xv->data();
  A.x_in.assign(x, x + (size_t)n * d);

#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int i = 0; i < n; ++i) {
    kt.rms_norm(x + (size_t)i * d, L.attn_norm.data(), c_.rms_norm_eps, xn_.data() + (size_t)i * d,
                d);
  }
  cpu::gemm_nt(n, qw, d, xn_.data(), d, L.wq.data(), d, A.q.data(), qw);
  cpu::gemm_nt(n, kvw, d, xn_.data(), d, L.wk.data(), d, A.k.data(), kvw);
  cpu::gemm_nt(n, kvw, d, xn_.data(), d, L.wv.data(), d, A.v.data(), kvw);
  if (c_.qkv_bias) {
#pragma omp parallel for schedule(static) if (worth_threads(n, qw))
    for (int i = 0; i < n; ++i) {
      kt.add(L.bq.data(), A.q.data() + (size_t)i * qw, qw);
      kt.add(L.bk.data(), A.k.data() + (size_t)i * kvw, kvw);
      kt.add(L.bv.data(), A.v.data() + (size_t)i * kvw, kvw);
    }
  }
  rope_.apply(A.q.data(), n, H, false);
  rope_.apply(A.k.data(), n, Hkv, false);
  for (int h = 0; h < H; ++h) {
    const int kvh = h / group;
    for (int r0 = 0; r0 < n; r0 += kAttnChunk) {
      const int rows = std::min(kAttnChunk, n - r0), keys = r0 + rows;
      attention_probs(r0, rows, dh, A.q.data() + h * dh, qw, A.k.data() + kvh * dh, kvw, scale,
                      p_.data());
      // O_h[rows, d_h] = P · V_h[0..keys)
      cpu::gemm_nn(rows, dh, keys, p_.data(), keys, A.v.data() + kvh * dh, kvw,
                   att_.data() + (size_t)r0 * qw + h * dh, qw);
    }
  }
  // x += att · W_oᵀ
  cpu::gemm_nt(n, d, qw, att_.data(), qw, L.wo.data(), qw, x, d, 1.0f);
  A.x_mid.assign(x, x + (size_t)n * d);

#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int i = 0; i < n; ++i) {
    kt.rms_norm(x + (size_t)i * d, L.ffn_norm.data(), c_.rms_norm_eps, xn_.data() + (size_t)i * d,
                d);
  }
  cpu::gemm_nt(n, F, d, xn_.data(), d, L.w_gate.data(), d, A.gate.data(), F);
  cpu::gemm_nt(n, F, d, xn_.data(), d, L.w_up.data(), d, A.up.data(), F);
#pragma omp parallel for schedule(static) if (worth_threads(n, F))
  for (int i = 0; i < n; ++i) {
    kt.silu_mul(A.gate.data() + (size_t)i * F, A.up.data() + (size_t)i * F,
                ffn_a_.data() + (size_t)i * F, F);
  }
  cpu::gemm_nt(n, d, F, ffn_a_.data(), F, L.w_down.data(), F, x, d, 1.0f);
}

// Final norm, head, loss over rows 0..n−2; writes dLoss/dx of the last residual stream into dx.
double Backward::head_loss(const std::vector<float>& x_final, std::vector<float>* dx) {
  const int rows = n_ - 1, d = c_.hidden_size, V = c_.vocab_size;
  const cpu::KernelTable& kt = cpu::kernels();
#pragma omp parallel for schedule(static) if (worth_threads(rows, d))
  for (int i = 0; i < rows; ++i) {
    kt.rms_norm(x_final.data() + (size_t)i * d, w_.final_norm.data(), c_.rms_norm_eps,
                xn_.data() + (size_t)i * d, d);
  }
  std::vector<float> logits((size_t)rows * V);  // [n−1, V], then dLoss/dlogits
  cpu::gemm_nt(rows, V, d, xn_.data(), d, w_.output_matrix(), d, logits.data(), V);
  double loss = 0.0;
  const double inv_rows = 1.0 / rows;
#pragma omp parallel for schedule(static) reduction(+ : loss) if (worth_threads(rows, V))
  for (int t = 0; t < rows; ++t) {
    float* row = logits.data() + (size_t)t * V;
    const int target = tokens_[t + 1];
    const float logit_target = row[target];
    float mx = row[0];
    for (int j = 1; j < V; ++j) mx = std::max(mx, row[j]);
    double sum = 0.0;
    for (int j = 0; j < V; ++j) sum += (row[j] = std::exp(row[j] - mx));
    loss += mx + std::log(sum) - logit_target;
    // dLoss/dlogit = (softmax − onehot) / (n − 1)
    const float norm = (float)(inv_rows / sum);
    for (int j = 0; j < V; ++j) row[j] *= norm;
    row[target] -= (float)inv_rows;
  }
  // dLoss/d normed x = dlogits · W_out; then through the final RMSNorm. The last row has no
  // target, so its gradient stays zero.
  cpu::gemm_nn(rows, d, V, logits.data(), V, w_.output_matrix(), d, buf_d_.data(), d);
  std::fill(dx->begin(), dx->end(), 0.f);
#pragma omp parallel for schedule(static) if (worth_threads(rows, d))
  for (int i = 0; i < rows; ++i) {
    rms_norm_backward_add(x_final.data() + (size_t)i * d, w_.final_norm.data(), c_.rms_norm_eps,
                          buf_d_.data() + (size_t)i * d, dx->data() + (size_t)i * d, d);
  }
  return loss * inv_rows;
}

// dx enters as dLoss/d(layer output) and leaves as dLoss/d(layer input) (not formed for
// layer 0, which nothing below needs).
void Backward::backward_layer(int l, std::vector<float>* dxv, KvGradients* grads) {
  const int n = n_, d = c_.hidden_size, F = c_.intermediate_size;
  const int H = c_.num_heads, Hkv = c_.num_kv_heads, dh = c_.head_dim, group = H / Hkv;
  const int qw = c_.q_width(), kvw = c_.kv_width();
  const float scale = 1.0f / std::sqrt((float)dh);
  const cpu::KernelTable& kt = cpu::kernels();
  const LayerWeights& L = w_.layers[l];
  const LayerActivations& A = acts_[l];
  float* dx = dxv->data();

  // --- FFN: x_out = x_mid + (SiLU(gate)·up) · W_downᵀ, gate/up = rms(x_mid) · W_{gate,up}ᵀ.
  // dh = dx · W_down  → ffn_a_
  cpu::gemm_nn(n, F, d, dx, d, L.w_down.data(), F, ffn_a_.data(), F);
#pragma omp parallel for schedule(static) if (worth_threads(n, F))
  for (int i = 0; i < n; ++i) {
    const float* g = A.gate.data() + (size_t)i * F;
    const float* u = A.up.data() + (size_t)i * F;
    float* dg = ffn_a_.data() + (size_t)i * F;
    float* du = ffn_b_.data() + (size_t)i * F;
    for (int j = 0; j < F; ++j) {
      const float s = 1.0f / (1.0f + std::exp(-g[j]));
      const float dhj = dg[j];
      du[j] = dhj * g[j] * s;
      dg[j] = dhj * u[j] * s * (1.0f + g[j] * (1.0f - s));  // d SiLU(g)/dg = s·(1 + g·(1 − s))
    }
  }
  cpu::gemm_nn(n, d, F, ffn_a_.data(), F, L.w_gate.data(), d, buf_d_.data(), d);
  cpu::gemm_nn(n, d, F, ffn_b_.data(), F, L.w_up.data(), d, buf_d_.data(), d, 1.0f);
#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int i = 0; i < n; ++i) {
    rms_norm_backward_add(A.x_mid.data() + (size_t)i * d, L.ffn_norm.data(), c_.rms_norm_eps,
                          buf_d_.data() + (size_t)i * d, dx + (size_t)i * d, d);
  }
  // dx is now dLoss/dx_mid.

  // --- Attention: x_mid = x_in + O · W_oᵀ.  dO = dx · W_o → att_.
  cpu::gemm_nn(n, qw, d, dx, d, L.wo.data(), qw, att_.data(), qw);
  // dKᵀ and dVᵀ [kvw, n] accumulate over query chunks and over the query heads of a group as
  // dVᵀ_h += dO_hᵀ · P and dKᵀ_h += Q_hᵀ · dS, which needs only the small [rows, d_h] blocks
  // transposed, never the [rows, keys] ones.
  std::fill(dkt_.begin(), dkt_.end(), 0.f);
  std::fill(dvt_.begin(), dvt_.end(), 0.f);
  for (int h = 0; h < H; ++h) {
    const int kvh = h / group;
    const float* qh = A.q.data() + h * dh;
    const float* kh = A.k.data() + kvh * dh;
    const float* vh = A.v.data() + kvh * dh;
    const float* doh = att_.data() + h * dh;
    float* dkt_h = dkt_.data() + (size_t)kvh * dh * n;
    float* dvt_h = dvt_.data() + (size_t)kvh * dh * n;
    for (int r0 = 0; r0 < n; r0 += kAttnChunk) {
      const int rows = std::min(kAttnChunk, n - r0), keys = r0 + rows;
      attention_probs(r0, rows, dh, qh, qw, kh, kvw, scale, p_.data());
      // dVᵀ_h[:, 0..keys) += dO_hᵀ · P
      transpose(rows, dh, doh + (size_t)r0 * qw, qw, small_t_.data(), rows);
      cpu::gemm_nn(dh, keys, rows, small_t_.data(), rows, p_.data(), keys, dvt_h, n, 1.0f);
      // dP = dO_h · V_hᵀ; dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale (softmax, then the score scale)
      cpu::gemm_nt(rows, keys, dh, doh + (size_t)r0 * qw, qw, vh, kvw, dp_.data(), keys);
#pragma omp parallel for schedule(static) if (worth_threads(rows, keys))
      for (int t = 0; t < rows; ++t) {
        const float* p = p_.data() + (size_t)t * keys;
        float* ds = dp_.data() + (size_t)t * keys;
        const int visible = r0 + t + 1;
        double dot = 0.0;
        for (int j = 0; j < visible; ++j) dot += (double)p[j] * ds[j];
        const float fdot = (float)dot;
        for (int j = 0; j < visible; ++j) ds[j] = p[j] * (ds[j] - fdot) * scale;
        std::fill(ds + visible, ds + keys, 0.f);
      }
      // dQ_h = dS · K_h[0..keys);  dKᵀ_h[:, 0..keys) += Q_hᵀ · dS
      cpu::gemm_nn(rows, dh, keys, dp_.data(), keys, kh, kvw, dq_.data() + (size_t)r0 * qw + h * dh,
                   qw);
      transpose(rows, dh, qh + (size_t)r0 * qw, qw, small_t_.data(), rows);
      cpu::gemm_nn(dh, keys, rows, small_t_.data(), rows, dp_.data(), keys, dkt_h, n, 1.0f);
    }
  }
  transpose(kvw, n, dkt_.data(), n, dk_.data(), kvw);
  transpose(kvw, n, dvt_.data(), n, dv_.data(), kvw);
  // Through RoPE (an orthogonal rotation per position: its backward is the inverse rotation).
  rope_.apply(dq_.data(), n, H, true);
  rope_.apply(dk_.data(), n, Hkv, true);

  // dW_k = dKᵀ · xn, dW_v = dVᵀ · xn with xn = rms(x_in) recomputed. (Biases add constants.)
#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int i = 0; i < n; ++i) {
    kt.rms_norm(A.x_in.data() + (size_t)i * d, L.attn_norm.data(), c_.rms_norm_eps,
                xn_.data() + (size_t)i * d, d);
  }
  transpose(n, kvw, dk_.data(), kvw, dkt_.data(), n);  // RoPE-inverted dK back to [kvw, n]
  cpu::gemm_nn(kvw, d, n, dkt_.data(), n, xn_.data(), d, grads->dwk[l].data(), d);
  cpu::gemm_nn(kvw, d, n, dvt_.data(), n, xn_.data(), d, grads->dwv[l].data(), d);

  if (l == 0) return;
  // dxn = dQ·W_q + dK·W_k + dV·W_v; dx += rms backward.
  cpu::gemm_nn(n, d, qw, dq_.data(), qw, L.wq.data(), d, buf_d_.data(), d);
  cpu::gemm_nn(n, d, kvw, dk_.data(), kvw, L.wk.data(), d, buf_d_.data(), d, 1.0f);
  cpu::gemm_nn(n, d, kvw, dv_.data(), kvw, L.wv.data(), d, buf_d_.data(), d, 1.0f);
#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int i = 0; i < n; ++i) {
    rms_norm_backward_add(A.x_in.data() + (size_t)i * d, L.attn_norm.data(), c_.rms_norm_eps,
                          buf_d_.data() + (size_t)i * d, dx + (size_t)i * d, d);
  }
}

Result<double> Backward::run(KvGradients* grads) {
  const size_t n = (size_t)n_, d = c_.hidden_size, F = c_.intermediate_size;
  const size_t qw = c_.q_width(), kvw = c_.kv_width();
  const int layers = c_.num_layers;
  std::vector<float> x, dx;
  acts_.resize(layers);
  for (LayerActivations& A : acts_) {
    A.x_in.reserve(n * d);
    A.x_mid.reserve(n * d);
    A.q.resize(n * qw);
    A.k.resize(n * kvw);
    A.v.resize(n * kvw);
    A.gate.resize(n * F);
    A.up.resize(n * F);
  }
  x.resize(n * d);
  dx.resize(n * d);
  xn_.resize(n * d);
  buf_d_.resize(n * d);
  att_.resize(n * qw);
  dq_.resize(n * qw);
  dk_.resize(n * kvw);
  dv_.resize(n * kvw);
  ffn_a_.resize(n * F);
  ffn_b_.resize(n * F);
  dkt_.resize(kvw * n);
  dvt_.resize(kvw * n);
  const size_t chunk = std::min<size_t>(kAttnChunk, n);
  p_.resize(chunk * n);
  dp_.resize(chunk * n);
  small_t_.resize((size_t)c_.head_dim * chunk);
  grads->dwk.assign(layers, std::vector<float>(kvw * d));
  grads->dwv.assign(layers, std::vector<float>(kvw * d));
  for (size_t i = 0; i < n; ++i) {
    std::memcpy(x.data() + i * d, w_.embed.data() + (size_t)tokens_[i] * d, d * sizeof(float));
  }
  for (int l = 0; l < layers; ++l) forward_layer(l, &x);
  const double loss = head_loss(x, &dx);
  for (int l = layers - 1; l >= 0; --l) backward_layer(l, &dx, grads);
  return loss;
}

}  // namespace

Result<double> kv_weight_gradients(const LlamaModel& model, const int32_t* tokens, int n,
                                   KvGradients* grads) {
  if (tokens == nullptr || grads == nullptr) {
    return invalid_argument("kv_weight_gradients: tokens and grads must not be null");
  }
  if (n < 2) {
    return invalid_argument(
        "kv_weight_gradients: need at least 2 tokens for a next-token loss, found n = " +
        std::to_string(n));
  }
  const int vocab = model.config().vocab_size;
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return invalid_argument("kv_weight_gradients: token id " + std::to_string(tokens[i]) +
                              " at index " + std::to_string(i) + " is outside the vocabulary [0, " +
                              std::to_string(vocab) + ")");
    }
  }
  // Running out of memory for the activations, scratch or logits is a value, not a throw.
  try {
    Backward b(model, tokens, n);
    return b.run(grads);
  } catch (const std::bad_alloc&) {
    return resource_exhausted("kv_weight_gradients: out of memory for the activations of " +
                              std::to_string(n) +
                              " tokens (see model/llama_backward.h for the formula)");
  }
}

}  // namespace palu::model
