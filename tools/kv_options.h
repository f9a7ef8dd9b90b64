// The KV-path flags shared by palu-generate and palu-perplexity, and the model loading that
// honours them.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "tools/tool_common.h"

namespace palu::tools {

struct KvOptions {
  std::string kv = "auto";  // auto | sim
  int bits = 0;             // latent fake-quantization bits; 0 = float latents

  void add_to(CLI::App& app) {
    app.add_option("--kv", kv, "KV path: auto (full cache; compressed models: keys/values rebuilt from latents), "
                               "sim (compressed models only: the latent simulation)")
        ->check(CLI::IsMember({"auto", "sim"}));
    app.add_option("--kv-bits", bits, "compressed models: quantize latents per token per group to B bits (2, 3, 4, 8)")
        ->check(CLI::IsMember({0, 2, 3, 4, 8}));
  }

  // Loads the model with these settings; --kv sim on an uncompressed model is an error.
  Result<model::LoadedModel> load(const std::string& path, bool show_progress) const {
    auto loaded = load_with_progress(path, show_progress, bits);
    if (loaded.is_ok() && kv == "sim" && !loaded.value().model->is_compressed()) {
      return invalid_argument("--kv sim needs a compressed model (made by palu-compress)");
    }
    return loaded;
  }
};

}  // namespace palu::tools
