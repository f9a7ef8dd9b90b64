// Shared bits of the command-line tools: model loading with a progress line on stderr,
// timing, and error reporting (tools print "palu-<tool>: error: <message>" and exit 1).
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "backends/base/status.h"
#include "model/llama_model.h"

namespace palu::tools {

inline double now_seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

// Prints "<tool>: error: <message>" to stderr and returns 1 (the exit code for bad input).
inline int fail(const char* tool, const Status& st) {
  std::fprintf(stderr, "%s: error: %s\n", tool, st.message().c_str());
  return 1;
}

// Loads a model, drawing a progress line on stderr when `show_progress`.
inline Result<model::LoadedModel> load_with_progress(const std::string& path, bool show_progress) {
  const double t0 = now_seconds();
  model::LoadProgress progress;
  if (show_progress && isatty(2)) {
    progress = [](int done, int total) {
      std::fprintf(stderr, "\rloading weights: %d/%d tensors", done, total);
      if (done == total) std::fprintf(stderr, "\n");
    };
  }
  auto loaded = model::load_model(path, progress);
  if (loaded.is_ok() && show_progress) {
    const auto& m = *loaded.value().model;
    std::fprintf(stderr, "model: %s (%s)\n  %s\n  %.1f M parameters, %.1f MiB as float32, tokenizer %s (%d pieces), %.2f s\n",
                 path.c_str(), loaded.value().format.c_str(), m.config().summary().c_str(),
                 m.parameter_count() / 1e6, m.weight_bytes() / 1048576.0, loaded.value().tokenizer->kind().c_str(),
                 loaded.value().tokenizer->vocab_size(), now_seconds() - t0);
  }
  return loaded;
}

}  // namespace palu::tools
