#include "daemon/log.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace palu::daemon {
namespace {

std::mutex g_mu;
LogFormat g_format = LogFormat::kText;

std::string quote_json(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += (char)c;
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += (char)c;
    }
  }
  return o + "\"";
}

std::string quote_text(const std::string& s) {
  bool plain = !s.empty();
  for (unsigned char c : s) plain = plain && c > 0x20 && c != '"' && c != '=' && c < 0x7f;
  return plain ? s : quote_json(s);
}

std::string timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const int ms = (int)(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[40];
  std::snprintf(b, sizeof b, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return b;
}

}  // namespace

void set_log_format(LogFormat f) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_format = f;
}

void log_event(const char* level, const char* event, std::initializer_list<std::pair<const char*, std::string>> fields) {
  std::string line;
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_format == LogFormat::kJson) {
    line = "{\"ts\":" + quote_json(timestamp()) + ",\"level\":" + quote_json(level) + ",\"event\":" + quote_json(event);
    for (const auto& [k, v] : fields) line += std::string(",") + quote_json(k) + ":" + quote_json(v);
    line += "}\n";
  } else {
    line = "ts=" + timestamp() + " level=" + level + " event=" + event;
    for (const auto& [k, v] : fields) line += std::string(" ") + k + "=" + quote_text(v);
    line += "\n";
  }
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace palu::daemon
