// palu-attention-bench: decode attention time per token for one layer at the Llama-2-7B attention
// shape (H = H_kv = 32, d_h = 128, d = 4096; Palu group size 4 → 8 groups, ratio 0.5 → rank 256
// per group for K and V), random seeded weights and caches:
//   full f16    our AVX-512 full-cache attention (backends/cpu/full_attention.h) on f16 K/V rows,
//               then the W_o [4096, 4096] GEMV — the baseline, measured in the same run;
//   latent f16  the fused latent kernel (backends/cpu/latent_attention.h) on f16 latents, then the
//               fused output projection W_o' [4096, Σ_h r_v = 8192];
//   latent q4   the same on 4-bit latents (per-row f32 scale and zero).
// Each is timed attention-only and attention + output projection, caches flushed before every
// timed call (a layer's cache and weights are not in the LLC when its turn comes in a real
// decode), best of --reps. Achieved GFLOP/s and GB/s are printed next to the machine's peaks
// measured in the same run with the same threads: matrix rate (cpu::gemm_nt 2048³) and memory
// bandwidth (a read sweep and a copy over 1 GiB / 2 × 512 MiB, far larger than any LLC).
//
//   palu-attention-bench [--ctx 1024,4096,16384,32768] [--threads N] [--reps 5] [--seed 1]
//                        [--isa scalar|avx2|avx512] [--out docs/perf/cpu.md]
//
// --isa picks the attention kernels (default: active_cpu_isa()); the GEMMs stay as they are.
//
// --out replaces only the text between "<!-- palu-attention-bench begin -->" and
// "<!-- palu-attention-bench end -->" in that file (appending both markers when absent).
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/full_attention.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/latent_attention.h"

namespace cpu = palu::backends::cpu;
using palu::Status;

namespace {

// Llama-2-7B attention shape and the Palu-50% G-LRD setting of the issue.
constexpr int kHeads = 32, kKvHeads = 32, kHeadDim = 128, kModelDim = 4096;
constexpr int kGroupSize = 4, kGroups = kKvHeads / kGroupSize, kRank = 256;
constexpr int kLatentWidth = kHeads * kRank;  // Σ_h r_v,g(h): the fused W_o' width

const char* kBegin = "<!-- palu-attention-bench begin -->";
const char* kEnd = "<!-- palu-attention-bench end -->";

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Page-aligned uninitialised buffer (filled by the caller, in parallel).
template <typename T>
struct Buffer {
  std::unique_ptr<T[], void (*)(T*)> p{nullptr, [](T* x) { std::free(x); }};
  size_t n = 0;
  explicit Buffer(size_t count) : n(count) {
    const size_t bytes = std::max<size_t>(4096, (count * sizeof(T) + 4095) / 4096 * 4096);
    p.reset(static_cast<T*>(std::aligned_alloc(4096, bytes)));
  }
  T* data() const { return p.get(); }
  size_t bytes() const { return n * sizeof(T); }
};

inline uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform values in [−a, a) (seeded per 64 Ki chunk, so the result does not depend on threads).
template <typename Store>
void fill(size_t n, uint64_t seed, float a, Store store) {
  const size_t chunk = 1 << 16, chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < chunks; ++c) {
    uint64_t s = seed * 0x100000001b3ull + c;
    for (size_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) {
      const float u = (float)(splitmix(s) >> 40) * (1.f / 16777216.f);  // [0, 1)
      store(i, (2.f * u - 1.f) * a, s);
    }
  }
}
void fill_f32(float* p, size_t n, uint64_t seed, float a) {
  fill(n, seed, a, [p](size_t i, float v, uint64_t&) { p[i] = v; });
}
void fill_f16(uint16_t* p, size_t n, uint64_t seed, float a) {
  fill(n, seed, a, [p](size_t i, float v, uint64_t&) { p[i] = palu::f32_to_f16(v); });
}
void fill_bytes(uint8_t* p, size_t n, uint64_t seed) {
  fill(n, seed, 1.f, [p](size_t i, float, uint64_t& s) { p[i] = (uint8_t)splitmix(s); });
}

