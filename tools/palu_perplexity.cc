// palu-perplexity: perplexity of a model on a text file.
//
//   palu-perplexity --model PATH --file TEXT --ctx N [--scoring hf|llamacpp] [--json]
//                   [--max-windows N] [--threads N] [--decode-all] [--backend cpu|cuda|vulkan] [--device N]
//                   [--kv auto|latent|full|dense|sim] [--kv-bits B] [--kv-window N] [--kv-dtype T]
//
// Progress goes to stderr; with --json the last line of stdout is
// {"ppl": …, "tokens": …, "windows": …, "seconds": …}.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>

#include "backends/cpu/gemm.h"
#include "tools/perplexity.h"
#include "tools/kv_options.h"
#include "tools/tool_common.h"

using namespace palu;

int main(int argc, char** argv) {
  CLI::App app{"palu-perplexity: perplexity of a model on a text file"};
  std::string model_path, file, scoring = "hf";
  int ctx = 512, threads = 0, max_windows = 0;
  bool json = false, quiet = false, decode_all = false;
  app.add_option("--model,-m", model_path, "model directory (Hugging Face) or .gguf file")->required();
  app.add_option("--file,-f", file, "text file, e.g. wiki.test.raw")->required();
  app.add_option("--ctx,-c", ctx, "window length in tokens")->check(CLI::Range(2, 1 << 24));
  app.add_option("--scoring", scoring, "hf (HF protocol) or llamacpp (llama.cpp's perplexity)")
      ->check(CLI::IsMember({"hf", "llamacpp"}));
  app.add_option("--max-windows", max_windows, "stop after this many windows (0 = all)")->check(CLI::Range(0, 1 << 30));
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 4096));
  app.add_flag("--decode-all", decode_all, "feed each window token by token (decode steps) instead of one prefill");
  app.add_flag("--json", json, "print a JSON summary as the last line of stdout");
  app.add_flag("--quiet,-q", quiet, "no progress on stderr");
  tools::KvOptions kv;
  kv.add_to(app);
  tools::BackendOptions be;
  be.add_to(app);
  CLI11_PARSE(app, argc, argv);

  backends::cpu::set_num_threads(threads);
  auto text = model::read_text_file(file);
  if (!text.is_ok()) {
    // read_text_file caps at 64 MiB; big corpora are read directly.
    if (text.status().code() != StatusCode::kInvalidArgument) return tools::fail("palu-perplexity", text.status());
    auto mapped = model::MappedFile::open(file);
    if (!mapped.is_ok()) return tools::fail("palu-perplexity", mapped.status());
    text = std::string((const char*)mapped.value()->data(), mapped.value()->size());
  }
  auto loaded = kv.load(model_path, !quiet);
  if (!loaded.is_ok()) return tools::fail("palu-perplexity", loaded.status());

  tools::PerplexityOptions opt;
  opt.ctx = ctx;
  opt.scoring = scoring == "hf" ? tools::Scoring::kHf : tools::Scoring::kLlamaCpp;
  opt.max_windows = max_windows;
  opt.cache = kv.cache_options(*loaded.value().model);
  opt.decode_all = decode_all;
  std::unique_ptr<model::DeviceModel> device;
  if (Status st = be.validate(); !st.is_ok()) return tools::fail("palu-perplexity", st);
  if (be.on_device()) {
    auto dm = be.make(*loaded.value().model, kv);
    if (!dm.is_ok()) return tools::fail("palu-perplexity", dm.status());
    device = std::move(dm.value());
    opt.device = device.get();
    if (!quiet) std::fprintf(stderr, "device: %s\n", device->describe().c_str());
  }
  const double t0 = tools::now_seconds();
  if (!quiet) {
    const bool tty = isatty(2);
    opt.progress = [t0, tty](int done, int total, double ppl) {
      const double el = tools::now_seconds() - t0;
      // On a terminal, one line redrawn; in logs, a line every ~5% of the windows.
      if (!tty && done != total && done % std::max(1, total / 20) != 0) return;
      std::fprintf(stderr, tty ? "\r[%d/%d] ppl %.4f  %.1f s elapsed, ~%.0f s left   " : "[%d/%d] ppl %.4f  %.1f s elapsed, ~%.0f s left\n",
                   done, total, ppl, el, el / done * (total - done));
      if (tty && done == total) std::fprintf(stderr, "\n");
    };
  }
  auto r = tools::evaluate_perplexity(*loaded.value().model, *loaded.value().tokenizer, text.value(), opt);
  if (!r.is_ok()) return tools::fail("palu-perplexity", r.status());
  const auto& v = r.value();
  std::printf("perplexity (%s scoring, ctx %d%s): %.4f over %lld scored tokens in %d windows (text: %lld tokens), %.1f s\n"
              "kv cache: %s\n",
              scoring.c_str(), ctx, decode_all ? ", token by token" : "", v.ppl, (long long)v.scored_tokens, v.windows,
              (long long)v.text_tokens, v.seconds, v.kv.c_str());
  if (json) {
    std::printf("{\"ppl\": %.6f, \"tokens\": %lld, \"scored_tokens\": %lld, \"windows\": %d, \"seconds\": %.3f, "
                "\"ctx\": %d, \"scoring\": \"%s\", \"kv\": \"%s\", \"kv_bytes_per_token\": %llu, \"decode_all\": %s, "
                "\"backend\": \"%s\"}\n",
                v.ppl, (long long)v.text_tokens, (long long)v.scored_tokens, v.windows, v.seconds, ctx, scoring.c_str(),
                kv.resolved(*loaded.value().model).c_str(), (unsigned long long)v.kv_bytes_per_token,
                decode_all ? "true" : "false", be.backend.c_str());
  }
  return 0;
}
