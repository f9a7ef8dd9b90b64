// palu-bench: prefill and decode throughput on the CPU backend.
//
//   palu-bench --model PATH [--ctx 512,2048] [--decode-tokens 64] [--reps 3] [--threads N]
//              [--out docs/perf/cpu.md]
//
// For each context C: prefill = C tokens in one forward from an empty cache; decode = the
// last --decode-tokens tokens of C generated one at a time after prefilling the rest (so the
// decode runs at context ≈ C). Best of --reps. Prints a Markdown table; --out also writes it
// to a file with the command line and the machine.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/gemm.h"
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palu-bench: CPU prefill/decode throughput"};
  std::string model_path, out_path;
  std::vector<int> ctxs{512, 2048};
  int decode_tokens = 64, reps = 3, threads = 0;
  app.add_option("--model,-m", model_path, "model directory or .gguf file")->required();
  app.add_option("--ctx", ctxs, "context lengths")->delimiter(',')->check(CLI::Range(2, 1 << 20));
  app.add_option("--decode-tokens", decode_tokens, "decode steps timed per context")->check(CLI::Range(1, 1 << 16));
  app.add_option("--reps", reps, "repetitions (best is reported)")->check(CLI::Range(1, 100));
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 4096));
  app.add_option("--out", out_path, "also write the table (Markdown) to this file");
  CLI11_PARSE(app, argc, argv);

  backends::cpu::set_num_threads(threads);
  auto loaded = tools::load_with_progress(model_path, true);
  if (!loaded.is_ok()) return tools::fail("palu-bench", loaded.status());
  const model::LlamaModel& m = *loaded.value().model;
  const int V = m.config().vocab_size;
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> dist(3, V - 1);

  std::ostringstream table;
  table << "| context | prefill tok/s | prefill ms | decode tok/s | decode ms/token |\n"
        << "|---:|---:|---:|---:|---:|\n";
  for (int C : ctxs) {
    if (m.config().max_position_embeddings > 0 && C > m.config().max_position_embeddings) {
      return tools::fail("palu-bench", invalid_argument("--ctx " + std::to_string(C) + " exceeds the model's context " +
                                                        std::to_string(m.config().max_position_embeddings)));
    }
    const int dec = std::min(decode_tokens, C - 1);
    std::vector<int32_t> ids(C);
    for (auto& t : ids) t = dist(rng);
    auto cache = m.make_cache(C);
    if (!cache.is_ok()) return tools::fail("palu-bench", cache.status());
    std::vector<float> logits((size_t)V);
    double best_prefill = 1e30, best_decode = 1e30;
    for (int r = 0; r < reps; ++r) {
      cache.value().clear();
      double t0 = tools::now_seconds();
      Status st = m.forward(ids.data(), C, &cache.value(), model::LogitsMode::kLast, logits.data());
      if (!st.is_ok()) return tools::fail("palu-bench", st);
      best_prefill = std::min(best_prefill, tools::now_seconds() - t0);
      cache.value().clear();
      st = m.forward(ids.data(), C - dec, &cache.value(), model::LogitsMode::kLast, logits.data());
      if (!st.is_ok()) return tools::fail("palu-bench", st);
      t0 = tools::now_seconds();
      for (int i = C - dec; i < C; ++i) {
        st = m.forward(&ids[i], 1, &cache.value(), model::LogitsMode::kLast, logits.data());
        if (!st.is_ok()) return tools::fail("palu-bench", st);
      }
      best_decode = std::min(best_decode, tools::now_seconds() - t0);
    }
    char row[256];
    std::snprintf(row, sizeof row, "| %d | %.0f | %.1f | %.1f | %.2f |\n", C, C / best_prefill, best_prefill * 1e3,
                  dec / best_decode, best_decode * 1e3 / dec);
    table << row;
    std::fprintf(stderr, "ctx %d done\n", C);
  }
  std::ostringstream machine;
  machine << cpu_model_name() << ", " << std::thread::hardware_concurrency() << " logical CPUs, "
          << backends::cpu::num_threads() << " threads, kernels " << backends::cpu::cpu_isa_name(backends::cpu::active_cpu_isa())
          << ", GEMM " << backends::cpu::gemm_backend_name();
  std::printf("model: %s — %s\nmachine: %s\n\n%s", model_path.c_str(), m.config().summary().c_str(),
              machine.str().c_str(), table.str().c_str());
  if (!out_path.empty()) {
    std::ofstream f(out_path);
    if (!f) return tools::fail("palu-bench", io_error("cannot write " + out_path));
    std::string cmd;
    for (int i = 0; i < argc; ++i) cmd += (i ? " " : "") + std::string(argv[i]);
    f << "# CPU throughput (palu-bench)\n\nCommand: `" << cmd << "`\n\nModel: " << m.config().summary()
      << " (weights float32 in memory, float32 compute)\n\nMachine: " << machine.str()
      << "\n\nPrefill: one forward of `context` tokens from an empty cache. Decode: " << decode_tokens
      << " tokens generated one at a time at the end of the context. Best of " << reps << ".\n\n"
      << table.str();
  }
  return 0;
}