// XOR of every 64-bit word (a read sweep the compiler cannot drop).
uint64_t read_sweep(const uint64_t* p, size_t n) {
  uint64_t x = 0;
#pragma omp parallel for schedule(static) reduction(^ : x)
  for (size_t i = 0; i < n; ++i) x ^= p[i];
  return x;
}

// Evicts the caches: reads a buffer far larger than the LLC.
struct Flusher {
  Buffer<uint64_t> buf{(size_t)512 << 17};  // 512 MiB
  volatile uint64_t sink = 0;
  Flusher() { fill_bytes(reinterpret_cast<uint8_t*>(buf.data()), buf.bytes(), 99); }
  void operator()() { sink = sink ^ read_sweep(buf.data(), buf.n); }
};

// Best of `reps` timed calls, caches flushed before each.
double best_of(int reps, Flusher& flush, const std::function<void()>& fn) {
  fn();  // warm-up: page faults, OpenMP team, lazy allocations
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    flush();
    const double t0 = now_s();
    fn();
    best = std::min(best, now_s() - t0);
  }
  return best;
}

struct Peaks {
  double gemm_gflops = 0, read_gbs = 0, copy_gbs = 0;
};

Peaks measure_peaks(int reps) {
  Peaks pk;
  {
    const int n = 2048;
    Buffer<float> a((size_t)n * n), b((size_t)n * n), c((size_t)n * n);
    fill_f32(a.data(), a.n, 1, 1.f);
    fill_f32(b.data(), b.n, 2, 1.f);
    cpu::gemm_nt(n, n, n, a.data(), n, b.data(), n, c.data(), n);
    double best = 1e30;
    for (int r = 0; r < std::max(3, reps); ++r) {
      const double t0 = now_s();
      cpu::gemm_nt(n, n, n, a.data(), n, b.data(), n, c.data(), n);
      best = std::min(best, now_s() - t0);
    }
    pk.gemm_gflops = 2.0 * n * n * n / best * 1e-9;
  }
  {
    Buffer<uint64_t> src((size_t)1 << 27);  // 1 GiB
    fill_bytes(reinterpret_cast<uint8_t*>(src.data()), src.bytes(), 3);
    volatile uint64_t sink = read_sweep(src.data(), src.n);
    double best = 1e30;
    for (int r = 0; r < std::max(3, reps); ++r) {
      const double t0 = now_s();
      sink = sink ^ read_sweep(src.data(), src.n);
      best = std::min(best, now_s() - t0);
    }
    pk.read_gbs = (double)src.bytes() / best * 1e-9;
  }
  {
    const size_t bytes = (size_t)512 << 20;
    Buffer<uint8_t> src(bytes), dst(bytes);
    fill_bytes(src.data(), bytes, 4);
    fill_bytes(dst.data(), bytes, 5);
    double best = 1e30;
    for (int r = 0; r < std::max(3, reps); ++r) {
      const double t0 = now_s();
#pragma omp parallel
      {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const size_t per = (bytes / nt + 63) / 64 * 64, b0 = std::min(bytes, per * id),
                     b1 = std::min(bytes, b0 + per);
        std::memcpy(dst.data() + b0, src.data() + b0, b1 - b0);
      }
      best = std::min(best, now_s() - t0);
    }
    pk.copy_gbs = 2.0 * (double)bytes / best * 1e-9;  // read + write
  }
  return pk;
}

// One measured variant at one context length.
struct Row {
  int T = 0;
  std::string name;
  double kv_bytes_per_token = 0;
  double attn_s = 0, total_s = 0;
  double attn_flop = 0, total_flop = 0;
  double rebuild_flop = 0;
  double attn_bytes = 0, total_bytes = 0;
};

// FLOP and byte counts (the formulas are printed in the doc section).
//   full:   attention H·(2·T·d_h + 2·T·d_h); projection 2·d·H·d_h
//   latent: G·2·T·r·s·d_h (key rebuild) + H·2·T·d_h (scores) + H·2·T·r (p·z); projection 2·d·H·r
Row count_full(int T) {
  Row r;
  r.T = T;
  r.name = "full-cache f16";
  r.kv_bytes_per_token = 2.0 * kKvHeads * kHeadDim * 2;  // K and V, f16
  r.attn_flop = (double)kHeads * (2.0 * T * kHeadDim + 2.0 * T * kHeadDim);
  r.total_flop = r.attn_flop + 2.0 * kModelDim * kHeads * kHeadDim;
  r.attn_bytes = r.kv_bytes_per_token * T;
  r.total_bytes = r.attn_bytes + 4.0 * kModelDim * kHeads * kHeadDim;  // W_o f32
  return r;
}

