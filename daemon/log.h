// Structured logs of palud on stderr: one line per event, logfmt (`ts=… level=info
// event=listening socket=/run/…`) or JSON lines (--log-format json). Thread-safe.
#pragma once

#include <initializer_list>
#include <string>
#include <utility>

namespace palu::daemon {

enum class LogFormat { kText, kJson };
void set_log_format(LogFormat f);
// level: "info", "warn", "error". fields: key/value pairs (values are quoted as needed).
void log_event(const char* level, const char* event,
               std::initializer_list<std::pair<const char*, std::string>> fields = {});

}  // namespace palu::daemon
