// palu-cuda-model-bench: end-to-end decode tokens/s of the whole model on a CUDA GPU at a long
// context (issue 5, must-show 3): full f16 cache vs latent f16 vs latent 4-bit, and the GPU
// memory each uses.
//
//   palu-cuda-model-bench [--ref-mha DIR] [--ctx 32768] [--tokens 32] [--models ref-mha,llama7b]
//
// Models: ref-mha (the reference model's weights, context raised to ctx + tokens; latents with
// random Palu factors of the shape palu-compress --ratio 0.5 --group-size 4 gives it: rank 128
// per group of 4 heads) and llama7b (Llama-2-7B shape — d 4096, 32 layers, 32 heads × 128, FFN
// 11008, vocab 32000 — random weights; random Palu factors of rank 256 per group of 4 heads).
// Factor values do not change the work, only the numbers computed. Per configuration: fill the
// context with one prefill in chunks of 2048 tokens (timed), then decode `tokens` tokens one at a
// time with logits copied to the host (timed: wall clock of forward(), which ends with a stream
// synchronize). Prints CSV: model,cache,decode,ctx,tokens_per_s,ms_per_token,prefill_s,
// weights_MiB,cache_MiB,peak_alloc_MiB,gpu_used_MiB.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "backends/cuda/cuda_device.h"
#include "backends/cuda/cuda_model.h"
#include "model/llama_model.h"
#include "tools/palu_cuda_random_model.h"

namespace {

using namespace palu;
using backends::RowStorage;
using model::LlamaModel;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The loaded model with its context raised (from_tensors over views of its f32 weights).
Result<std::unique_ptr<LlamaModel>> with_context(const LlamaModel& m, int ctx) {
  model::ModelConfig c = m.config();
  c.max_position_embeddings = ctx;
  const model::LlamaWeights& w = m.weights();
  model::TensorMap map;
  std::vector<std::string> errs;
  auto add = [&](const std::string& name, const std::vector<float>& v,
                 std::vector<int64_t> shape) -> Status {
    model::TensorView view;
    view.dtype = DType::kF32;
    view.shape = std::move(shape);
    view.data = reinterpret_cast<const uint8_t*>(v.data());
    view.nbytes = v.size() * 4;
    view.file = "memory";
    return map.add(name, view);
  };
  const int64_t d = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, qw = c.q_width(),
                kvw = c.kv_width();
  PALU_RETURN_IF_ERROR(add("model.embed_tokens.weight", w.embed, {V, d}));
  PALU_RETURN_IF_ERROR(add("model.norm.weight", w.final_norm, {d}));
  if (!w.lm_head.empty()) PALU_RETURN_IF_ERROR(add("lm_head.weight", w.lm_head, {V, d}));
  for (int l = 0; l < c.num_layers; ++l) {
    const model::LayerWeights& L = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    PALU_RETURN_IF_ERROR(add(p + "input_layernorm.weight", L.attn_norm, {d}));
    PALU_RETURN_IF_ERROR(add(p + "post_attention_layernorm.weight", L.ffn_norm, {d}));
    PALU_RETURN_IF_ERROR(add(p + "self_attn.q_proj.weight", L.wq, {qw, d}));
    PALU_RETURN_IF_ERROR(add(p + "self_attn.k_proj.weight", L.wk, {kvw, d}));
    PALU_RETURN_IF_ERROR(add(p + "self_attn.v_proj.weight", L.wv, {kvw, d}));
    PALU_RETURN_IF_ERROR(add(p + "self_attn.o_proj.weight", L.wo, {d, qw}));
    PALU_RETURN_IF_ERROR(add(p + "mlp.gate_proj.weight", L.w_gate, {F, d}));
    PALU_RETURN_IF_ERROR(add(p + "mlp.up_proj.weight", L.w_up, {F, d}));
    PALU_RETURN_IF_ERROR(add(p + "mlp.down_proj.weight", L.w_down, {d, F}));
    if (c.qkv_bias) {
      PALU_RETURN_IF_ERROR(add(p + "self_attn.q_proj.bias", L.bq, {qw}));
      PALU_RETURN_IF_ERROR(add(p + "self_attn.k_proj.bias", L.bk, {kvw}));
      PALU_RETURN_IF_ERROR(add(p + "self_attn.v_proj.bias", L.bv, {kvw}));
    }
  }
  return LlamaModel::from_tensors(c, map, "ref-mha (context " + std::to_string(ctx) + ")");
}

Status bench_one(const std::string& name, const LlamaModel& m, RowStorage st, int ctx, int tokens) {
  model::DeviceModelOptions o;
  o.cache.storage = st;
  PALU_ASSIGN_OR_RETURN(auto dm, backends::cuda::make_cuda_model(m, o));
  PALU_ASSIGN_OR_RETURN(auto seq, dm->new_sequence(ctx + tokens + 2));
  const int V = m.config().vocab_size;
  std::vector<int32_t> ids(ctx + tokens + 2);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = (int32_t)((i * 7919 + 17) % (size_t)V);
  const double t0 = now_s();
  for (int p = 0; p < ctx; p += 2048) {
    const int n = std::min(2048, ctx - p);
    PALU_RETURN_IF_ERROR(seq->forward(ids.data() + p, n, model::LogitsMode::kNone, nullptr));
  }
  const double prefill_s = now_s() - t0;
  std::vector<float> logits(V);
  // Two warm-up steps (first-use cuBLAS heuristics, allocator growth), then the timed ones.
  for (int i = 0; i < 2; ++i)
    PALU_RETURN_IF_ERROR(seq->forward(&ids[ctx + i], 1, model::LogitsMode::kLast, logits.data()));
  const double t1 = now_s();
  for (int i = 0; i < tokens; ++i)
    PALU_RETURN_IF_ERROR(
        seq->forward(&ids[ctx + 2 + i], 1, model::LogitsMode::kLast, logits.data()));
  const double dt = now_s() - t1;
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  PALU_ASSIGN_OR_RETURN(auto stats, backends::cuda::cuda_model_allocator_stats(*dm));
  const std::string desc = dm->describe();
  const std::string decode =
      desc.find("fused") != std::string::npos ? "fused kernel" : "generic (cuBLAS)";
  const char* cache =
      m.is_compressed() ? (st == RowStorage::kF16 ? "latent f16" : "latent q4") : "full f16";
  std::printf("%s,%s,%s,%d,%.2f,%.3f,%.1f,%.0f,%.0f,%.0f,%.0f\n", name.c_str(), cache,
              decode.c_str(), ctx, tokens / dt, 1e3 * dt / tokens, prefill_s,
              dm->weight_bytes() / 1048576.0, seq->cache_bytes() / 1048576.0,
              stats.peak_in_use_bytes / 1048576.0, (total_b - free_b) / 1048576.0);
  std::fflush(stdout);
  std::fprintf(stderr, "# %s: %s\n", name.c_str(), desc.c_str());
  return Status::ok();
}

Status run_model(const std::string& name, std::unique_ptr<LlamaModel> m, int rank, int ctx,
                 int tokens) {
  PALU_RETURN_IF_ERROR(bench_one(name, *m, RowStorage::kF16, ctx, tokens));
  const double t = now_s();
  PALU_RETURN_IF_ERROR(tools::attach_random_palu(m.get(), 4, rank, rank, 21));
  std::fprintf(stderr,
               "# %s: random Palu factors (rank %d per group of 4 heads) attached in %.1f s\n",
               name.c_str(), rank, now_s() - t);
  PALU_RETURN_IF_ERROR(bench_one(name, *m, RowStorage::kF16, ctx, tokens));
  PALU_RETURN_IF_ERROR(bench_one(name, *m, RowStorage::kQ4, ctx, tokens));
  return Status::ok();
}

}  // namespace