Row count_latent(int T, bool q4) {
  Row r;
  r.T = T;
  r.name = q4 ? "latent q4" : "latent f16";
  const double row_bytes = q4 ? kRank / 2.0 + 8.0 : kRank * 2.0;  // codes + f32 scale, zero
  r.kv_bytes_per_token = 2.0 * kGroups * row_bytes;
  r.rebuild_flop = (double)kGroups * 2.0 * T * kRank * kGroupSize * kHeadDim;
  r.attn_flop = r.rebuild_flop + (double)kHeads * (2.0 * T * kHeadDim + 2.0 * T * kRank);
  r.total_flop = r.attn_flop + 2.0 * kModelDim * kLatentWidth;
  // cache + B^Kᵀ (f32, read once per token) + RoPE table (cos, sin f32 [T, d_h/2], counted once)
  r.attn_bytes =
      r.kv_bytes_per_token * T + 4.0 * kGroups * kRank * kGroupSize * kHeadDim + 4.0 * T * kHeadDim;
  r.total_bytes = r.attn_bytes + 4.0 * kModelDim * kLatentWidth;  // W_o' f32
  return r;
}

Status run_full(int T, int reps, uint64_t seed, cpu::CpuIsa isa, Flusher& flush, Row& row) {
  const size_t width = (size_t)kKvHeads * kHeadDim;
  Buffer<uint16_t> k((size_t)T * width), v((size_t)T * width);
  fill_f16(k.data(), k.n, seed + 11, 1.f);
  fill_f16(v.data(), v.n, seed + 12, 1.f);
  Buffer<float> q((size_t)kHeads * kHeadDim), out((size_t)kHeads * kHeadDim);
  Buffer<float> w_o((size_t)kModelDim * kHeads * kHeadDim), y(kModelDim);
  fill_f32(q.data(), q.n, seed + 13, 1.7f);
  fill_f32(w_o.data(), w_o.n, seed + 14, 0.03f);
  cpu::LatentRows kr, vr;
  kr.storage = vr.storage = cpu::LatentStorage::kF16;
  kr.rank = vr.rank = (int)width;
  kr.rows = k.data();
  vr.rows = v.data();
  const cpu::FullAttentionShape shape{kHeads, kKvHeads, kHeadDim};
  Status st = Status::ok();
  auto attn = [&] {
    if (st.is_ok())
      st = cpu::full_attention_decode_isa(isa, shape, kr, vr, T, q.data(), out.data());
  };
  auto proj = [&] {
    cpu::gemm_nt(1, kModelDim, kHeads * kHeadDim, out.data(), kHeads * kHeadDim, w_o.data(),
                 kHeads * kHeadDim, y.data(), kModelDim);
  };
  row = count_full(T);
  row.attn_s = best_of(reps, flush, attn);
  row.total_s = best_of(reps, flush, [&] {
    attn();
    proj();
  });
  return st;
}

