// palu-bench: prefill and decode throughput on the CPU backend.
//
//   palu-bench --model PATH [--model PATH2 ...] [--kv-configs dense,auto,latent:4,...]
//              [--ctx 512,2048] [--decode-tokens 64] [--reps 3] [--threads N] [--out docs/perf/cpu.md]
//
// For each model, KV configuration and context C: prefill = C tokens in one forward from an
// empty cache; decode = the last --decode-tokens tokens of C generated one at a time after
// prefilling the rest (so the decode runs at context ≈ C). Best of --reps. A KV configuration
// is MODE[:BITS[:WINDOW]] with MODE as palu-perplexity's --kv (auto, latent, full, dense,
// sim); configurations that do not apply to a model (latent on an uncompressed one) are
// skipped. Prints a Markdown table; --out also writes it to a file with the command line and
// the machine.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/gemm.h"
#include "cache/cache_layout.h"
#include "tools/kv_options.h"
#include "tools/tool_common.h"

using namespace palu;

namespace {

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      if (p != std::string::npos) return line.substr(p + 2);
    }
  }
  return "unknown CPU";
}

// Memory of a `tokens`-token session: the full f16 cache, and latents in f16 and 4/3/2 bits
// (no f16 window), from the cache layout's exact byte accounting.
std::string memory_table(const std::string& name, int layers, int kv_width,
                         const std::vector<std::array<std::vector<int>, 2>>& ranks, int64_t tokens) {
  std::ostringstream t;
  char row[256];
  auto add = [&](const char* what, cache::CacheLayoutSpec spec) {
    auto layout = cache::CacheLayout::create(spec);
    if (!layout.is_ok()) return;
    const double mib = (double)layout.value().session_bytes(tokens) / 1048576.0;
    std::snprintf(row, sizeof row, "| %s | %s | %zu | %.1f |\n", name.c_str(), what, layout.value().token_bytes(), mib);
    t << row;
  };
  add("full K/V, f16", cache::full_layout_spec(layers, kv_width, cache::CacheStorage::kF16));
  const std::pair<const char*, cache::CacheStorage> kinds[] = {{"latent f16", cache::CacheStorage::kF16},
                                                              {"latent 4-bit", cache::CacheStorage::kQ4},
                                                              {"latent 3-bit", cache::CacheStorage::kQ3},
                                                              {"latent 2-bit", cache::CacheStorage::kQ2}};
  for (const auto& [what, storage] : kinds) {
    cache::CacheLayoutSpec spec;
    spec.ranks = ranks;
    spec.storage = storage;
    add(what, spec);
  }
  return t.str();
}

// Ranks of a ratio-ρ, group-size-s compression with equal ranks everywhere.
std::vector<std::array<std::vector<int>, 2>> uniform_ranks(int layers, int kv_heads, int head_dim, int s, double ratio) {
  const int groups = kv_heads / s;
  const int r = (int)(ratio * s * head_dim);
  std::array<std::vector<int>, 2> layer{std::vector<int>(groups, r), std::vector<int>(groups, r)};
  return std::vector<std::array<std::vector<int>, 2>>(layers, layer);
}

// "latent:4:32" → KvOptions{latent, 4, 32}.
Result<tools::KvOptions> parse_kv_config(const std::string& text) {
  tools::KvOptions o;
  std::vector<std::string> parts;
  std::stringstream ss(text);
  for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
  static const char* kModes[] = {"auto", "latent", "full", "dense", "sim"};
  if (parts.empty() || parts.size() > 3 || std::find(std::begin(kModes), std::end(kModes), parts[0]) == std::end(kModes)) {
    return invalid_argument("--kv-configs: '" + text + "' is not MODE[:BITS[:WINDOW]] with MODE auto|latent|full|dense|sim");
  }
  o.kv = parts[0];
  try {
    if (parts.size() > 1) o.bits = std::stoi(parts[1]);
    if (parts.size() > 2) o.window = std::stoi(parts[2]);
  } catch (const std::exception&) {
    return invalid_argument("--kv-configs: '" + text + "' has a non-numeric BITS or WINDOW");
  }
  if (o.bits != 0 && !cache::valid_latent_bits(o.bits)) {
    return invalid_argument("--kv-configs: '" + text + "': bits must be 2, 3, 4 or 8");
  }
  if (o.window < 0) return invalid_argument("--kv-configs: '" + text + "': window must be ≥ 0");
  return o;
}

