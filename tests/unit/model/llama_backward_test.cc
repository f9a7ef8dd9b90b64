// kv_weight_gradients(): analytic dLoss/dW_k and dLoss/dW_v of tiny random Llamas (GQA and
// MHA, tied and untied head, Qwen2 biases) against central differences of an independent
// float64 forward, the loss against LlamaModel::forward, a sanity run on ref-mha, and invalid
// input refused.
#include "model/llama_backward.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "tests/common/tiny_llama.h"
#include "tests/common/test_paths.h"

namespace palu::model {
namespace {

// An independent float64 forward written from the definitions (plain loops), used for the
// finite differences. RoPE angles are rounded as LlamaModel rounds them so both compute the
// same function.
struct RefLayer {
  std::vector<double> attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down;
};
struct RefModel {
  ModelConfig c;
  std::vector<double> embed, final_norm, out;  // out: [V, d] (the embedding when tied)
  std::vector<RefLayer> layers;
};

std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

RefModel ref_from(const LlamaModel& m) {
  RefModel r;
  r.c = m.config();
  const LlamaWeights& w = m.weights();
  r.embed = to_double(w.embed);
  r.final_norm = to_double(w.final_norm);
  r.out = w.lm_head.empty() ? r.embed : to_double(w.lm_head);
  for (const LayerWeights& L : w.layers) {
    r.layers.push_back({to_double(L.attn_norm), to_double(L.wq), to_double(L.wk), to_double(L.wv),
                        to_double(L.wo), to_double(L.bq), to_double(L.bk), to_double(L.bv),
                        to_double(L.ffn_norm), to_double(L.w_gate), to_double(L.w_up),
                        to_double(L.w_down)});
  }
  return r;
}

// y[rows, out] = x[rows, in] · Wᵀ (+ b)
std::vector<double> linear(const std::vector<double>& x, int rows, int in,
                           const std::vector<double>& w, int out,
                           const std::vector<double>& b = {}) {
  std::vector<double> y((size_t)rows * out);
  for (int i = 0; i < rows; ++i) {
    for (int o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : b[o];
      for (int k = 0; k < in; ++k) s += x[(size_t)i * in + k] * w[(size_t)o * in + k];
      y[(size_t)i * out + o] = s;
    }
  }
  return y;
}

std::vector<double> rms(const std::vector<double>& x, int rows, int d, const std::vector<double>& g,
                        double eps) {
  std::vector<double> y(x.size());
  for (int i = 0; i < rows; ++i) {
    double ss = 0;
    for (int k = 0; k < d; ++k) ss += x[(size_t)i * d + k] * x[(size_t)i * d + k];
    const double r = 1.0 / std::sqrt(ss / d + eps);
    for (int k = 0; k < d; ++k) y[(size_t)i * d + k] = x[(size_t)i * d + k] * r * g[k];
  }
  return y;
}

void rope(std::vector<double>* x, int n, int heads, const ModelConfig& c) {
  const int dh = c.head_dim, half = dh / 2;
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < half; ++i) {
      const float inv =
          1.0f / (float)std::pow((double)(float)c.rope_theta, (double)((float)(2 * i) / (float)dh));
      const double ang = (double)((float)t * inv);
      const double cs = std::cos(ang), sn = std::sin(ang);
      for (int h = 0; h < heads; ++h) {
        double* v = x->data() + (size_t)t * heads * dh + h * dh;
        const double x0 = v[i], x1 = v[i + half];
        v[i] = x0 * cs - x1 * sn;
        v[i + half] = x1 * cs + x0 * sn;
      }
    }
  }
}

