// palu-kernel-bench: time per call of the CPU KernelTable entries (backends/cpu/kernels.h) on
// one thread, for every ISA this CPU has (or those named), at the shapes the forward pass uses:
// the prefill attention's block GEMMs (model/llama_pooled.cc attend_prefill: Q·Kᵀ of a 64-query
// chunk against a 128-key tile at d_h 64 / 128, and P·V back), the online softmax's exp_sum over
// a key tile, and the element-wise kernels at ref-mha's widths. Inputs random, warm in cache;
// each number is the best of --reps runs of a loop lasting ≥ --min-ms. Prints a Markdown table.
//
//   palu-kernel-bench [--isa scalar,avx2,avx512] [--reps 5] [--min-ms 100]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/kernels.h"

namespace cpu = palu::backends::cpu;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<float> randv(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Best seconds per call of f over `reps` loops of ≥ min_s each.
double time_call(const std::function<void()>& f, int reps, double min_s) {
  f();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    long calls = 0;
    const double t0 = now_s();
    double t1 = t0;
    do {
      for (int i = 0; i < 8; ++i) f();
      calls += 8;
      t1 = now_s();
    } while (t1 - t0 < min_s);
    best = std::min(best, (t1 - t0) / (double)calls);
  }
  return best;
}

struct Bench {
  std::string name, shape;
  double flop;  // per call, 0 where not meaningful
  std::function<void(const cpu::KernelTable&)> run;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palu-kernel-bench: CPU KernelTable entries per call, one thread, per ISA"};
  std::vector<std::string> isa_names;
  int reps = 5, min_ms = 100;
  app.add_option("--isa", isa_names, "ISAs to time (default: every one this CPU has)")
      ->delimiter(',');
  app.add_option("--reps", reps, "timed loops per kernel (best is reported)")
      ->check(CLI::Range(1, 100));
  app.add_option("--min-ms", min_ms, "length of one timed loop")->check(CLI::Range(1, 10000));
  CLI11_PARSE(app, argc, argv);

  std::vector<cpu::CpuIsa> isas;
  if (isa_names.empty()) {
    for (cpu::CpuIsa isa : {cpu::CpuIsa::kScalar, cpu::CpuIsa::kAvx2, cpu::CpuIsa::kAvx512})
      if ((int)isa <= (int)cpu::detect_cpu_isa()) isas.push_back(isa);
  } else {
    for (const std::string& n : isa_names) {
      palu::Result<cpu::CpuIsa> isa = cpu::cap_cpu_isa(n.c_str(), cpu::CpuIsa::kAvx512);
      if (!isa.is_ok()) {
        std::fprintf(stderr, "palu-kernel-bench: --isa: %s\n", isa.status().message().c_str());
        return 2;
      }
      if ((int)*isa > (int)cpu::detect_cpu_isa()) {
        std::fprintf(stderr, "palu-kernel-bench: this CPU has no %s (it has %s)\n", n.c_str(),
                     cpu::cpu_isa_name(cpu::detect_cpu_isa()));
        return 2;
      }
      isas.push_back(*isa);
    }
  }

  // Operands, sized for the largest shape below.
  const std::vector<float> a = randv(64 * 1024, 1), b = randv(1024 * 1024, 2), w = randv(4096, 3);
  std::vector<float> c(64 * 1024), x(4096), y(4096);
  std::vector<uint16_t> h(4096);
  for (size_t i = 0; i < h.size(); ++i) h[i] = palu::f32_to_f16(a[i]);
  const std::vector<float> scores = randv(128, 4);

  auto gemm = [&](int m, int n, int k, const char* what) {
    return Bench{std::string("gemm_nt ") + what,
                 std::to_string(m) + "×" + std::to_string(n) + "×" + std::to_string(k),
                 2.0 * m * n * k, [&, m, n, k](const cpu::KernelTable& kt) {
                   kt.gemm_nt(m, n, k, a.data(), k, b.data(), k, c.data(), n, 0.f);
                 }};
  };
  const std::vector<Bench> benches = {
      gemm(64, 128, 64, "Q·Kᵀ tile, d_h 64"),
      gemm(64, 64, 128, "P·V tile, d_h 64"),
      gemm(64, 128, 128, "Q·Kᵀ and P·V tiles, d_h 128"),
      gemm(16, 1024, 512, "16-row tile of a weight GEMM"),
      gemm(1, 1024, 512, "GEMV (1 row)"),
      {"exp_sum", "128", 0,
       [&](const cpu::KernelTable& kt) {
         std::copy(scores.begin(), scores.end(), x.begin());
         kt.exp_sum(x.data(), 128, 1.f);
       }},
      {"softmax", "1024", 0,
       [&](const cpu::KernelTable& kt) {
         std::copy(a.begin(), a.begin() + 1024, x.begin());
         kt.softmax(x.data(), 1024);
       }},
      {"rms_norm", "512", 0,
       [&](const cpu::KernelTable& kt) { kt.rms_norm(a.data(), w.data(), 1e-5f, y.data(), 512); }},
      {"silu_mul", "1024", 0,
       [&](const cpu::KernelTable& kt) { kt.silu_mul(a.data(), b.data(), y.data(), 1024); }},
      {"dot", "64", 0, [&](const cpu::KernelTable& kt) { y[0] = kt.dot(a.data(), b.data(), 64); }},
      {"axpy", "512", 0,
       [&](const cpu::KernelTable& kt) { kt.axpy(0.5f, a.data(), y.data(), 512); }},
      {"f16_to_f32", "4096", 0,
       [&](const cpu::KernelTable& kt) { kt.f16_to_f32(h.data(), y.data(), 4096); }},
  };

  std::printf("| kernel | shape |");
  for (cpu::CpuIsa isa : isas) std::printf(" %s µs |", cpu::cpu_isa_name(isa));
  if (isas.size() > 1)
    std::printf(" %s vs %s |", cpu::cpu_isa_name(isas.back()), cpu::cpu_isa_name(isas.front()));
  std::printf("\n|---|---|");
  for (size_t i = 0; i < isas.size(); ++i) std::printf("---:|");
  if (isas.size() > 1) std::printf("---:|");
  std::printf("\n");
  for (const Bench& bn : benches) {
    std::vector<double> t;
    for (cpu::CpuIsa isa : isas) {
      const cpu::KernelTable& kt = cpu::kernels_for(isa);
      t.push_back(time_call([&] { bn.run(kt); }, reps, min_ms * 1e-3));
    }
    std::printf("| %s | %s |", bn.name.c_str(), bn.shape.c_str());
    for (double s : t) {
      if (bn.flop > 0) {
        std::printf(" %.2f (%.1f GFLOP/s) |", s * 1e6, bn.flop / s * 1e-9);
      } else {
        std::printf(" %.3f |", s * 1e6);
      }
    }
    if (t.size() > 1) std::printf(" %.1f× |", t.front() / t.back());
    std::printf("\n");
    std::fflush(stdout);
  }
  return 0;
}
