// palud: the palu session daemon.
//
//   palud [--config FILE] [--socket PATH] [--model PATH]... [--backend auto|cpu|cuda|vulkan]
//         [--gpu-budget SIZE] [--host-budget SIZE] [--disk-dir DIR] [--disk-budget SIZE]
//         [--state-dir DIR] [--kv-bits B] [--kv-window N] [--threads N] [--no-restore]
//
// Sizes take units (2GiB, 512MiB). Defaults fit a laptop and are printed at start-up. The
// config file has the same keys (`host-budget = "2GiB"`, `model = ["/models/a", "/models/b"]`).
// SIGTERM / SIGINT: stop accepting, cancel streams, save every session, exit 0. Exit codes:
// 0 clean stop, 1 bad flags or start-up failure.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>

#include "backends/cpu/gemm.h"
#include "backends/registry.h"
#include "runtime/device_models.h"
#include "daemon/config.h"
#include "daemon/engine.h"
#include "daemon/log.h"
#include "daemon/server.h"
#include "sdk/proto/framing.h"

using namespace palu;
using namespace palu::daemon;

namespace {

int fail(const std::string& what) {
  log_event("error", "startup_failed", {{"error", what}});
  std::fprintf(stderr, "palud: error: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palud: the palu session daemon (docs/api.md)"};
  DaemonConfig c;
  std::string socket_mode = "0600";
  app.set_config("--config", "", "config file (INI/TOML) with the same keys as the flags");
  app.add_option("--socket", c.socket_path, "Unix socket (default $XDG_RUNTIME_DIR/palu/palud.sock)");
  app.add_option("--socket-mode", socket_mode, "socket file mode, octal (default 0600: only this user)");
  app.add_option("--model,-m", c.models, "model to load at start (repeatable): HF dir, compressed dir or .gguf");
  app.add_option("--backend", c.backend, "compute backend")->check(CLI::IsMember({"auto", "cpu", "cuda", "vulkan"}));
  app.add_option("--gpu-budget", c.gpu_budget, "GPU memory for KV caches (e.g. 4GiB)");
  app.add_option("--host-budget", c.host_budget, "host memory for KV caches (default: half of the available memory)");
  app.add_option("--disk-dir", c.disk_dir, "where idle sessions are moved when memory runs short");
  app.add_option("--disk-budget", c.disk_budget, "disk space for moved sessions (default: a quarter of the free space)");
  app.add_option("--state-dir", c.state_dir, "saved sessions (default $XDG_STATE_HOME/palu)");
  app.add_option("--kv-bits", c.kv_bits, "compressed models: latent bits of the sessions' cache by default (0 = f16; a session may ask for another)")
      ->check(CLI::IsMember({0, 2, 3, 4, 8}));
  app.add_option("--kv-window", c.kv_window, "with --kv-bits: newest N tokens also kept in f16")->check(CLI::Range(0, 1 << 20));
  app.add_option("--threads", c.threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 4096));
  app.add_option("--max-queue", c.max_queue, "queued requests before BUSY")->check(CLI::Range(1, 1 << 20));
  app.add_option("--max-frame", c.max_frame, "largest request frame / JSON line (e.g. 16MiB)");
  bool no_restore = false;
  app.add_flag("--no-restore", no_restore, "do not restore saved sessions at start");
  app.add_option("--log-format", c.log_format, "text (logfmt) or json")->check(CLI::IsMember({"text", "json"}));
  CLI11_PARSE(app, argc, argv);
  c.restore = !no_restore;
  set_log_format(c.log_format == "json" ? LogFormat::kJson : LogFormat::kText);

