// palud's settings: command-line flags, the same keys in a config file (CLI11's INI/TOML
// reader: `host-budget = "2GiB"`), and the defaults that fit a laptop.
//
// Sizes accept units: B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB (K = KiB = 1024; KB = 1000),
// or a plain byte count. Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backends/base/status.h"

namespace palu::daemon {

// "2GiB" → 2147483648. INVALID_ARGUMENT naming the text for anything else (negative,
// fractional bytes, unknown unit, overflow).
Result<uint64_t> parse_size(const std::string& text);
// 2147483648 → "2.00 GiB".
std::string format_size(uint64_t bytes);

struct DaemonConfig {
  std::string socket_path;                // default: $XDG_RUNTIME_DIR/palu/palud.sock
  std::vector<std::string> models;        // loaded at start
  std::string backend = "auto";           // auto | cpu | cuda | vulkan
  std::string gpu_budget, host_budget;    // sizes; "" = default
  std::string disk_dir, disk_budget;      // "" = default
  std::string state_dir;                  // saved sessions; default $XDG_STATE_HOME/palu
  int kv_bits = 0;                        // latent bits of the models' caches (0 = f16)
  int kv_window = 0;
  int threads = 0;
  int max_queue = 1024;
  std::string max_frame = "16MiB";
  bool restore = true;                    // restore saved sessions at start
  std::string log_format = "text";        // text | json
};

// The resolved numbers, with the reason for each default (printed at start-up).
struct ResolvedBudgets {
  uint64_t host_bytes = 0, disk_bytes = 0, gpu_bytes = 0;
  std::string socket_path, disk_dir, state_dir;
  std::vector<std::string> notes;  // e.g. "host budget: 50% of 15.2 GiB available"
};
Result<ResolvedBudgets> resolve(const DaemonConfig& config);

}  // namespace palu::daemon
