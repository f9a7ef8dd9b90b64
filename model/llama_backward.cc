#include "model/llama_backward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <string>

#include "backends/cpu/gemm.h"
#include "backends/base/host_alloc.h"
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

}  // namespace

struct LayerPass::State {
  State(const ModelConfig& c, int n) : c(c), n(n), rope(c, n) {}
  const ModelConfig c;
  const int n;
  RopeTable rope;
  LayerActivations acts;  // of the layer forward() ran last
  // Scratch shared by forward and backward.
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

LayerPass::LayerPass(std::unique_ptr<State> s) : s_(std::move(s)) {}
LayerPass::~LayerPass() = default;
int LayerPass::tokens() const { return s_->n; }

Result<std::unique_ptr<LayerPass>> LayerPass::create(const ModelConfig& c, int n) {
  if (n < 1) return invalid_argument("LayerPass: need at least 1 token, found n = " + std::to_string(n));
  try {
    if (host_alloc_should_fail()) throw std::bad_alloc();
    auto s = std::make_unique<State>(c, n);
    const size_t N = (size_t)n, d = c.hidden_size, F = c.intermediate_size;
    const size_t qw = c.q_width(), kvw = c.kv_width();
    LayerActivations& A = s->acts;
    A.x_in.resize(N * d);
    A.x_mid.resize(N * d);
    A.q.resize(N * qw);
    A.k.resize(N * kvw);
    A.v.resize(N * kvw);
    A.gate.resize(N * F);
    A.up.resize(N * F);
    s->xn_.resize(N * d);
    s->buf_d_.resize(N * d);
    s->att_.resize(N * qw);
    s->dq_.resize(N * qw);
    s->dk_.resize(N * kvw);
    s->dv_.resize(N * kvw);
    s->ffn_a_.resize(N * F);
    s->ffn_b_.resize(N * F);
    s->dkt_.resize(kvw * N);
    s->dvt_.resize(kvw * N);
    const size_t chunk = std::min<size_t>(kAttnChunk, N);
    s->p_.resize(chunk * N);
    s->dp_.resize(chunk * N);
    s->small_t_.resize((size_t)c.head_dim * chunk);
    return std::unique_ptr<LayerPass>(new LayerPass(std::move(s)));
  } catch (const std::bad_alloc&) {
    return resource_exhausted("LayerPass: out of memory for one layer's activations of " + std::to_string(n) +
                              " tokens (see model/llama_backward.h for the formula)");
  }
}

void LayerPass::forward(const LayerWeights& L, float* x, float* attention_input) {
  State& S = *s_;
  const ModelConfig& c = S.c;
  const int n = S.n, d = c.hidden_size, F = c.intermediate_size;
  const int H = c.num_heads, Hkv = c.num_kv_heads, dh = c.head_dim, group = H / Hkv;
  const int qw = c.q_width(), kvw = c.kv_width();
  const float scale = 1.0f / std::sqrt((float)dh);
  const cpu::KernelTable& kt = cpu::kernels();
  LayerActivations& A = S.acts;
  std::memcpy(A.x_in.data(), x, (size_t)n * d * sizeof(float));

#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int i = 0; i < n; ++i) {
    kt.rms_norm(x + (size_t)i * d, L.attn_norm.data(), c.rms_norm_eps, S.xn_.data() + (size_t)i * d,
                d);
  }
  if (attention_input != nullptr) std::memcpy(attention_input, S.xn_.data(), (size_t)n * d * sizeof(float));
  cpu::gemm_nt(n, qw, d, S.xn_.data(), d, L.wq.data(), d, A.q.data(), qw);
  cpu::gemm_nt(n, kvw, d, S.xn_.data(), d, L.wk.data(), d, A.k.data(), kvw);
  cpu::gemm_nt(n, kvw, d, S.xn_.data(), d, L.wv.data(), d, A.v.data(), kvw);
  if (c.qkv_bias) {
#pragma omp parallel for schedule(static) if (worth_threads(n, qw))
    for (int i = 0; i < n; ++i) {
      kt.add(L.bq.data(), A.q.data() + (size_t)i * qw, qw);
      kt.add(L.bk.data(), A.k.data() + (size_t)i * kvw, kvw);
      kt.add(L.bv.data(), A.v.data() + (size_t)i * kvw, kvw);
    }
  }
  S.rope.apply(A.q.data(), n, H, false);
  S.rope.apply(A.k.data(), n, Hkv, false);
  for (int h = 0; h < H; ++h) {
    const int kvh = h / group;
    for (int r0 = 0; r0 < n; r0 += kAttnChunk) {
      const int rows = std::min(kAttnChunk, n - r0), keys = r0 + rows;
      attention_probs(r0, rows, dh, A.q.data() + h * dh, qw, A.k.data() + kvh * dh, kvw, scale,
                      S.p_.data());
      // O_h[rows, d_h] = P · V_h[0..keys)
      cpu::gemm_nn(rows, dh, keys, S.p_.data(), keys, A.v.data() + kvh * dh, kvw,
                   S.att_.data() + (size_t)r0 * qw + h * dh, qw);
    }
  }
  // x += att · W_oᵀ
  cpu::gemm_nt(n, d, qw, S.att_.data(), qw, L.wo.data(), qw, x, d, 1.0f);
  std::memcpy(A.x_mid.data(), x, (size_t)n * d * sizeof(float));

#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int i = 0; i < n; ++i) {
    kt.rms_norm(x + (size_t)i * d, L.ffn_norm.data(), c.rms_norm_eps, S.xn_.data() + (size_t)i * d,
                d);
  }
  cpu::gemm_nt(n, F, d, S.xn_.data(), d, L.w_gate.data(), d, A.gate.data(), F);
  cpu::gemm_nt(n, F, d, S.xn_.data(), d, L.w_up.data(), d, A.up.data(), F);