double ref_loss(const RefModel& m, const std::vector<int32_t>& tokens) {
  const ModelConfig& c = m.c;
  const int n = (int)tokens.size(), d = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int H = c.num_heads, dh = c.head_dim, group = H / c.num_kv_heads;
  const int qw = c.q_width(), kvw = c.kv_width();
  const double eps = c.rms_norm_eps;
  std::vector<double> x((size_t)n * d);
  for (int i = 0; i < n; ++i) {
    for (int k = 0; k < d; ++k) x[(size_t)i * d + k] = m.embed[(size_t)tokens[i] * d + k];
  }
  for (const RefLayer& L : m.layers) {
    std::vector<double> xn = rms(x, n, d, L.attn_norm, eps);
    std::vector<double> q = linear(xn, n, d, L.wq, qw, L.bq);
    std::vector<double> k = linear(xn, n, d, L.wk, kvw, L.bk);
    std::vector<double> v = linear(xn, n, d, L.wv, kvw, L.bv);
    rope(&q, n, H, c);
    rope(&k, n, c.num_kv_heads, c);
    std::vector<double> att((size_t)n * qw, 0.0);
    const double scale = 1.0 / std::sqrt((double)dh);
    for (int h = 0; h < H; ++h) {
      const int kvh = h / group;
      for (int t = 0; t < n; ++t) {
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (int j = 0; j <= t; ++j) {
          double dot = 0;
          for (int e = 0; e < dh; ++e)
            dot += q[(size_t)t * qw + h * dh + e] * k[(size_t)j * kvw + kvh * dh + e];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (double& sj : s) z += (sj = std::exp(sj - mx));
        for (int j = 0; j <= t; ++j) {
          for (int e = 0; e < dh; ++e)
            att[(size_t)t * qw + h * dh + e] += s[j] / z * v[(size_t)j * kvw + kvh * dh + e];
        }
      }
    }
    std::vector<double> o = linear(att, n, qw, L.wo, d);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    xn = rms(x, n, d, L.ffn_norm, eps);
    std::vector<double> g = linear(xn, n, d, L.w_gate, F), u = linear(xn, n, d, L.w_up, F);
    for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    o = linear(g, n, F, L.w_down, d);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  }
  std::vector<double> xf = rms(x, n, d, m.final_norm, eps);
  std::vector<double> logits = linear(xf, n, d, m.out, V);
  double loss = 0;
  for (int t = 0; t + 1 < n; ++t) {
    const double* row = logits.data() + (size_t)t * V;
    const double mx = *std::max_element(row, row + V);
    double z = 0;
    for (int j = 0; j < V; ++j) z += std::exp(row[j] - mx);
    loss += mx + std::log(z) - row[tokens[t + 1]];
  }
  return loss / (n - 1);
}

// Mean next-token NLL from LlamaModel::forward's logits (float32 model, float64 sum).
double forward_nll(const LlamaModel& m, const std::vector<int32_t>& tokens) {
  const int n = (int)tokens.size(), V = m.config().vocab_size;
  auto cache = m.make_cache(n);
  EXPECT_TRUE(cache.is_ok());
  std::vector<float> logits((size_t)n * V);
  EXPECT_TRUE(m.forward(tokens.data(), n, &cache.value(), LogitsMode::kAll, logits.data()).is_ok());
  double loss = 0;
  for (int t = 0; t + 1 < n; ++t) {
    const float* row = logits.data() + (size_t)t * V;
    const double mx = *std::max_element(row, row + V);
    double z = 0;
    for (int j = 0; j < V; ++j) z += std::exp(row[j] - mx);
    loss += mx + std::log(z) - row[tokens[t + 1]];
  }
  return loss / (n - 1);
}

// Indices to check: `count` random ones plus the `top` largest by |gradient|.
std::vector<size_t> pick_entries(const std::vector<float>& g, int count, int top,
                                 std::mt19937* rng) {
  std::vector<size_t> idx(g.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + top, idx.end(),
                    [&](size_t a, size_t b) { return std::abs(g[a]) > std::abs(g[b]); });
  std::vector<size_t> out(idx.begin(), idx.begin() + top);
  std::uniform_int_distribution<size_t> u(0, g.size() - 1);
  for (int i = 0; i < count; ++i) out.push_back(u(*rng));
  return out;
}

class LlamaBackwardTest : public ::testing::TestWithParam<TinySpec> {};

// Checks kv_weight_gradients on `tokens`: the loss against LlamaModel::forward, `random_entries`
// random and `top_entries` largest entries of every dW_k / dW_v against float64 central
// differences, and (with `float32_check`) the largest entry of each against float32
// differences of rebuilt models.
void expect_matches_finite_differences(TinyLlama& tiny, const std::vector<int32_t>& tokens,
                                       int random_entries, int top_entries, bool float32_check) {
  auto model = tiny.build();
  ASSERT_NE(model, nullptr);
  KvGradients grads;
  auto loss = kv_weight_gradients(*model, tokens.data(), (int)tokens.size(), &grads);
  ASSERT_TRUE(loss.is_ok()) << loss.status().to_string();

  // The loss is the NLL of LlamaModel::forward's logits, and the float64 reference computes
  // the same function (so its finite differences are derivatives of our loss).
  const double fwd = forward_nll(*model, tokens);
  EXPECT_NEAR(loss.value(), fwd, 1e-5 * std::abs(fwd));
  const RefModel base = ref_from(*model);
  EXPECT_NEAR(ref_loss(base, tokens), fwd, 1e-5 * std::abs(fwd));

  const ModelConfig& c = tiny.config();
  ASSERT_EQ(grads.dwk.size(), (size_t)c.num_layers);
  ASSERT_EQ(grads.dwv.size(), (size_t)c.num_layers);
  std::mt19937 rng(11);
  for (int l = 0; l < c.num_layers; ++l) {
    for (int which = 0; which < 2; ++which) {
      SCOPED_TRACE(std::string(which == 0 ? "k_proj" : "v_proj") + " of layer " +
                   std::to_string(l));
      const std::vector<float>& g = which == 0 ? grads.dwk[l] : grads.dwv[l];
      ASSERT_EQ(g.size(), (size_t)c.kv_width() * c.hidden_size);
      double gmax = 0;
      for (float v : g) gmax = std::max(gmax, (double)std::abs(v));
      ASSERT_GT(gmax, 1e-4) << "gradient vanishes; the check would be vacuous";
      for (size_t i : pick_entries(g, random_entries, top_entries, &rng)) {
        RefModel m = base;
        std::vector<double>& w = which == 0 ? m.layers[l].wk : m.layers[l].wv;
        const double h = 1e-5, w0 = w[i];
        w[i] = w0 + h;
        const double up = ref_loss(m, tokens);
        w[i] = w0 - h;
        const double down = ref_loss(m, tokens);
        const double fd = (up - down) / (2 * h);
        EXPECT_NEAR(g[i], fd, 2e-4 * std::abs(fd) + 2e-5 * gmax)
            << "entry " << i << " (row " << i / c.hidden_size << ", col " << i % c.hidden_size
            << ")";
      }
    }
  }

  if (!float32_check) return;
  // The same through the real float32 model: perturb the largest entry of each weight in a
  // rebuilt copy and difference LlamaModel::forward's NLL.
  for (int l = 0; l < c.num_layers; ++l) {
    for (const char* which : {"k_proj", "v_proj"}) {
      SCOPED_TRACE(std::string(which) + " of layer " + std::to_string(l) + " through LlamaModel");
      const std::vector<float>& g = which[0] == 'k' ? grads.dwk[l] : grads.dwv[l];
      const size_t i = pick_entries(g, 0, 1, &rng)[0];
      std::vector<float>& w =
          tiny.tensor("model.layers." + std::to_string(l) + ".self_attn." + which + ".weight");
      const float w0 = w[i], h = 1e-2f;
      w[i] = w0 + h;
      const double up = forward_nll(*tiny.build(), tokens);
      w[i] = w0 - h;
      const double down = forward_nll(*tiny.build(), tokens);
      w[i] = w0;
      const double fd = (up - down) / (2.0 * h);
      EXPECT_NEAR(g[i], fd, 2e-2 * std::abs(fd) + 1e-3);
    }
  }
}

TEST_P(LlamaBackwardTest, MatchesFiniteDifferencesAndForwardLoss) {
  TinyLlama tiny(GetParam());
  expect_matches_finite_differences(tiny, {3, 17, 42, 8, 17, 29, 0}, 50, 5, true);
}

// 300 tokens span three attention chunks of query rows (128, 128, 44), whose key ranges differ.
TEST_P(LlamaBackwardTest, MatchesFiniteDifferencesAcrossAttentionChunks) {
  TinyLlama tiny(GetParam());
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> id(0, tiny.config().vocab_size - 1);
  std::vector<int32_t> tokens(300);
  for (int32_t& t : tokens) t = id(rng);
  expect_matches_finite_differences(tiny, tokens, 6, 3, false);
}

TEST_P(LlamaBackwardTest, OverwritesGradientsOfAPreviousCall) {
  TinyLlama tiny(GetParam());
  auto model = tiny.build();
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8, 9}, b = {49, 0, 12, 12, 30};
  KvGradients reused, fresh;
  ASSERT_TRUE(kv_weight_gradients(*model, a.data(), (int)a.size(), &reused).is_ok());
  auto lb = kv_weight_gradients(*model, b.data(), (int)b.size(), &reused);
  auto lf = kv_weight_gradients(*model, b.data(), (int)b.size(), &fresh);
  ASSERT_TRUE(lb.is_ok() && lf.is_ok());
  EXPECT_EQ(lb.value(), lf.value());
  EXPECT_EQ(reused.dwk, fresh.dwk);
  EXPECT_EQ(reused.dwv, fresh.dwv);
}