Status run_latent(int T, bool q4, int reps, uint64_t seed, cpu::CpuIsa isa, Flusher& flush,
                  Row& row) {
  const cpu::LatentStorage stor = q4 ? cpu::LatentStorage::kQ4 : cpu::LatentStorage::kF16;
  const size_t rb = cpu::latent_row_bytes(stor, kRank);
  const int N = kGroupSize * kHeadDim;
  // Per (kv, group): T contiguous rows; scale/zero per row for q4.
  Buffer<uint8_t> rows((size_t)2 * kGroups * T * rb);
  Buffer<float> scale((size_t)2 * kGroups * T), zero((size_t)2 * kGroups * T);
  if (q4) {
    fill_bytes(rows.data(), rows.n, seed + 21);
    fill_f32(scale.data(), scale.n, seed + 22, 0.02f);
    for (size_t i = 0; i < scale.n; ++i) scale.data()[i] += 0.13f;  // ≈ range 2 over 15 steps
    fill_f32(zero.data(), zero.n, seed + 23, 0.1f);
    for (size_t i = 0; i < zero.n; ++i) zero.data()[i] -= 1.f;
  } else {
    fill_f16(reinterpret_cast<uint16_t*>(rows.data()), rows.n / 2, seed + 21, 1.f);
  }
  Buffer<float> b_k((size_t)kGroups * N * kRank), b_k_t((size_t)kGroups * kRank * N);
  fill_f32(b_k.data(), b_k.n, seed + 24, 1.7f / std::sqrt((float)kRank));
  for (int g = 0; g < kGroups; ++g)
    for (int n = 0; n < N; ++n)
      for (int p = 0; p < kRank; ++p)
        b_k_t.data()[((size_t)g * kRank + p) * N + n] = b_k.data()[((size_t)g * N + n) * kRank + p];
  Buffer<float> q((size_t)kHeads * kHeadDim), o(kLatentWidth);
  Buffer<float> w_o((size_t)kModelDim * kLatentWidth), y(kModelDim);
  fill_f32(q.data(), q.n, seed + 25, 1.7f);
  fill_f32(w_o.data(), w_o.n, seed + 26, 0.02f);
  std::vector<float> inv_freq(kHeadDim / 2);
  for (int i = 0; i < kHeadDim / 2; ++i)
    inv_freq[i] = (float)std::pow(10000.0, -2.0 * i / kHeadDim);
  // The model builds the RoPE table once for its context; so does the bench (not timed).
  Buffer<float> cos_t((size_t)T * kHeadDim / 2), sin_t((size_t)T * kHeadDim / 2);
  cpu::build_latent_rope_table(inv_freq.data(), kHeadDim, T, cos_t.data(), sin_t.data());
  const cpu::LatentRopeTable rope{cos_t.data(), sin_t.data(), T};

  std::vector<cpu::LatentGroupCache> groups(kGroups);
  for (int g = 0; g < kGroups; ++g) {
    for (int kv = 0; kv < 2; ++kv) {
      cpu::LatentRows r;
      const size_t seg = (size_t)kv * kGroups + g;
      r.storage = stor;
      r.rank = kRank;
      r.rows = rows.data() + seg * T * rb;
      if (q4) {
        r.scale = scale.data() + seg * T;
        r.zero = zero.data() + seg * T;
      }
      (kv == 0 ? groups[g].k : groups[g].v) = r;
    }
    groups[g].b_k = b_k.data() + (size_t)g * N * kRank;
    groups[g].b_k_t = b_k_t.data() + (size_t)g * kRank * N;  // precomputed at load by a model
  }
  const cpu::LatentAttentionShape shape{kHeads, kKvHeads, kHeadDim, kGroupSize};
  Status st = Status::ok();
  auto attn = [&] {
    if (st.is_ok()) {
      st = cpu::latent_attention_decode_isa(isa, shape, groups.data(), T, T, q.data(),
                                            inv_freq.data(), o.data(), &rope);
    }
  };
  auto proj = [&] {
    if (st.is_ok())
      st = cpu::latent_output_projection(w_o.data(), kModelDim, kLatentWidth, o.data(), y.data());
  };
  row = count_latent(T, q4);
  row.attn_s = best_of(reps, flush, attn);
  row.total_s = best_of(reps, flush, [&] {
    attn();
    proj();
  });
  return st;
}

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto p = line.find(':');
      if (p != std::string::npos) return line.substr(p + 2);
    }
  }
  return "unknown CPU";
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  if (!(f >> a >> b >> c)) return "unknown";
  return a + ", " + b + ", " + c;
}