#pragma omp parallel for schedule(static) if (worth_threads(n, F))
  for (int i = 0; i < n; ++i) {
    kt.silu_mul(A.gate.data() + (size_t)i * F, A.up.data() + (size_t)i * F,
                S.ffn_a_.data() + (size_t)i * F, F);
  }
  cpu::gemm_nt(n, d, F, S.ffn_a_.data(), F, L.w_down.data(), F, x, d, 1.0f);
}

// Final norm, head, loss over rows 0..n−2; writes dLoss/dx of the last residual stream into dx.
Result<double> LayerPass::head_loss(const float* final_norm, const float* output_matrix, const int32_t* tokens,
                                    const float* x_final, float* dx) {
  State& S = *s_;
  const ModelConfig& c = S.c;
  const int rows = S.n - 1, d = c.hidden_size, V = c.vocab_size;
  if (rows < 1) return invalid_argument("head_loss: need at least 2 tokens for a next-token loss, found n = " + std::to_string(S.n));
  for (int i = 0; i < S.n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= V) {
      return invalid_argument("head_loss: token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                              " is outside the vocabulary [0, " + std::to_string(V) + ")");
    }
  }
  const cpu::KernelTable& kt = cpu::kernels();
#pragma omp parallel for schedule(static) if (worth_threads(rows, d))
  for (int i = 0; i < rows; ++i) {
    kt.rms_norm(x_final + (size_t)i * d, final_norm, c.rms_norm_eps,
                S.xn_.data() + (size_t)i * d, d);
  }
  std::vector<float> logits;  // [n−1, V], then dLoss/dlogits
  try {
    if (host_alloc_should_fail()) throw std::bad_alloc();
    logits.resize((size_t)rows * V);
  } catch (const std::bad_alloc&) {
    return resource_exhausted("head_loss: out of memory for " + std::to_string(rows) + " × " + std::to_string(V) +
                              " logits");
  }
  cpu::gemm_nt(rows, V, d, S.xn_.data(), d, output_matrix, d, logits.data(), V);
  double loss = 0.0;
  const double inv_rows = 1.0 / rows;
#pragma omp parallel for schedule(static) reduction(+ : loss) if (worth_threads(rows, V))
  for (int t = 0; t < rows; ++t) {
    float* row = logits.data() + (size_t)t * V;
    const int target = tokens[t + 1];
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
  cpu::gemm_nn(rows, d, V, logits.data(), V, output_matrix, d, S.buf_d_.data(), d);
  std::fill(dx, dx + (size_t)S.n * d, 0.f);
#pragma omp parallel for schedule(static) if (worth_threads(rows, d))
  for (int i = 0; i < rows; ++i) {
    rms_norm_backward_add(x_final + (size_t)i * d, final_norm, c.rms_norm_eps,
                          S.buf_d_.data() + (size_t)i * d, dx + (size_t)i * d, d);
  }
  return loss * inv_rows;
}

// dx enters as dLoss/d(layer output) and leaves as dLoss/d(layer input) (not formed for
// layer 0, which nothing below needs).
void LayerPass::backward(const LayerWeights& L, float* dx, float* dwk, float* dwv, bool need_dx) {
  State& S = *s_;
  const ModelConfig& c = S.c;
  const int n = S.n, d = c.hidden_size, F = c.intermediate_size;
  const int H = c.num_heads, Hkv = c.num_kv_heads, dh = c.head_dim, group = H / Hkv;
  const int qw = c.q_width(), kvw = c.kv_width();
  const float scale = 1.0f / std::sqrt((float)dh);
  const cpu::KernelTable& kt = cpu::kernels();
  const LayerActivations& A = S.acts;

  // --- FFN: x_out = x_mid + (SiLU(gate)·up) · W_downᵀ, gate/up = rms(x_mid) · W_{gate,up}ᵀ.
  // dh = dx · W_down  → S.ffn_a_
  cpu::gemm_nn(n, F, d, dx, d, L.w_down.data(), F, S.ffn_a_.data(), F);
#pragma omp parallel for schedule(static) if (worth_threads(n, F))
  for (int i = 0; i < n; ++i) {
    const float* g = A.gate.data() + (size_t)i * F;
    const float* u = A.up.data() + (size_t)i * F;
    float* dg = S.ffn_a_.data() + (size_t)i * F;
    float* du = S.ffn_b_.data() + (size_t)i * F;
    for (int j = 0; j < F; ++j) {
      const float s = 1.0f / (1.0f + std::exp(-g[j]));
      const float dhj = dg[j];
      du[j] = dhj * g[j] * s;
      dg[j] = dhj * u[j] * s * (1.0f + g[j] * (1.0f - s));  // d SiLU(g)/dg = s·(1 + g·(1 − s))
    }
  }
  cpu::gemm_nn(n, d, F, S.ffn_a_.data(), F, L.w_gate.data(), d, S.buf_d_.data(), d);
  cpu::gemm_nn(n, d, F, S.ffn_b_.data(), F, L.w_up.data(), d, S.buf_d_.data(), d, 1.0f);
#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int i = 0; i < n; ++i) {
    rms_norm_backward_add(A.x_mid.data() + (size_t)i * d, L.ffn_norm.data(), c.rms_norm_eps,
                          S.buf_d_.data() + (size_t)i * d, dx + (size_t)i * d, d);
  }
  // dx is now dLoss/dx_mid.

  // --- Attention: x_mid = x_in + O · W_oᵀ.  dO = dx · W_o → S.att_.
  cpu::gemm_nn(n, qw, d, dx, d, L.wo.data(), qw, S.att_.data(), qw);
  // dKᵀ and dVᵀ [kvw, n] accumulate over query chunks and over the query heads of a group as
  // dVᵀ_h += dO_hᵀ · P and dKᵀ_h += Q_hᵀ · dS, which needs only the small [rows, d_h] blocks
  // transposed, never the [rows, keys] ones.
  std::fill(S.dkt_.begin(), S.dkt_.end(), 0.f);
  std::fill(S.dvt_.begin(), S.dvt_.end(), 0.f);
  for (int h = 0; h < H; ++h) {
    const int kvh = h / group;
    const float* qh = A.q.data() + h * dh;
    const float* kh = A.k.data() + kvh * dh;
    const float* vh = A.v.data() + kvh * dh;
    const float* doh = S.att_.data() + h * dh;
    float* dkt_h = S.dkt_.data() + (size_t)kvh * dh * n;
    float* dvt_h = S.dvt_.data() + (size_t)kvh * dh * n;
    for (int r0 = 0; r0 < n; r0 += kAttnChunk) {
      const int rows = std::min(kAttnChunk, n - r0), keys = r0 + rows;
      attention_probs(r0, rows, dh, qh, qw, kh, kvw, scale, S.p_.data());
      // dVᵀ_h[:, 0..keys) += dO_hᵀ · P
      transpose(rows, dh, doh + (size_t)r0 * qw, qw, S.small_t_.data(), rows);
      cpu::gemm_nn(dh, keys, rows, S.small_t_.data(), rows, S.p_.data(), keys, dvt_h, n, 1.0f);
      // dP = dO_h · V_hᵀ; dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale (softmax, then the score scale)
      cpu::gemm_nt(rows, keys, dh, doh + (size_t)r0 * qw, qw, vh, kvw, S.dp_.data(), keys);
#pragma omp parallel for schedule(static) if (worth_threads(rows, keys))
      for (int t = 0; t < rows; ++t) {
        const float* p = S.p_.data() + (size_t)t * keys;
        float* ds = S.dp_.data() + (size_t)t * keys;
        const int visible = r0 + t + 1;
        double dot = 0.0;
        for (int j = 0; j < visible; ++j) dot += (double)p[j] * ds[j];
        const float fdot = (float)dot;
        for (int j = 0; j < visible; ++j) ds[j] = p[j] * (ds[j] - fdot) * scale;
        std::fill(ds + visible, ds + keys, 0.f);
      }
      // dQ_h = dS · K_h[0..keys);  dKᵀ_h[:, 0..keys) += Q_hᵀ · dS
      cpu::gemm_nn(rows, dh, keys, S.dp_.data(), keys, kh, kvw, S.dq_.data() + (size_t)r0 * qw + h * dh,
                   qw);
      transpose(rows, dh, qh + (size_t)r0 * qw, qw, S.small_t_.data(), rows);
      cpu::gemm_nn(dh, keys, rows, S.small_t_.data(), rows, S.dp_.data(), keys, dkt_h, n, 1.0f);
    }
  }
  transpose(kvw, n, S.dkt_.data(), n, S.dk_.data(), kvw);
  transpose(kvw, n, S.dvt_.data(), n, S.dv_.data(), kvw);
  // Through RoPE (an orthogonal rotation per position: its backward is the inverse rotation).
  S.rope.apply(S.dq_.data(), n, H, true);
  S.rope.apply(S.dk_.data(), n, Hkv, true);

  // dW_k = dKᵀ · xn, dW_v = dVᵀ · xn with xn = rms(x_in) recomputed. (Biases add constants.)
#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int i = 0; i < n; ++i) {
    kt.rms_norm(A.x_in.data() + (size_t)i * d, L.attn_norm.data(), c.rms_norm_eps,
                S.xn_.data() + (size_t)i * d, d);
  }
  transpose(n, kvw, S.dk_.data(), kvw, S.dkt_.data(), n);  // RoPE-inverted dK back to [kvw, n]
  cpu::gemm_nn(kvw, d, n, S.dkt_.data(), n, S.xn_.data(), d, dwk, d);
  cpu::gemm_nn(kvw, d, n, S.dvt_.data(), n, S.xn_.data(), d, dwv, d);

  if (!need_dx) return;
  // dxn = dQ·W_q + dK·W_k + dV·W_v; dx += rms backward.
  cpu::gemm_nn(n, d, qw, S.dq_.data(), qw, L.wq.data(), d, S.buf_d_.data(), d);
  cpu::gemm_nn(n, d, kvw, S.dk_.data(), kvw, L.wk.data(), d, S.buf_d_.data(), d, 1.0f);
  cpu::gemm_nn(n, d, kvw, S.dv_.data(), kvw, L.wv.data(), d, S.buf_d_.data(), d, 1.0f);