int main(int argc, char** argv) {
  std::string ref_mha = "../shared/models/ref-mha", models = "ref-mha,llama7b";
  int ctx = 32768, tokens = 32;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : std::string(); };
    if (a == "--ref-mha")
      ref_mha = next();
    else if (a == "--ctx")
      ctx = std::atoi(next().c_str());
    else if (a == "--tokens")
      tokens = std::atoi(next().c_str());
    else if (a == "--models")
      models = next();
    else {
      std::fprintf(
          stderr,
          "usage: palu-cuda-model-bench [--ref-mha DIR] [--ctx N] [--tokens N] [--models LIST]\n");
      return 2;
    }
  }
  if (ctx <= 0 || tokens <= 0) {
    std::fprintf(stderr, "palu-cuda-model-bench: --ctx and --tokens must be > 0\n");
    return 2;
  }
  if (backends::cuda::cuda_device_count() == 0) {
    std::fprintf(stderr, "palu-cuda-model-bench: no CUDA device (no GPU or no driver visible)\n");
    return 1;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("# gpu: %s, %.1f GiB\n", prop.name, prop.totalGlobalMem / 1073741824.0);
  std::printf(
      "model,cache,decode,ctx,tokens_per_s,ms_per_token,prefill_s,weights_MiB,cache_MiB,peak_alloc_"
      "MiB,"
      "gpu_used_MiB\n");
  std::stringstream ss(models);
  std::string name;
  while (std::getline(ss, name, ',')) {
    Status st;
    if (name == "ref-mha") {
      auto loaded = model::load_model(ref_mha);
      if (!loaded.is_ok()) {
        std::fprintf(stderr, "palu-cuda-model-bench: %s\n", loaded.status().to_string().c_str());
        return 1;
      }
      auto m = with_context(*loaded.value().model, ctx + tokens + 8);
      st = m.is_ok() ? run_model(name, std::move(m).value(), 128, ctx, tokens) : m.status();
    } else if (name == "llama7b") {
      model::ModelConfig c;
      c.architecture = "llama";
      c.hidden_size = 4096;
      c.intermediate_size = 11008;
      c.num_layers = 32;
      c.num_heads = 32;
      c.num_kv_heads = 32;
      c.head_dim = 128;
      c.rms_norm_eps = 1e-5f;
      c.vocab_size = 32000;
      c.max_position_embeddings = ctx + tokens + 8;
      c.rope_theta = 10000.0;
      const double t = now_s();
      auto m = tools::random_llama(c, 1234, /*share_layers=*/true);
      std::fprintf(stderr, "# llama7b: random weights built in %.1f s\n", now_s() - t);
      st = m.is_ok() ? run_model(name, std::move(m).value(), 256, ctx, tokens) : m.status();
    } else {
      st = invalid_argument("unknown model '" + name + "' (ref-mha or llama7b)");
    }
    if (!st.is_ok()) {
      std::fprintf(stderr, "palu-cuda-model-bench: %s: %s\n", name.c_str(), st.to_string().c_str());
      return 1;
    }
  }
  return 0;
}
