// palu-generate: stream a continuation of a prompt.
//
//   palu-generate --model PATH --prompt TEXT --max-tokens N [--temperature T] [--top-p P]
//                 [--top-k K] [--seed S] [--ids] [--ctx N] [--threads N] [--no-bos] [--decode-all] [--ignore-eos]
//                 [--kv auto|latent|full|dense|sim] [--kv-bits B] [--kv-window N] [--kv-dtype T]
//
// The continuation is written to stdout as it is produced; timings go to stderr. With --ids
// the generated token ids are printed space-separated on one line at the end.
#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <cstdio>

#include "backends/cpu/gemm.h"
#include "model/sampler.h"
#include "tools/kv_options.h"
#include "tools/tool_common.h"

using namespace palu;

int main(int argc, char** argv) {
  CLI::App app{"palu-generate: generate text from a Llama-family model"};
  std::string model_path, prompt;
  int max_tokens = 128, ctx = 0, threads = 0, top_k = 40;
  float temperature = 0.8f, top_p = 0.95f;
  uint64_t seed = 0;
  bool print_ids = false, no_bos = false, decode_all = false, quiet = false, ignore_eos = false;
  app.add_option("--model,-m", model_path, "model directory (Hugging Face) or .gguf file")->required();
  app.add_option("--prompt,-p", prompt, "prompt text (may be empty: start from BOS)");
  app.add_option("--max-tokens,-n", max_tokens, "tokens to generate")->check(CLI::Range(0, 1 << 24));
  app.add_option("--temperature,-t", temperature, "0 = greedy")->check(CLI::Range(0.0, 100.0));
  app.add_option("--top-p", top_p, "nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  app.add_option("--top-k", top_k, "sample among the k most likely (0 = all)")->check(CLI::Range(0, 1 << 24));
  app.add_option("--seed,-s", seed, "random seed");
  app.add_option("--ctx,-c", ctx, "context length (default: prompt + max tokens, capped by the model)")
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 4096));
  app.add_flag("--ids", print_ids, "print the generated token ids on one line at the end");
  app.add_flag("--no-bos", no_bos, "do not put BOS before the prompt");
  app.add_flag("--ignore-eos", ignore_eos, "keep generating after the end-of-sequence token");
  app.add_flag("--decode-all", decode_all, "feed the prompt token by token instead of one prefill");
  app.add_flag("--quiet,-q", quiet, "no loading progress or timings on stderr");
  tools::KvOptions kv;
  kv.add_to(app);
  tools::BackendOptions be;
  be.add_to(app);
  CLI11_PARSE(app, argc, argv);

  backends::cpu::set_num_threads(threads);
  auto loaded = kv.load(model_path, !quiet);
  if (!loaded.is_ok()) return tools::fail("palu-generate", loaded.status());
  const model::LlamaModel& m = *loaded.value().model;
  const model::Tokenizer& tok = *loaded.value().tokenizer;

  auto ids_r = tok.encode(prompt, !no_bos);
  if (!ids_r.is_ok()) return tools::fail("palu-generate", ids_r.status());
  std::vector<int32_t> ids = std::move(ids_r).value();
  if (ids.empty()) {
    return tools::fail("palu-generate", invalid_argument("the prompt is empty and --no-bos leaves nothing to start from"));
  }
  const int model_ctx = m.config().max_position_embeddings > 0 ? m.config().max_position_embeddings : (1 << 20);
  if (ctx == 0) ctx = std::min<int>((int)ids.size() + max_tokens, model_ctx);
  if ((int)ids.size() > ctx) {
    return tools::fail("palu-generate", invalid_argument("the prompt has " + std::to_string(ids.size()) +
                                                         " tokens but the context is " + std::to_string(ctx)));
  }
  // The sequence: the CPU KvSession, or one on a device (--backend).
  std::optional<tools::KvSession> cpu_session;
  std::unique_ptr<model::DeviceModel> device;
  std::unique_ptr<model::DeviceSequence> dseq;
  if (Status st = be.validate(); !st.is_ok()) return tools::fail("palu-generate", st);
  if (!be.on_device()) {
    auto session_r = kv.session(m, ctx);
    if (!session_r.is_ok()) return tools::fail("palu-generate", session_r.status());
    cpu_session.emplace(std::move(session_r).value());
    if (!quiet) std::fprintf(stderr, "kv cache: %s\n", cpu_session->describe().c_str());
  } else {
    auto dm = be.make(m, kv);
    if (!dm.is_ok()) return tools::fail("palu-generate", dm.status());
    device = std::move(dm).value();
    auto sq = device->new_sequence(ctx);
    if (!sq.is_ok()) return tools::fail("palu-generate", sq.status());
    dseq = std::move(sq).value();
    if (!quiet) std::fprintf(stderr, "device: %s\n", device->describe().c_str());
  }
  auto step = [&](const int32_t* t, int n, model::LogitsMode mode, float* out) {
    return dseq ? dseq->forward(t, n, mode, out) : cpu_session->step(t, n, mode, out);
  };
  auto held = [&] { return dseq ? dseq->size() : cpu_session->size(); };
  auto capacity = [&] { return dseq ? dseq->capacity() : cpu_session->capacity(); };
  auto held_bytes = [&]() -> double { return dseq ? (double)dseq->cache_bytes() : (double)cpu_session->bytes(); };
  model::SamplerParams sp;
  sp.temperature = temperature;
  sp.top_p = top_p;
  sp.top_k = top_k;
  sp.seed = seed;
  auto sampler = model::Sampler::create(sp);
  if (!sampler.is_ok()) return tools::fail("palu-generate", sampler.status());

  const int V = m.config().vocab_size;
  std::vector<float> logits(V);
  const double t0 = tools::now_seconds();
  Status st;
  if (decode_all) {
    for (int32_t id : ids) {
      st = step(&id, 1, model::LogitsMode::kLast, logits.data());
      if (!st.is_ok()) break;
    }
  } else {
    st = step(ids.data(), (int)ids.size(), model::LogitsMode::kLast, logits.data());
  }
  if (!st.is_ok()) return tools::fail("palu-generate", st);
  const double t1 = tools::now_seconds();

  std::vector<int32_t> out;
  model::Utf8Streamer stream;
  int32_t prev = ids.back();
  const int32_t eos = tok.eos_id() >= 0 ? tok.eos_id() : m.config().eos_id;
  std::string stop_reason = "max tokens";
  for (int i = 0; i < max_tokens; ++i) {
    const int32_t next = sampler.value().sample(logits.data(), V);
    if (next == eos && !ignore_eos) {
      stop_reason = "end of sequence";
      break;
    }
    out.push_back(next);
    const std::string text = stream.push(tok.token_bytes(next, prev));
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    prev = next;
    if (i + 1 == max_tokens) break;
    if (held() >= capacity()) {
      stop_reason = "context full";
      break;
    }
    st = step(&next, 1, model::LogitsMode::kLast, logits.data());
    if (!st.is_ok()) return tools::fail("palu-generate", st);
  }
  const std::string rest = stream.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  if (print_ids) {
    for (size_t i = 0; i < out.size(); ++i) std::printf(i ? " %d" : "%d", out[i]);
    std::printf("\n");
  }
  std::fflush(stdout);
  const double t2 = tools::now_seconds();
  if (!quiet) {
    std::fprintf(stderr, "\nprompt: %zu tokens in %.3f s (%.1f tok/s); generated: %zu tokens in %.3f s (%.1f tok/s); stop: %s; "
                 "kv cache %.1f KiB for %d tokens\n",
                 ids.size(), t1 - t0, ids.size() / std::max(t1 - t0, 1e-9), out.size(), t2 - t1,
                 out.size() / std::max(t2 - t1, 1e-9), stop_reason.c_str(), held_bytes() / 1024.0, held());
  }
  return 0;
}