#pragma omp parallel for schedule(static) if (worth_threads(n, d))
  for (int i = 0; i < n; ++i) {
    rms_norm_backward_add(A.x_in.data() + (size_t)i * d, L.attn_norm.data(), c.rms_norm_eps,
                          S.buf_d_.data() + (size_t)i * d, dx + (size_t)i * d, d);
  }
}

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
  // Forward keeping each layer's input; the backward reruns a layer's forward from its input
  // before going through it (one layer's activations live at a time).
  const ModelConfig& c = model.config();
  const LlamaWeights& w = model.weights();
  const size_t d = c.hidden_size, kvw = c.kv_width(), N = (size_t)n;
  PALU_ASSIGN_OR_RETURN(std::unique_ptr<LayerPass> pass, LayerPass::create(c, n));
  std::vector<std::vector<float>> inputs;
  std::vector<float> x, dx;
  try {
    if (host_alloc_should_fail()) throw std::bad_alloc();
    inputs.assign(c.num_layers, std::vector<float>(N * d));
    x.resize(N * d);
    dx.resize(N * d);
    grads->dwk.assign(c.num_layers, std::vector<float>(kvw * d));
    grads->dwv.assign(c.num_layers, std::vector<float>(kvw * d));
  } catch (const std::bad_alloc&) {
    return resource_exhausted("kv_weight_gradients: out of memory for the layer inputs of " + std::to_string(n) +
                              " tokens (see model/llama_backward.h for the formula)");
  }
  for (size_t i = 0; i < N; ++i) std::memcpy(x.data() + i * d, w.embed.data() + (size_t)tokens[i] * d, d * sizeof(float));
  for (int l = 0; l < c.num_layers; ++l) {
    std::memcpy(inputs[l].data(), x.data(), N * d * sizeof(float));
    pass->forward(w.layers[l], x.data());
  }
  PALU_ASSIGN_OR_RETURN(double loss, pass->head_loss(w.final_norm.data(), w.output_matrix(), tokens, x.data(), dx.data()));
  for (int l = c.num_layers - 1; l >= 0; --l) {
    pass->forward(w.layers[l], inputs[l].data());  // inputs[l] is not needed after this
    pass->backward(w.layers[l], dx.data(), grads->dwk[l].data(), grads->dwv[l].data(), l > 0);
  }
  return loss;
}

}  // namespace palu::model