  // The GPU tier: CUDA (asked for, or auto when this build has it and a device is there).
  // Vulkan runs models in palu-generate / palu-perplexity, but its sequences cannot move between
  // tiers yet, so palud does not use it.
  if (c.backend == "vulkan") {
    return fail("--backend vulkan: palud's GPU tier runs on CUDA only (Vulkan sequences cannot be moved between "
                "the GPU and host tiers yet); use --backend cuda, cpu or auto");
  }
  const backends::DeviceInfo* gpu = nullptr;
  backends::DeviceList devices;
  if (c.backend == "cuda" || c.backend == "auto") {
    const auto built = runtime::device_model_backends();
    const bool has_cuda = std::find(built.begin(), built.end(), "cuda") != built.end();
    if (has_cuda) devices = backends::enumerate_devices(backends::DeviceKind::kCuda);
    for (const auto& d : devices.devices) {
      if (d->info().kind == backends::DeviceKind::kCuda && gpu == nullptr) gpu = &d->info();
    }
    if (c.backend == "cuda" && gpu == nullptr) {
      std::string why = has_cuda ? "no CUDA device found" : "this build has no CUDA backend";
      for (const std::string& l : devices.log) why += "; " + l;
      return fail("--backend cuda: " + why);
    }
  }
  auto budgets = resolve(c);
  if (!budgets.is_ok()) return fail(budgets.status().message());
  const ResolvedBudgets& b = budgets.value();
  auto max_frame = parse_size(c.max_frame);
  if (!max_frame.is_ok()) return fail("--max-frame: " + max_frame.status().message());
  if (max_frame.value() < 1024 || max_frame.value() > (1u << 30)) return fail("--max-frame must be in 1KiB..1GiB");
  char* end = nullptr;
  const long mode = std::strtol(socket_mode.c_str(), &end, 8);
  if (socket_mode.empty() || *end != '\0' || mode < 0 || mode > 0777) {
    return fail("--socket-mode '" + socket_mode + "' is not an octal file mode like 0600");
  }
  for (const std::string& dir : {b.state_dir, b.disk_dir}) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return fail("cannot create " + dir + ": " + ec.message());
  }
  backends::cpu::set_num_threads(c.threads);
  for (const std::string& note : b.notes) log_event("info", "config", {{"note", note}});

  EngineOptions eo;
  eo.host_budget_bytes = b.host_bytes;
  eo.disk_dir = b.disk_dir;
  eo.disk_budget_bytes = b.disk_bytes;
  eo.state_dir = b.state_dir;
  eo.max_queue = c.max_queue;
  if (gpu != nullptr) {
    eo.gpu_budget_bytes = b.gpu_bytes > 0 ? b.gpu_bytes : gpu->memory_bytes / 2;
    eo.gpu_name = "cuda:" + std::to_string(gpu->index) + " " + gpu->name;
    const int index = gpu->index;
    eo.make_device = [index](const model::LlamaModel& m, const model::CacheOptions& co) {
      model::DeviceModelOptions o;
      o.device_index = index;
      o.cache = co;
      return runtime::make_device_model(m, backends::DeviceKind::kCuda, o);
    };
    log_event("info", "gpu_tier",
              {{"device", eo.gpu_name},
               {"budget", format_size(eo.gpu_budget_bytes) +
                              (b.gpu_bytes > 0 ? " (--gpu-budget)" : " (default: half of the device's memory)")}});
  } else {
    log_event("info", "gpu_tier", {{"device", "none"}, {"reason", c.backend == "cpu" ? "--backend cpu" : "no CUDA device"}});
  }
  auto engine_r = Engine::create(eo);
  if (!engine_r.is_ok()) return fail(engine_r.status().message());
  std::unique_ptr<Engine> engine = std::move(engine_r).value();
  palu::api::v1::CacheSettings cache;
  cache.set_latent_bits((uint32_t)c.kv_bits);
  cache.set_window_tokens((uint32_t)c.kv_window);
  for (const std::string& path : c.models) {
    Status st = engine->load_model("", path, cache);
    if (!st.is_ok()) return fail("--model " + path + ": " + st.message());
    log_event("info", "model_loaded", {{"path", path}});
  }
  if (c.restore) {
    auto n = engine->restore_saved_sessions();
    if (n.is_ok()) log_event("info", "sessions_restored", {{"count", std::to_string(n.value())}, {"dir", b.state_dir}});
    else log_event("warn", "sessions_not_restored", {{"error", n.status().message()}});
  }

  // Signals go to the main thread only (blocked before any thread starts).
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  ServerOptions so;
  so.socket_path = b.socket_path;
  so.max_frame_bytes = (uint32_t)max_frame.value();
  so.daemon_version = eo.daemon_version;
  so.socket_mode = (mode_t)mode;
  auto server_r = Server::create(so, engine.get());
  if (!server_r.is_ok()) return fail(server_r.status().message());
  std::unique_ptr<Server> server = std::move(server_r).value();
  engine->start();
  server->start_in_thread();
  log_event("info", "listening", {{"socket", b.socket_path}, {"protocol", std::to_string(palu::api::kProtocolVersion)}});

  int sig = 0;
  sigwait(&set, &sig);
  log_event("info", "stopping", {{"signal", std::to_string(sig)}});
  server->stop();
  engine->stop(/*save_all=*/true);
  log_event("info", "stopped", {{"state_dir", b.state_dir}});
  return 0;
}
