#include "daemon/config.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace palu::daemon {

Result<uint64_t> parse_size(const std::string& text) {
  const std::string what = "size '" + text + "'";
  size_t i = 0;
  while (i < text.size() && std::isspace((unsigned char)text[i])) ++i;
  const size_t num_begin = i;
  bool dot = false;
  while (i < text.size() && (std::isdigit((unsigned char)text[i]) || (text[i] == '.' && !dot))) {
    dot = dot || text[i] == '.';
    ++i;
  }
  if (i == num_begin) return invalid_argument(what + " must start with a number (e.g. 512MiB, 2GiB, 1073741824)");
  const std::string num = text.substr(num_begin, i - num_begin);
  while (i < text.size() && std::isspace((unsigned char)text[i])) ++i;
  std::string unit = text.substr(i);
  while (!unit.empty() && std::isspace((unsigned char)unit.back())) unit.pop_back();
  for (char& c : unit) c = (char)std::toupper((unsigned char)c);
  double mult;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KIB") mult = 1024.0;
  else if (unit == "KB") mult = 1e3;
  else if (unit == "M" || unit == "MIB") mult = 1048576.0;
  else if (unit == "MB") mult = 1e6;
  else if (unit == "G" || unit == "GIB") mult = 1073741824.0;
  else if (unit == "GB") mult = 1e9;
  else if (unit == "T" || unit == "TIB") mult = 1099511627776.0;
  else if (unit == "TB") mult = 1e12;
  else return invalid_argument(what + ": unknown unit '" + text.substr(i) + "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
  const double v = std::strtod(num.c_str(), nullptr) * mult;
  if (!std::isfinite(v) || v >= 1.8e19) return invalid_argument(what + " is too large");
  if (mult == 1 && dot) return invalid_argument(what + ": a byte count must be a whole number");
  return (uint64_t)std::llround(v);
}

std::string format_size(uint64_t b) {
  char buf[64];
  if (b >= (1ull << 40)) std::snprintf(buf, sizeof buf, "%.2f TiB", b / 1099511627776.0);
  else if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", b / 1073741824.0);
  else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", b / 1048576.0);
  else if (b >= 1024) std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  else std::snprintf(buf, sizeof buf, "%llu B", (unsigned long long)b);
  return buf;
}

namespace {

uint64_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kb;
  std::string unit;
  while (f >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

}  // namespace

Result<ResolvedBudgets> resolve(const DaemonConfig& c) {
  ResolvedBudgets r;
  const std::string home = env_or("HOME", "/tmp");
  const std::string runtime = env_or("XDG_RUNTIME_DIR", "/tmp/palu-" + std::to_string(::getuid()));
  const std::string state = env_or("XDG_STATE_HOME", home + "/.local/state");
  r.socket_path = c.socket_path.empty() ? runtime + "/palu/palud.sock" : c.socket_path;
  if (r.socket_path.size() > 107) {
    return invalid_argument("socket path '" + r.socket_path + "' is " + std::to_string(r.socket_path.size()) +
                            " bytes; Unix sockets allow at most 107");
  }
  r.state_dir = c.state_dir.empty() ? state + "/palu" : c.state_dir;
  r.disk_dir = c.disk_dir.empty() ? r.state_dir + "/spill" : c.disk_dir;
  if (!c.host_budget.empty()) {
    PALU_ASSIGN_OR_RETURN(r.host_bytes, parse_size(c.host_budget));
    r.notes.push_back("host budget " + format_size(r.host_bytes) + " (--host-budget)");
  } else {
    const uint64_t avail = mem_available_bytes();
    r.host_bytes = avail > 0 ? avail / 2 : (1ull << 30);
    r.notes.push_back("host budget " + format_size(r.host_bytes) + " (default: half of the " + format_size(avail) +
                      " available now; set --host-budget)");
  }
  if (!c.disk_budget.empty()) {
    PALU_ASSIGN_OR_RETURN(r.disk_bytes, parse_size(c.disk_budget));
    r.notes.push_back("disk budget " + format_size(r.disk_bytes) + " in " + r.disk_dir + " (--disk-budget)");
  } else {
    struct statvfs sv{};
    std::string probe = r.disk_dir;
    while (!probe.empty() && ::statvfs(probe.c_str(), &sv) != 0) {
      const size_t slash = probe.rfind('/');
      probe = slash == std::string::npos || slash == 0 ? "/" : probe.substr(0, slash);
      if (probe == "/") {
        ::statvfs("/", &sv);
        break;
      }
    }
    const uint64_t free_bytes = (uint64_t)sv.f_bavail * sv.f_frsize;
    r.disk_bytes = free_bytes / 4;
    r.notes.push_back("disk budget " + format_size(r.disk_bytes) + " in " + r.disk_dir + " (default: a quarter of the " +
                      format_size(free_bytes) + " free there; set --disk-budget)");
  }
  if (!c.gpu_budget.empty()) {
    PALU_ASSIGN_OR_RETURN(r.gpu_bytes, parse_size(c.gpu_budget));
  }
  return r;
}

}  // namespace palu::daemon
