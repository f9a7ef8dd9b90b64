// The KV-path flags shared by palu-generate, palu-perplexity and palu-bench, and the model
// loading and session creation that honour them.
//
//   --kv auto     compressed models: latent cache; others: paged full K/V cache (the runtime)
//   --kv latent   the paged latent cache (compressed models only)
//   --kv full     the paged full K/V cache (uncompressed models only)
//   --kv dense    the contiguous float32 reference cache; compressed models rebuild K/V from
//                 latents (with --kv-bits: latents fake-quantized) — the accuracy simulation
//   --kv sim      = dense, compressed models only
//   --kv-bits B   latent / sim: quantize latents per token per group to B bits (2, 3, 4, 8)
//   --kv-window N with --kv-bits: keep the newest N tokens in f16 as well (latent: in the cache;
//                 sim: each query sees its newest N positions unquantized)
//   --kv-dtype T  paged rows that are not quantized: f32, f16 (default) or bf16
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

#include "runtime/device_models.h"
#include "tools/kv_session.h"
#include "tools/tool_common.h"

namespace palu::tools {

struct KvOptions {
  std::string kv = "auto";
  int bits = 0;
  int window = 0;
  std::string dtype = "f16";

  void add_to(CLI::App& app) {
    app.add_option("--kv", kv,
                   "KV cache: auto (latent for compressed models, full otherwise), latent, full, dense (float32 "
                   "reference), sim (dense on a compressed model: the latent simulation)")
        ->check(CLI::IsMember({"auto", "latent", "full", "dense", "sim"}));
    app.add_option("--kv-bits", bits, "compressed models: quantize latents per token per group to B bits (2, 3, 4, 8)")
        ->check(CLI::IsMember({0, 2, 3, 4, 8}));
    app.add_option("--kv-window", window, "with --kv-bits: keep the newest N tokens in f16 too (latent cache; sim: simulated per query)")
        ->check(CLI::Range(0, 1 << 20));
    app.add_option("--kv-dtype", dtype, "paged rows that are not quantized: f32, f16 or bf16")
        ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  }

  // The mode after resolving auto for this model.
  std::string resolved(const model::LlamaModel& m) const {
    if (kv == "auto") return m.is_compressed() ? "latent" : "full";
    if (kv == "sim") return "dense";
    return kv;
  }
  // Cache options for a paged mode; nullopt for dense.
  std::optional<model::CacheOptions> cache_options(const model::LlamaModel& m) const {
    if (resolved(m) == "dense") return std::nullopt;
    model::CacheOptions o;
    o.storage = dtype == "f32" ? cache::CacheStorage::kF32
                               : dtype == "bf16" ? cache::CacheStorage::kBF16 : cache::CacheStorage::kF16;
    if (bits > 0) cache::storage_for_bits(bits, &o.storage);
    o.window_tokens = window;
    return o;
  }

  // Loads the model and checks the flags against it.
  Result<model::LoadedModel> load(const std::string& path, bool show_progress) const {
    if (window > 0 && bits == 0) return invalid_argument("--kv-window needs --kv-bits (the window keeps f16 copies of quantized rows)");
    // The simulation quantizes in the model; the paged cache quantizes in its storage.
    const bool simulate = kv == "dense" || kv == "sim";
    auto loaded = load_with_progress(path, show_progress, simulate ? bits : 0);
    if (!loaded.is_ok()) return loaded;
    if (window > 0 && simulate) {
      // The simulation of the f16 window: newest N positions of each query unquantized.
      if (Status st = loaded.value().model->set_latent_window(window); !st.is_ok()) {
        return invalid_argument("--kv-window with --kv " + kv + ": " + st.message());
      }
    }
    const model::LlamaModel& m = *loaded.value().model;
    if (bits > 0 && !m.is_compressed()) {
      return invalid_argument("--kv-bits applies to compressed models only (made by palu-compress); " + path +
                              " is not one");
    }
    if (kv == "sim" && !m.is_compressed()) return invalid_argument("--kv sim needs a compressed model (made by palu-compress)");
    if (kv == "latent" && !m.is_compressed()) return invalid_argument("--kv latent needs a compressed model (made by palu-compress)");
    if (kv == "full" && m.is_compressed()) {
      return invalid_argument("--kv full needs an uncompressed model; a compressed model caches latents (--kv latent)");
    }
    return loaded;
  }

  Result<KvSession> session(const model::LlamaModel& m, int capacity) const {
    return KvSession::create(m, capacity, cache_options(m));
  }
};

// --backend cpu|cuda|vulkan and --device N, shared by palu-generate and palu-perplexity.
// on_device(): anything but the CPU KvSession path (the default).
struct BackendOptions {
  std::string backend = "cpu";
  int device_index = 0;
  std::string weights = "auto";

  void add_to(CLI::App& app) {
    app.add_option("--backend", backend, "where the model runs: cpu (default), cuda or vulkan (paged caches only)")
        ->check(CLI::IsMember({"cpu", "cuda", "vulkan"}));
    app.add_option("--device", device_index, "device index among the backend's devices")->check(CLI::Range(0, 1024));
    app.add_option("--weights", weights,
                   "weight type on the device: auto (f16 on GPUs), f16, or f32 (the CPU's numbers; vulkan)")
        ->check(CLI::IsMember({"auto", "f16", "f32"}));
  }
  bool on_device() const { return backend != "cpu" || device_index != 0; }
  // The CPU reference computes with f32 weights only.
  Status validate() const {
    if (!on_device() && weights == "f16") {
      return invalid_argument("--weights f16 needs --backend cuda or vulkan (the CPU reference uses f32 weights)");
    }
    return Status::ok();
  }

  // The device model for `m` with the paged cache `kv` asks for (--kv dense/sim is refused).
  Result<std::unique_ptr<model::DeviceModel>> make(const model::LlamaModel& m, const KvOptions& kv) const {
    const auto cache = kv.cache_options(m);
    if (!cache) {
      return invalid_argument("--backend " + backend + " runs the paged cache; --kv dense/sim is the CPU reference "
                              "only (use --kv auto, latent or full)");
    }
    PALU_ASSIGN_OR_RETURN(backends::DeviceKind kind, runtime::parse_backend(backend));
    model::DeviceModelOptions o;
    o.device_index = device_index;
    o.cache = *cache;
    o.weights = weights == "f32"   ? model::DeviceModelOptions::Weights::kF32
                : weights == "f16" ? model::DeviceModelOptions::Weights::kF16
                                   : model::DeviceModelOptions::Weights::kAuto;
    return runtime::make_device_model(m, kind, o);
  }
};

}  // namespace palu::tools