INSTANTIATE_TEST_SUITE_P(LlamaBackward, LlamaBackwardTest,
                         ::testing::Values(TinySpec{"GqaTied", 4, 2, true, false},
                                           TinySpec{"GqaUntied", 4, 2, false, false},
                                           TinySpec{"MhaTied", 4, 4, true, false},
                                           TinySpec{"MhaUntied", 4, 4, false, false},
                                           TinySpec{"MqaQwen2Bias", 4, 1, false, true}),
                         [](const ::testing::TestParamInfo<TinySpec>& info) {
                           return info.param.name;
                         });

TEST(LlamaBackwardInputTest, InvalidInputIsRefused) {
  TinyLlama tiny({"GqaTied", 4, 2, true, false});
  auto model = tiny.build();
  ASSERT_NE(model, nullptr);
  KvGradients grads;
  const std::vector<int32_t> ok = {1, 2, 3};
  struct Case {
    const char* name;
    std::vector<int32_t> tokens;
    int n;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"no tokens", {}, 0, "at least 2 tokens"},
      {"one token", {5}, 1, "found n = 1"},
      {"negative n", {5}, -3, "found n = -3"},
      {"negative id", {1, -1, 2}, 3, "token id -1 at index 1"},
      {"id = vocab", {1, 2, 50}, 3, "token id 50 at index 2 is outside the vocabulary [0, 50)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const int32_t dummy = 0;
    auto r = kv_weight_gradients(*model, c.tokens.empty() ? &dummy : c.tokens.data(), c.n, &grads);
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << r.status().message();
  }
  EXPECT_EQ(kv_weight_gradients(*model, ok.data(), 3, nullptr).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(kv_weight_gradients(*model, nullptr, 3, &grads).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(LlamaBackwardRealModelTest, RefMhaGradientsAreFiniteAndNonZeroInEveryLayer) {
  auto loaded = load_model(palu::testing::shared_file("models/ref-mha"));
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  const LlamaModel& model = *loaded.value().model;
  auto ids = loaded.value().tokenizer->encode(
      "The quick brown fox jumps over the lazy dog. In 1905 Einstein published four papers that "
      "changed physics: "
      "on the photoelectric effect, Brownian motion, special relativity and the equivalence of "
      "mass and energy. The river flows north through the valley, past the old mill and the "
      "village church, before it reaches the sea near a small harbour where fishing boats have "
      "landed their catch for three hundred years.",
      true);
  ASSERT_TRUE(ids.is_ok());
  std::vector<int32_t> tokens = ids.value();
  ASSERT_GE(tokens.size(), 64u);
  tokens.resize(64);
  KvGradients grads;
  auto loss = kv_weight_gradients(model, tokens.data(), 64, &grads);
  ASSERT_TRUE(loss.is_ok()) << loss.status().to_string();
  EXPECT_NEAR(loss.value(), forward_nll(model, tokens), 1e-4 * loss.value());
  EXPECT_LT(loss.value(), std::log((double)model.config().vocab_size))
      << "a trained model beats uniform";
  ASSERT_EQ(grads.dwk.size(), (size_t)model.config().num_layers);
  for (int l = 0; l < model.config().num_layers; ++l) {
    for (const auto* g : {&grads.dwk[l], &grads.dwv[l]}) {
      SCOPED_TRACE((g == &grads.dwk[l] ? "k_proj of layer " : "v_proj of layer ") +
                   std::to_string(l));
      ASSERT_EQ(g->size(), (size_t)model.config().kv_width() * model.config().hidden_size);
      double sumsq = 0;
      bool finite = true;
      for (float v : *g) {
        finite = finite && std::isfinite(v);
        sumsq += (double)v * v;
      }
      EXPECT_TRUE(finite);
      EXPECT_GT(sumsq, 0.0);
    }
  }
}

}  // namespace
}  // namespace palu::model
