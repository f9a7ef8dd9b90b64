// palu-vulkan-attention-bench: decode attention on a Vulkan device at the shapes of
// docs/perf/cuda.md (Llama-2-7B: batch 1, 32 query heads × 128, 32 KV heads; latent rows with
// group size 4 → 8 groups): the full-cache f16 kernel and the latent kernel that
// attention_decode_latent_groups picks for the layer's 8 groups (kAuto: the grouped coopmat
// kernel, all groups in one dispatch, where the device has cooperative matrices, else the fused
// kernel per group; PALU_VULKAN_COOPMAT=0: never coopmat; f16 and q4 codes, key/value ranks
// 256/256 and 128/384), one layer, one query token. --variants adds the grouped coopmat kernel
// called per group, the per-head coopmat kernel (where the device has VK_NV_cooperative_matrix),
// the fused kernel in f16 and f32 arithmetic and the older tile kernel (keys rebuilt per tile;
// contexts ≤ 16384 only, it is slow).
//
// Time per call = wall time of one command buffer holding --reps back-to-back calls (every
// dispatch the call records: splits + reduction) divided by reps, median of --runs such
// submissions; so it includes a share of the submission overhead. MB moved = cache bytes read
// (rows + packed scale/zero) + B^K for latent calls. Prints a markdown table per context.
// --gpu-time (where the queue has timestamps) adds the device time of the same submissions
// (a timestamp before the first and after the last call, ÷ reps, median) and, from one more
// submission with a timestamp after every dispatch, the device time per call of each shader.
//
//   palu-vulkan-attention-bench [--contexts 4096,16384,65536,131072] [--reps 20] [--runs 5]
//                               [--splits 0[,N...]] [--variants] [--device N] [--gpu-time]
//                               [--copy-probe]
// Several --splits values repeat every latent row per value (0: T/512 clamped to 8..64).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/vulkan/vulkan_context.h"
#include "backends/vulkan/vulkan_ops.h"

namespace vk = palu::backends::vulkan;
using palu::Status;
using palu::backends::RowStorage;