std::string kv_label(const tools::KvOptions& o, const tools::KvSession& s) {
  std::string label = s.describe();
  return label.substr(0, label.rfind(','));  // without the bytes/token (own column)
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palu-bench: CPU prefill/decode throughput"};
  std::string out_path;
  std::vector<std::string> model_paths, kv_configs{"auto"};
  std::vector<int> ctxs{512, 2048};
  int decode_tokens = 64, reps = 3, threads = 0;
  app.add_option("--model,-m", model_paths, "model directory or .gguf file (repeatable)")->required();
  app.add_option("--kv-configs", kv_configs, "KV configurations MODE[:BITS[:WINDOW]], e.g. dense,auto,latent:4")
      ->delimiter(',');
  app.add_option("--ctx", ctxs, "context lengths")->delimiter(',')->check(CLI::Range(2, 1 << 20));
  app.add_option("--decode-tokens", decode_tokens, "decode steps timed per context")->check(CLI::Range(1, 1 << 16));
  app.add_option("--reps", reps, "repetitions (best is reported)")->check(CLI::Range(1, 100));
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 4096));
  app.add_option("--out", out_path, "also write the table (Markdown) to this file");
  int64_t memory_tokens = 32768;
  app.add_option("--memory-tokens", memory_tokens, "session length for the KV memory table")->check(CLI::Range(1, 1 << 30));
  CLI11_PARSE(app, argc, argv);

  backends::cpu::set_num_threads(threads);
  std::vector<tools::KvOptions> configs;
  for (const auto& c : kv_configs) {
    auto o = parse_kv_config(c);
    if (!o.is_ok()) return tools::fail("palu-bench", o.status());
    configs.push_back(o.value());
  }
  std::mt19937 rng(1234);

  std::ostringstream table, models_text;
  table << "| model | KV cache | bytes/token | context | prefill tok/s | prefill ms | decode tok/s | decode ms/token |\n"
        << "|---|---|---:|---:|---:|---:|---:|---:|\n";
  std::unique_ptr<model::LlamaModel> first_model;
  std::string first_path;
  for (const std::string& model_path : model_paths) {
    auto loaded = tools::load_with_progress(model_path, true);
    if (!loaded.is_ok()) return tools::fail("palu-bench", loaded.status());
    const model::LlamaModel& m = *loaded.value().model;
    const std::string name = std::filesystem::path(model_path).filename().string();
    models_text << "- `" << name << "`: " << m.config().summary();
    if (m.is_compressed()) {
      const auto& pm = m.palu_manifest();
      char b[160];
      std::snprintf(b, sizeof b, " — palu ratio %.3f, group size %d, %s%s", pm.achieved_ratio, pm.group_size,
                    pm.search.c_str(), pm.hadamard ? ", Hadamard" : "");
      models_text << b;
    }
    models_text << "\n";
    const int V = m.config().vocab_size;
    std::uniform_int_distribution<int> dist(3, V - 1);
    for (const tools::KvOptions& kv : configs) {
      const std::string mode = kv.resolved(m);
      if ((mode == "latent" || kv.kv == "sim" || kv.bits > 0) && !m.is_compressed()) continue;
      if (mode == "full" && m.is_compressed()) continue;
      if (kv.bits > 0 && mode == "dense") continue;  // the simulation's fake quantization is set at load
      for (int C : ctxs) {
        if (m.config().max_position_embeddings > 0 && C > m.config().max_position_embeddings) {
          return tools::fail("palu-bench", invalid_argument("--ctx " + std::to_string(C) + " exceeds the model's context " +
                                                            std::to_string(m.config().max_position_embeddings)));
        }
        const int dec = std::min(decode_tokens, C - 1);
        std::vector<int32_t> ids(C);
        for (auto& t : ids) t = dist(rng);
        auto session = kv.session(m, C);
        if (!session.is_ok()) return tools::fail("palu-bench", session.status());
        tools::KvSession& ses = session.value();
        std::vector<float> logits((size_t)V);
        double best_prefill = 1e30, best_decode = 1e30;
        for (int r = 0; r < reps; ++r) {
          Status st = ses.reset();
          double t0 = tools::now_seconds();
          if (st.is_ok()) st = ses.step(ids.data(), C, model::LogitsMode::kLast, logits.data());
          if (!st.is_ok()) return tools::fail("palu-bench", st);
          best_prefill = std::min(best_prefill, tools::now_seconds() - t0);
          st = ses.reset();
          if (st.is_ok()) st = ses.step(ids.data(), C - dec, model::LogitsMode::kLast, logits.data());
          if (!st.is_ok()) return tools::fail("palu-bench", st);
          t0 = tools::now_seconds();
          for (int i = C - dec; i < C; ++i) {
            st = ses.step(&ids[i], 1, model::LogitsMode::kLast, logits.data());
            if (!st.is_ok()) return tools::fail("palu-bench", st);
          }
          best_decode = std::min(best_decode, tools::now_seconds() - t0);
        }
        char row[512];
        std::snprintf(row, sizeof row, "| %s | %s | %llu | %d | %.0f | %.1f | %.1f | %.2f |\n", name.c_str(),
                      kv_label(kv, ses).c_str(), (unsigned long long)ses.bytes_per_token(), C, C / best_prefill,
                      best_prefill * 1e3, dec / best_decode, best_decode * 1e3 / dec);
        table << row;
        std::fprintf(stderr, "%s, %s, ctx %d done\n", name.c_str(), kv.kv.c_str(), C);
      }
    }
    if (!first_model) {
      first_model = std::move(loaded.value().model);
      first_path = model_path;
    }
  }
  const model::LlamaModel& m = *first_model;
  const std::string model_path = first_path;
  // KV memory of one long session: this model (its own ranks when compressed, else ratio 0.5
  // at group size min(4, H_kv)) and a Llama-2-7B-shaped model (32 layers, 32 heads × 128,
  // group size 4, ratio 0.5).
  const auto& cfg = m.config();
  std::vector<std::array<std::vector<int>, 2>> own;
  if (m.is_compressed()) {
    for (int l = 0; l < cfg.num_layers; ++l) own.push_back({m.palu_manifest().k_ranks[l], m.palu_manifest().v_ranks[l]});
  } else {
    own = uniform_ranks(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, std::min(4, cfg.num_kv_heads), 0.5);
  }
  std::ostringstream mem;
  mem << "| model | cache | bytes/token | " << memory_tokens << "-token session (MiB) |\n|---|---|---:|---:|\n"
      << memory_table(std::filesystem::path(model_path).filename().string() + (m.is_compressed() ? "" : " (ratio 0.5, uniform)"),
                      cfg.num_layers, cfg.kv_width(), own, memory_tokens)
      << memory_table("Llama-2-7B shape (ratio 0.5, group 4)", 32, 32 * 128, uniform_ranks(32, 32, 128, 4, 0.5),
                      memory_tokens);
  std::ostringstream machine;
  machine << cpu_model_name() << ", " << std::thread::hardware_concurrency() << " logical CPUs, "
          << backends::cpu::num_threads() << " threads, kernels " << backends::cpu::cpu_isa_name(backends::cpu::active_cpu_isa())
          << ", GEMM " << backends::cpu::gemm_backend_name();
  std::printf("models:\n%smachine: %s\n\n%s\n%s", models_text.str().c_str(), machine.str().c_str(),
              table.str().c_str(), mem.str().c_str());
  if (!out_path.empty()) {
    // The generated part sits between two markers, so hand-written sections of the same file
    // (other measurements) survive a re-run.
    std::string cmd;
    for (int i = 0; i < argc; ++i) cmd += (i ? " " : "") + std::string(argv[i]);
    std::ostringstream gen;
    gen << "<!-- palu-bench begin -->\n## Throughput (palu-bench)\n\nCommand: `" << cmd << "`\n\nModels (weights float32 in memory, float32 compute):\n\n"
        << models_text.str() << "\nMachine: " << machine.str()
        << "\n\nPrefill: one forward of `context` tokens from an empty cache. Decode: " << decode_tokens
        << " tokens generated one at a time at the end of the context. Best of " << reps
        << ". KV cache: `dense float32` is the contiguous reference cache (for a compressed model it rebuilds K/V from "
           "latents: the simulation); `paged full K/V` and `paged latents` are the block-pool caches the runtime uses "
           "(full rows for uncompressed models, per-group latents for compressed ones; B-bit codes with a per-token "
           "scale and zero).\n\n"
        << table.str() << "\n## KV cache memory of one session (exact byte accounting of cache/cache_layout.h)\n\n"
        << mem.str() << "<!-- palu-bench end -->\n";
    std::string doc = "# CPU performance\n\n" + gen.str();
    {
      std::ifstream in(out_path);
      if (in) {
        std::stringstream ss;
        ss << in.rdbuf();
        const std::string old = ss.str();
        const size_t b = old.find("<!-- palu-bench begin -->"), e = old.find("<!-- palu-bench end -->");
        if (b != std::string::npos && e != std::string::npos && e > b) {
          doc = old.substr(0, b) + gen.str() + old.substr(e + std::string("<!-- palu-bench end -->\n").size());
        } else if (!old.empty()) {
          doc = old + "\n" + gen.str();
        }
      }
    }
    std::ofstream f(out_path);
    if (!f) return tools::fail("palu-bench", io_error("cannot write " + out_path));
    f << doc;
  }
  return 0;
}
