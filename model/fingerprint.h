// Model fingerprint: identifies the exact weights a compressed model or a saved session was
// made from. XXH3-64 over config.json and every *.safetensors file of a directory (sorted
// by name), or over a whole .gguf file; printed as "xxh3-64:<16 hex digits>". Reads every
// byte once (≈ 1–3 s for a 7B model from page cache).
#pragma once

#include <string>

#include "backends/base/status.h"

namespace palu::model {

Result<std::string> fingerprint_model(const std::string& path);
// XXH3-64 of one file, "xxh3-64:<hex>" (used for calibration text).
Result<std::string> fingerprint_file(const std::string& path);

}  // namespace palu::model