namespace {

constexpr int kH = 32, kHkv = 32, kDh = 128, kS = 4, kG = kHkv / kS;

struct Kernel {
  std::string name;
  bool latent;
  RowStorage st;
  int rk, rv;
  vk::LatentKernel kind = vk::LatentKernel::kFused;
  int splits = 0;
  bool per_group = false;  // attention_decode_latent per group instead of one call for all
};

// Fills a region of T rows through store_rows from a reused [chunk, rank] f32 source.
Status fill(vk::VulkanContext* ctx, const vk::Region& r, int T) {
  const int chunk = std::min(T, std::max(1, (16 << 20) / (r.rank * 4)));
  std::vector<float> src((size_t)chunk * r.rank);
  uint32_t x = 12345;
  for (auto& v : src) {
    x = x * 1664525u + 1013904223u;
    v = (float)((x >> 8) & 0xffff) / 65536.0f - 0.5f;
  }
  PALU_ASSIGN_OR_RETURN(vk::VulkanBuffer sb,
                        ctx->alloc(src.size() * 4, vk::MemoryKind::kDevice, "bench source"));
  PALU_RETURN_IF_ERROR(ctx->upload(sb, 0, src.data(), src.size() * 4));
  for (int t0 = 0; t0 < T; t0 += chunk) {
    vk::Recorder rec(ctx);
    vk::store_rows(rec, sb.address(), r.rank, 0, r, std::min(chunk, T - t0), t0);
    PALU_RETURN_IF_ERROR(rec.submit("fill"));
  }
  return Status::ok();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Vulkan decode-attention benchmark (docs/perf/cuda.md shapes)"};
  std::vector<int> contexts{4096, 16384, 65536, 131072};
  int reps = 20, runs = 5, device = -1;
  std::vector<int> splits_list{0};
  bool variants = false;
  app.add_option("--contexts", contexts, "cached tokens T")->delimiter(',');
  app.add_option("--reps", reps, "calls per command buffer");
  app.add_option("--runs", runs, "timed submissions (median)");
  app.add_option("--splits", splits_list, "token splits (0: T/512 clamped to 8..64)")
      ->delimiter(',');
  app.add_flag("--variants", variants,
               "also the coopmat kernel, the f32 fused kernel and the tile kernel");
  bool copy_probe = false;
  app.add_flag("--copy-probe", copy_probe,
               "print the device-to-device copy rate (vkCmdCopyBuffer, 1 MiB to 1 GiB, with "
               "and without barriers) and the add shader's streaming rate");
  bool gpu_time = false;
  app.add_flag("--gpu-time", gpu_time, "also the device time (timestamp queries) per call");
  app.add_option("--device", device,
                 "Vulkan device index (default: PALU_VULKAN_DEVICE or the preferred one)");
  CLI11_PARSE(app, argc, argv);

  auto made = vk::VulkanContext::create(device);
  if (!made.is_ok()) {
    std::fprintf(stderr, "%s\n", made.status().to_string().c_str());
    return 1;
  }
  vk::VulkanContext* ctx = made.value().get();
  std::printf("# device: %s (subgroup %u, %u B shared memory, shaderFloat16 %s)\n",
              ctx->info().name.c_str(), ctx->subgroup_size(), ctx->max_shared_bytes(),
              ctx->shader_float16() ? "yes" : "no");
  std::printf("# latent rows: kAuto (%s)\n",
              !ctx->cooperative_matrix()
                  ? "the fused kernel"
                  : "the grouped coopmat kernel, all groups in one dispatch");
  std::printf("# %s\n", ctx->cooperative_matrix_note().c_str());
  std::printf("# queue family %u, timestamps %s (period %.3f ns)\n", ctx->queue_family(),
              ctx->timestamps() ? "yes" : "no", ctx->timestamp_period_ns());
  if (copy_probe) {
    // The rate the memory system gives a plain copy, next to the kernels' GB/s: `count` copies
    // of `bytes` in one command buffer, 2·bytes/time, median of --runs after one warm-up; wall
    // time (recording + submit + wait) and device time (a timestamp after every copy: first
    // to last ÷ count, and the median single copy).
    const size_t max_bytes = 1u << 30;
    auto src = ctx->alloc(max_bytes, vk::MemoryKind::kDevice, "copy probe source");
    auto dst = ctx->alloc(max_bytes, vk::MemoryKind::kDevice, "copy probe destination");
    if (!src.is_ok() || !dst.is_ok()) {
      std::fprintf(stderr, "copy probe: %s\n",
                   (!src.is_ok() ? src.status() : dst.status()).to_string().c_str());
      return 1;
    }
    std::printf(
        "\n| copies | barrier | wall µs/copy | GPU µs/copy | GPU µs median copy | "
        "GB/s wall | GB/s GPU |\n|---|---|---:|---:|---:|---:|---:|\n");
    auto probe = [&](size_t bytes, int count, bool barrier) -> Status {
      std::vector<double> wall, gpu, one;
      for (int r = 0; r <= runs; ++r) {
        vk::Recorder rec(ctx);
        const auto t0 = std::chrono::steady_clock::now();
        rec.mark("start");
        for (int i = 0; i < count; ++i) {
          rec.copy(src.value(), 0, dst.value(), 0, bytes, barrier);
          if (barrier) rec.mark("copy");
        }
        if (!barrier) rec.mark("end");
        PALU_RETURN_IF_ERROR(rec.submit("copy probe"));
        const double t =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                .count();
        if (r == 0) continue;
        wall.push_back(t / count);
        const auto& m = rec.marks();
        if (m.size() >= 2) {
          gpu.push_back(m.back().ns / 1e3 / count);
          for (size_t i = 1; i < m.size(); ++i) one.push_back((m[i].ns - m[i - 1].ns) / 1e3);
        }
      }
      auto med = [](std::vector<double> v) {
        if (v.empty()) return 0.0;
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
      };
      const double w = med(wall), g = med(gpu), o = med(one);
      char one_s[32] = "-";  // without barriers only the first and last copy are marked
      if (barrier) std::snprintf(one_s, sizeof one_s, "%.1f", o);
      std::printf("| %d × %zu MiB | %s | %.1f | %.1f | %s | %.0f | %.0f |\n", count, bytes >> 20,
                  barrier ? "yes" : "no", w, g, one_s, 2.0 * (double)bytes / w / 1e3,
                  g > 0 ? 2.0 * (double)bytes / g / 1e3 : 0.0);
      std::fflush(stdout);
      return Status::ok();
    };
    const struct {
      size_t mib;
      int count;
      bool barrier;
    } cases[] = {{256, 10, true}, {256, 10, false}, {1024, 1, true}, {1024, 3, true},
                 {64, 10, true},  {64, 10, false},  {16, 10, true},  {16, 10, false},
                 {1, 10, true},   {1, 10, false}};
    for (const auto& c : cases) {
      Status st = probe(c.mib << 20, c.count, c.barrier);
      if (!st.is_ok()) {
        std::fprintf(stderr, "copy probe: %s\n", st.to_string().c_str());
        return 1;
      }
    }
    // The same memory through a shader: y += x over n f32 (the `add` op: 64-thread workgroups,
    // one 32-bit load of x and y and one store per thread through buffer device addresses),
    // 3·4·n bytes per dispatch; 10 dispatches with the Recorder's barriers, device time.
    std::printf(
        "\n| shader | n (f32) | wall µs/dispatch | GPU µs/dispatch | GB/s wall | "
        "GB/s GPU |\n|---|---:|---:|---:|---:|---:|\n");
    for (size_t n : {(size_t)64 << 20, (size_t)16 << 20, (size_t)1 << 20}) {
      std::vector<double> wall, gpu;
      for (int r = 0; r <= runs; ++r) {
        vk::Recorder rec(ctx);
        const auto t0 = std::chrono::steady_clock::now();
        rec.mark("start");
        for (int i = 0; i < 10; ++i)
          vk::add(rec, src.value().address(), dst.value().address(), n, n);
        rec.mark("end");
        Status st = rec.submit("stream probe");
        if (!st.is_ok()) {
          std::fprintf(stderr, "stream probe: %s\n", st.to_string().c_str());
          return 1;
        }
        const double t =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                .count();
        if (r == 0) continue;
        wall.push_back(t / 10);
        if (rec.marks().size() == 2) gpu.push_back(rec.marks()[1].ns / 1e3 / 10);
      }
      std::sort(wall.begin(), wall.end());
      std::sort(gpu.begin(), gpu.end());
      const double w = wall[wall.size() / 2], g = gpu.empty() ? 0.0 : gpu[gpu.size() / 2];
      const double moved = 12.0 * (double)n;
      std::printf("| add | %zu | %.1f | %.1f | %.0f | %.0f |\n", n, w, g, moved / w / 1e3,
                  g > 0 ? moved / g / 1e3 : 0.0);
      std::fflush(stdout);
    }
  }
  std::vector<Kernel> kernels = {{"full f16 (ours)", false, RowStorage::kF16, 0, 0}};
  struct Shape {
    const char* name;
    RowStorage st;
    int rk, rv;
  };
  const Shape shapes[] = {{"latent f16 256/256", RowStorage::kF16, 256, 256},
                          {"latent q4 256/256", RowStorage::kQ4, 256, 256},
                          {"latent q4 128/384", RowStorage::kQ4, 128, 384}};
  for (int sp : splits_list) {
    const std::string tag = splits_list.size() > 1 ? " splits " + std::to_string(sp) : "";
    for (const Shape& sh : shapes) {
      kernels.push_back(
          {std::string(sh.name) + tag, true, sh.st, sh.rk, sh.rv, vk::LatentKernel::kAuto, sp});
      if (!variants) continue;
      if (ctx->cooperative_matrix()) {
        kernels.push_back({std::string(sh.name) + " coopmat per group" + tag, true, sh.st, sh.rk,
                           sh.rv, vk::LatentKernel::kFusedCoopmat, sp, true});
        kernels.push_back({std::string(sh.name) + " coopmat per head" + tag, true, sh.st, sh.rk,
                           sh.rv, vk::LatentKernel::kFusedCoopmatHead, sp});
      }
      kernels.push_back({std::string(sh.name) + " fused f16" + tag, true, sh.st, sh.rk, sh.rv,
                         vk::LatentKernel::kFused, sp});
      kernels.push_back({std::string(sh.name) + " fused f32" + tag, true, sh.st, sh.rk, sh.rv,
                         vk::LatentKernel::kFusedF32, sp});
      kernels.push_back({std::string(sh.name) + " tile kernel" + tag, true, sh.st, sh.rk, sh.rv,
                         vk::LatentKernel::kTile, sp});
    }
  }
  const int half = kDh / 2;
  for (int T : contexts) {
    // RoPE table for T positions, q, B^K (f16) per group.
    std::vector<float> table((size_t)2 * T * half);
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < half; ++i) {
        const float inv = 1.0f / (float)std::pow(10000.0, (double)(2 * i) / kDh);
        table[(size_t)t * half + i] = (float)std::cos((double)((float)t * inv));
        table[(size_t)T * half + (size_t)t * half + i] = (float)std::sin((double)((float)t * inv));
      }
    std::printf("\n## T = %d\n\n| kernel | time µs | MB moved | GB/s |%s\n|---|---:|---:|---:|%s\n",
                T, gpu_time ? " GPU µs | GPU GB/s |" : "", gpu_time ? "---:|---:|" : "");
    std::vector<std::string> breakdowns;
    for (const Kernel& k : kernels) {
      if (k.kind == vk::LatentKernel::kTile && T > 16384) continue;
      auto run_one = [&]() -> Status {
        PALU_ASSIGN_OR_RETURN(vk::VulkanBuffer tb,
                              ctx->alloc(table.size() * 4, vk::MemoryKind::kDevice, "rope"));
        PALU_RETURN_IF_ERROR(ctx->upload(tb, 0, table.data(), table.size() * 4));
        std::vector<float> q((size_t)kH * kDh, 0.01f);
        PALU_ASSIGN_OR_RETURN(vk::VulkanBuffer qb,
                              ctx->alloc(q.size() * 4, vk::MemoryKind::kDevice, "q"));
        PALU_RETURN_IF_ERROR(ctx->upload(qb, 0, q.data(), q.size() * 4));
        const int w_max = std::max(kDh, k.rv);
        const int splits = k.splits > 0 ? k.splits : std::clamp(T / 512, 8, 64);
        PALU_ASSIGN_OR_RETURN(vk::VulkanBuffer part,
                              ctx->alloc(vk::decode_partial_words(kH, splits, w_max) * 4,
                                         vk::MemoryKind::kDevice, "partials"));
        const int out_w = k.latent ? kH * k.rv : kH * kDh;
        PALU_ASSIGN_OR_RETURN(vk::VulkanBuffer out,
                              ctx->alloc((size_t)out_w * 4, vk::MemoryKind::kDevice, "out"));
        PALU_ASSIGN_OR_RETURN(vk::VulkanBuffer fold,
                              ctx->alloc(vk::latent_fold_words(kH, kDh, std::max(k.rk, 1)) * 4,
                                         vk::MemoryKind::kDevice, "folded queries"));
        vk::DecodeArgs a;
        a.q = qb.address();
        a.fold = fold.address();
        a.rope = tb.address();
        a.sin_off = (uint32_t)((size_t)T * half);
        a.part = part.address();
        a.out = out.address();
        a.T = T;
        a.H = kH;
        a.H_kv = kHkv;
        a.dh = kDh;
        a.splits = splits;
        a.w_max = w_max;
        std::vector<vk::VulkanBuffer> bufs;
        std::vector<vk::LatentGroupArgs> groups;
        vk::Region kr, vr;
        double bytes = 0;
        if (!k.latent) {
          for (int kv = 0; kv < 2; ++kv) {
            vk::Region r{0, k.st, kHkv * kDh, T};
            PALU_ASSIGN_OR_RETURN(vk::VulkanBuffer b,
                                  ctx->alloc(vk::region_words(k.st, r.rank, T) * 4,
                                             vk::MemoryKind::kDevice, "full cache"));
            r.base = b.address();
            bytes += (double)vk::region_words(k.st, r.rank, T) * 4;
            PALU_RETURN_IF_ERROR(fill(ctx, r, T));
            bufs.push_back(std::move(b));
            (kv == 0 ? kr : vr) = r;
          }
        } else {
          std::vector<uint16_t> bk((size_t)kS * kDh * k.rk, palu::f32_to_f16(0.01f));
          for (int g = 0; g < kG; ++g) {
            vk::LatentGroupArgs ga;
            for (int kv = 0; kv < 2; ++kv) {
              vk::Region r{0, k.st, kv == 0 ? k.rk : k.rv, T};
              PALU_ASSIGN_OR_RETURN(vk::VulkanBuffer b,
                                    ctx->alloc(vk::region_words(k.st, r.rank, T) * 4,
                                               vk::MemoryKind::kDevice, "latent cache"));
              r.base = b.address();
              bytes += (double)vk::region_words(k.st, r.rank, T) * 4;
              PALU_RETURN_IF_ERROR(fill(ctx, r, T));
              bufs.push_back(std::move(b));
              (kv == 0 ? ga.zk : ga.zv) = r;
            }
            PALU_ASSIGN_OR_RETURN(vk::VulkanBuffer b,
                                  ctx->alloc(bk.size() * 2, vk::MemoryKind::kDevice, "B^K"));
            PALU_RETURN_IF_ERROR(ctx->upload(b, 0, bk.data(), bk.size() * 2));
            bytes += (double)bk.size() * 2;
            ga.bk = b.address();
            bufs.push_back(std::move(b));
            ga.wt = vk::WeightType::kF16;
            ga.group = g;
            ga.s = kS;
            ga.out_col = g * kS * k.rv;
            groups.push_back(ga);
          }
        }
        auto record_calls = [&](vk::Recorder& rec) -> Status {
          for (int i = 0; i < reps; ++i) {
            if (!k.latent) {
              PALU_RETURN_IF_ERROR(vk::attention_decode_full(rec, a, kr, vr));
            } else if (k.per_group) {
              for (const auto& ga : groups)
                PALU_RETURN_IF_ERROR(vk::attention_decode_latent(rec, a, ga, k.rk, k.kind));
            } else {
              PALU_RETURN_IF_ERROR(vk::attention_decode_latent_groups(
                  rec, a, groups.data(), (int)groups.size(), k.rk, k.kind));
            }
          }
          return Status::ok();
        };
        std::vector<double> times, gpu_times;
        for (int run = 0; run <= runs; ++run) {
          const auto t0 = std::chrono::steady_clock::now();
          vk::Recorder rec(ctx);
          if (gpu_time) rec.mark("start");
          PALU_RETURN_IF_ERROR(record_calls(rec));
          if (gpu_time) rec.mark("end");
          PALU_RETURN_IF_ERROR(rec.submit("bench"));
          const double us =
              std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                  .count();
          if (run == 0) continue;  // the first run builds the pipelines
          times.push_back(us / reps);
          if (rec.marks().size() == 2) gpu_times.push_back(rec.marks()[1].ns / 1e3 / reps);
        }
        std::sort(times.begin(), times.end());
        std::sort(gpu_times.begin(), gpu_times.end());
        const double us = times[times.size() / 2];
        std::string gpu_cols;
        if (gpu_time) {
          const double g = gpu_times.empty() ? 0.0 : gpu_times[gpu_times.size() / 2];
          char buf[64];
          std::snprintf(buf, sizeof buf, " %.1f | %.0f |", g, g > 0 ? bytes / g / 1e3 : 0.0);
          gpu_cols = buf;
          // Per shader: the device time between a dispatch's mark and the one before it, summed
          // per shader name, ÷ reps (dispatches per call in parentheses).
          vk::Recorder rec(ctx);
          rec.mark_dispatches(true);
          PALU_RETURN_IF_ERROR(record_calls(rec));
          PALU_RETURN_IF_ERROR(rec.submit("bench (per dispatch)"));
          const auto& m = rec.marks();
          std::vector<std::pair<std::string, std::pair<double, int>>> per;
          for (size_t i = 1; i < m.size(); ++i) {
            auto it = std::find_if(per.begin(), per.end(),
                                   [&](const auto& p) { return p.first == m[i].label; });
            if (it == per.end()) it = per.insert(per.end(), {m[i].label, {0.0, 0}});
            it->second.first += (m[i].ns - m[i - 1].ns) / 1e3;
            it->second.second += 1;
          }
          char head[64] = "-";
          if (!m.empty()) std::snprintf(head, sizeof head, "%.1f", m.back().ns / 1e3 / reps);
          std::string line = "# " + std::to_string(T) + " " + k.name +
                             ", GPU µs per call with a timestamp after every dispatch: " + head;
          for (const auto& [name, v] : per) {
            char b2[160];
            std::snprintf(b2, sizeof b2, "; %s %.1f (%.0f×)", name.c_str(), v.first / reps,
                          (double)v.second / reps);
            line += b2;
          }
          breakdowns.push_back(line);
        }
        std::printf("| %s | %.1f | %.1f | %.0f |%s\n", k.name.c_str(), us, bytes / 1e6,
                    bytes / us / 1e3, gpu_cols.c_str());
        return Status::ok();
      };
      Status st = run_one();
      if (!st.is_ok()) std::printf("| %s | %s | | |\n", k.name.c_str(), st.to_string().c_str());
      std::fflush(stdout);
    }
    if (!breakdowns.empty()) std::printf("\n");
    for (const auto& l : breakdowns) std::printf("%s\n", l.c_str());
  }
  return 0;
}
