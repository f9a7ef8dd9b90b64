// Shared bits of the command-line tools: model loading with a progress line on stderr,
// timing, and error reporting (tools print "palu-<tool>: error: <message>" and exit 1).
#pragma once

#include <unistd.h>

#include <algorithm>
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
inline Result<model::LoadedModel> load_with_progress(const std::string& path, bool show_progress, int latent_bits = 0) {
  const double t0 = now_seconds();
  model::LoadProgress progress;
  if (show_progress && isatty(2)) {
    progress = [](int done, int total) {
      std::fprintf(stderr, "\rloading weights: %d/%d tensors", done, total);
      if (done == total) std::fprintf(stderr, "\n");
    };
  }
  model::LoadOptions options;
  options.progress = progress;
  options.latent_bits = latent_bits;
  auto loaded = model::load_model(path, options);
  if (loaded.is_ok() && show_progress) {
    const auto& m = *loaded.value().model;
    std::fprintf(stderr, "model: %s (%s)\n  %s\n  %.1f M parameters, %.1f MiB as float32, tokenizer %s (%d pieces), %.2f s\n",
                 path.c_str(), loaded.value().format.c_str(), m.config().summary().c_str(),
                 m.parameter_count() / 1e6, m.weight_bytes() / 1048576.0, loaded.value().tokenizer->kind().c_str(),
                 loaded.value().tokenizer->vocab_size(), now_seconds() - t0);
    if (m.is_compressed()) {
      const auto& pm = m.palu_manifest();
      std::fprintf(stderr, "  palu: ratio %.3f, group size %d, %s%s, latents %s\n", pm.achieved_ratio, pm.group_size,
                   pm.search.c_str(), pm.hadamard ? ", hadamard" : "",
                   m.latent_bits() ? (std::to_string(m.latent_bits()) + "-bit (simulated)").c_str() : "float32");
    }
  }
  return loaded;
}

// A progress line on stderr: "label [#####     ] i/N  12.3 s, ~4 s left". Redrawn in place
// on a terminal; in a log, printed at about every 10%.
class ProgressBar {
 public:
  ProgressBar(std::string label, int total, bool enabled = true)
      : label_(std::move(label)), total_(total), enabled_(enabled), tty_(isatty(2)), t0_(now_seconds()) {}
  void update(int done) {
    if (!enabled_ || total_ <= 0) return;
    if (!tty_ && done != total_ && done % std::max(1, total_ / 10) != 0) return;
    const double el = now_seconds() - t0_;
    const int width = 24, fill = (int)((double)done / total_ * width);
    std::string bar(fill, '#');
    bar.resize(width, ' ');
    std::fprintf(stderr, tty_ ? "\r%s [%s] %d/%d  %.1f s, ~%.0f s left   " : "%s [%s] %d/%d  %.1f s, ~%.0f s left\n",
                 label_.c_str(), bar.c_str(), done, total_, el, done > 0 ? el / done * (total_ - done) : 0.0);
    if (tty_ && done == total_) std::fprintf(stderr, "\n");
  }
  double elapsed() const { return now_seconds() - t0_; }

 private:
  std::string label_;
  int total_;
  bool enabled_, tty_;
  double t0_;
};

// Peak resident set size of this process, bytes (VmHWM).
inline size_t peak_rss_bytes() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  size_t kb = 0;
  while (std::fgets(line, sizeof line, f)) {
    if (std::sscanf(line, "VmHWM: %zu kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb * 1024;
}

}  // namespace palu::tools