std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palu-attention-bench: CPU decode attention per token, full-cache vs latent"};
  std::vector<int> ctxs{1024, 4096, 16384, 32768};
  int reps = 5, threads = 0;
  uint64_t seed = 1;
  std::string out_path;
  app.add_option("--ctx", ctxs, "context lengths T")->delimiter(',')->check(CLI::Range(1, 1 << 20));
  app.add_option("--threads", threads, "CPU threads (default: all cores)")
      ->check(CLI::Range(0, 4096));
  app.add_option("--reps", reps, "timed repetitions per measurement (best is reported)")
      ->check(CLI::Range(1, 1000));
  app.add_option("--seed", seed, "seed of the random weights and caches");
  std::string isa_name;
  app.add_option("--isa", isa_name, "attention kernels: scalar, avx2 or avx512 (default: active ISA)");
  app.add_option("--out", out_path,
                 "replace the text between the palu-attention-bench markers of this Markdown file");
  CLI11_PARSE(app, argc, argv);

  cpu::set_num_threads(threads);
  const int nthreads = cpu::num_threads();
  cpu::CpuIsa isa = cpu::active_cpu_isa();
  if (!isa_name.empty()) {
    const palu::Result<cpu::CpuIsa> asked = cpu::cap_cpu_isa(isa_name.c_str(), cpu::CpuIsa::kAvx512);
    if (!asked.is_ok()) {
      std::fprintf(stderr, "palu-attention-bench: --isa: %s\n", asked.status().message().c_str());
      return 2;
    }
    isa = *asked;  // an ISA the CPU lacks: the kernels answer FAILED_PRECONDITION below
  }
  const std::string load_before = load_average();
  std::fprintf(stderr, "measuring peaks (%d threads)...\n", nthreads);
  const Peaks pk = measure_peaks(reps);
  Flusher flush;

  std::vector<Row> rows;
  for (int T : ctxs) {
    Row full, lf16, lq4;
    std::fprintf(stderr, "T = %d: full-cache f16...\n", T);
    Status st = run_full(T, reps, seed, isa, flush, full);
    if (st.is_ok()) {
      std::fprintf(stderr, "T = %d: latent f16...\n", T);
      st = run_latent(T, false, reps, seed, isa, flush, lf16);
    }
    if (st.is_ok()) {
      std::fprintf(stderr, "T = %d: latent q4...\n", T);
      st = run_latent(T, true, reps, seed, isa, flush, lq4);
    }
    if (!st.is_ok()) {
      std::fprintf(stderr, "palu-attention-bench: error: %s\n", st.message().c_str());
      return 1;
    }
    rows.insert(rows.end(), {full, lf16, lq4});
  }
  const std::string load_after = load_average();

  // The table: one row per (T, variant).
  auto pct = [](double a, double peak) { return fmt("%.0f%%", 100.0 * a / peak); };
  std::ostringstream table;
  table << "| T | variant | KV bytes/token | attention ms | GFLOP/s | GB/s | attention + W_o ms "
           "| GFLOP/s | GB/s | vs full (attn / total) |\n"
        << "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const Row& base = rows[i - i % 3];
    const double ag = r.attn_flop / r.attn_s * 1e-9, ab = r.attn_bytes / r.attn_s * 1e-9;
    const double tg = r.total_flop / r.total_s * 1e-9, tb = r.total_bytes / r.total_s * 1e-9;
    table << "| " << r.T << " | " << r.name << " | " << fmt("%.0f", r.kv_bytes_per_token) << " | "
          << fmt("%.2f", r.attn_s * 1e3) << " | " << fmt("%.1f", ag) << " ("
          << pct(ag, pk.gemm_gflops) << ") | " << fmt("%.1f", ab) << " (" << pct(ab, pk.read_gbs)
          << ") | " << fmt("%.2f", r.total_s * 1e3) << " | " << fmt("%.1f", tg) << " ("
          << pct(tg, pk.gemm_gflops) << ") | " << fmt("%.1f", tb) << " (" << pct(tb, pk.read_gbs)
          << ") | ";
    if (i % 3 == 0) {
      table << "baseline |\n";
    } else {
      table << fmt("%.2f×", r.attn_s / base.attn_s) << " / "
            << fmt("%.2f×", r.total_s / base.total_s) << " "
            << (r.total_s > base.total_s ? "slower" : "faster") << " |\n";
    }
  }

  // Explanations where the latent kernel is slower than full-cache attention: one line of
  // numbers per case after one paragraph on the cause.
  const double balance = pk.gemm_gflops / pk.read_gbs;  // FLOP per byte at which both limits meet
  const double f16_fpb = 2.0 * kGroupSize * kHeadDim / 2.0;
  const double q4_fpb = 2.0 * kGroupSize * kHeadDim / ((kRank / 2.0 + 8.0) / kRank);
  std::ostringstream why;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i % 3 == 0) continue;
    const Row& r = rows[i];
    const Row& base = rows[i - i % 3];
    if (r.attn_s <= base.attn_s && r.total_s <= base.total_s) continue;
    why << "- T = " << r.T << ", " << r.name << ": " << fmt("%.1f×", r.attn_s / base.attn_s)
        << " slower in attention (" << fmt("%.2f", r.attn_s * 1e3) << " vs "
        << fmt("%.2f", base.attn_s * 1e3) << " ms; " << fmt("%.1f×", r.total_s / base.total_s)
        << " with the output projection): " << fmt("%.2f", r.attn_flop * 1e-9) << " GFLOP, "
        << fmt("%.2f", r.rebuild_flop * 1e-9) << " of them the key rebuild, against "
        << fmt("%.3f", base.attn_flop * 1e-9) << " GFLOP ("
        << fmt("%.0f×", r.attn_flop / base.attn_flop) << "), while reading "
        << fmt("%.1f", r.attn_bytes / 1048576.0) << " MiB against "
        << fmt("%.1f", base.attn_bytes / 1048576.0)
        << " MiB. At the measured peaks the rebuild alone needs ≥ "
        << fmt("%.1f", r.rebuild_flop / (pk.gemm_gflops * 1e9) * 1e3)
        << " ms; streaming the full cache needs ≥ "
        << fmt("%.1f", base.attn_bytes / (pk.read_gbs * 1e9) * 1e3) << " ms.";
    if (r.total_s > base.total_s && r.attn_s <= base.attn_s) {
      why << " The output projection decides it: W_o' reads "
          << fmt("%.0f", 4.0 * kModelDim * kLatentWidth / 1048576.0) << " MiB against W_o's "
          << fmt("%.0f", 4.0 * kModelDim * kHeads * kHeadDim / 1048576.0) << " MiB.";
    }
    why << "\n";
  }
  std::ostringstream why_head;
  why_head << "Where the latent kernel is slower than full-cache attention, and why. The key "
              "rebuild k = B^K·z is compute: every cached key-latent element feeds s·d_h = "
           << kGroupSize * kHeadDim << " multiply-adds (" << 2 * kGroupSize * kHeadDim
           << " FLOP), i.e. " << fmt("%.0f", f16_fpb) << " FLOP per byte of f16 latents and "
           << fmt("%.0f", q4_fpb) << " per byte of q4 latents (codes + scale/zero), "
           << fmt("%.0f×", f16_fpb / balance) << " and " << fmt("%.0f×", q4_fpb / balance)
           << " this machine's balance (" << fmt("%.0f", pk.gemm_gflops) << " GFLOP/s ÷ "
           << fmt("%.1f", pk.read_gbs) << " GB/s = " << fmt("%.1f", balance)
           << " FLOP/byte). Full-cache attention does 4 FLOP per 4 bytes of f16 K/V (1 FLOP/byte) "
              "and is bound by memory. So the latent kernel runs at the matrix rate, the "
              "baseline at the memory bandwidth, and fewer bytes (4-bit latents) do not help "
              "the latent kernel: it is not waiting for them.\n\n";

  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += (i ? " " : "") + std::string(argv[i]);

  std::ostringstream doc;
  doc << "## Decode attention per token, full-cache vs latent (palu-attention-bench)\n\n"
      << "Command: `" << cmd << "` (" << date << ")\n\n"
      << "Machine: " << cpu_model_name() << ", " << omp_get_num_procs() << " logical CPUs, "
      << nthreads << " threads, kernels " << cpu::cpu_isa_name(isa) << ", GEMM "
      << cpu::gemm_backend_name() << "; load average " << load_before << " before, " << load_after
      << " after.\n\n"
      << "Peaks measured in the same run, " << nthreads << " threads: matrix rate "
      << fmt("%.1f", pk.gemm_gflops) << " GFLOP/s (cpu::gemm_nt 2048³, f32); memory read "
      << fmt("%.1f", pk.read_gbs) << " GB/s (XOR sweep over 1 GiB); copy "
      << fmt("%.1f", pk.copy_gbs) << " GB/s (memcpy 512 MiB, read + write bytes counted).\n\n"
      << "Shape: one Llama-2-7B layer, H = H_kv = 32, d_h = 128, d = 4096; Palu G-LRD group size 4 "
         "(8 groups), ratio 0.5 → rank r = 256 per group for K and V; random seeded weights, "
         "caches contiguous per group, B^Kᵀ and the RoPE table precomputed (as a model does at "
         "load). Caches flushed (512 MiB read) before every timed call; best of "
      << reps
      << ". Percentages: of the measured matrix rate (GFLOP/s) and of the read bandwidth (GB/s). "
         "KV bytes/token: one layer's cache per token.\n\n"
      << table.str() << "\n"
      << "Counted FLOPs (RoPE, exp, dequantization and the softmax bookkeeping not counted):\n"
      << "- full-cache: scores 2·T·d_h + p·V 2·T·d_h per head; W_o 2·d·H·d_h.\n"
      << "- latent: key rebuild 2·T·r·s·d_h per group, scores 2·T·d_h per head, p·z 2·T·r per "
         "head; fused W_o' 2·d·H·r.\n\n"
      << "Counted bytes = cache bytes read + weights read: full-cache T·2·H_kv·d_h·2 (f16 K and "
         "V) + W_o 4·d·H·d_h; latent T·2·G·row (row = 2r f16, r/2 + 8 q4 with its f32 scale and "
         "zero) + B^Kᵀ 4·G·r·s·d_h + RoPE table 4·T·d_h + W_o' 4·d·H·r.\n\n";
  if (!why.str().empty()) doc << why_head.str() << why.str() << "\n";
  {
    // Break-even balance: rebuild FLOPs per token against the full cache's bytes per token.
    const double rebuild_per_token = (double)kGroups * 2.0 * kRank * kGroupSize * kHeadDim;
    const double full_bytes_per_token = 2.0 * kKvHeads * kHeadDim * 2;
    doc << "Break-even: rebuilding the keys costs G·2·r·s·d_h = " << fmt("%.0f", rebuild_per_token)
        << " FLOP per cached token, while the full f16 cache "
        << "reads " << fmt("%.0f", full_bytes_per_token)
        << " bytes per token, so the latent kernel can only beat a bandwidth-bound full-cache "
           "attention on a machine whose matrix rate ÷ memory bandwidth exceeds "
        << fmt("%.0f", rebuild_per_token / full_bytes_per_token)
        << " FLOP/byte (this one: " << fmt("%.1f", balance)
        << "); GPUs with tensor cores are there, CPUs are not. On the CPU the latent cache "
           "buys memory (KV bytes/token above), not decode speed.\n\n";
  }
  doc << "The fused output projection is wider than W_o at this setting: B^V folded in gives "
         "every head a latent of its group's rank r = 256 > d_h = 128, so W_o' is [4096, 32·256] "
         "(128 MiB f32) against W_o [4096, 4096] (64 MiB).\n";

  std::printf("%s", doc.str().c_str());
  if (!out_path.empty()) {
    std::string old;
    {
      std::ifstream in(out_path);
      if (in) {
        std::stringstream ss;
        ss << in.rdbuf();
        old = ss.str();
      }
    }
    const std::string section = std::string(kBegin) + "\n" + doc.str() + kEnd + "\n";
    std::string text;
    const size_t b = old.find(kBegin), e = old.find(kEnd);
    if (b != std::string::npos && e != std::string::npos && e > b) {
      size_t after = e + std::strlen(kEnd);
      if (after < old.size() && old[after] == '\n') ++after;
      text = old.substr(0, b) + section + old.substr(after);
    } else {
      text = old + (old.empty() || old.back() == '\n' ? "" : "\n") + (old.empty() ? "" : "\n") +
             section;
    }
    std::ofstream f(out_path);
    if (!f || !(f << text)) {
      std::fprintf(stderr, "palu-attention-bench: error: cannot write %s\n", out_path.c_str());
      return 1;
    }
    std::fprintf(stderr, "wrote %s\n", out_path.c_str());
  }
  return 0;
}
