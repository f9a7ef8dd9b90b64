// Where tests find ../shared (models, tokenizers, data). PALU_SHARED_DIR overrides it.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace palu::testing {

inline std::string shared_dir() {
  if (const char* env = std::getenv("PALU_SHARED_DIR")) return env;
  return PALU_DEFAULT_SHARED_DIR;  // set by tests/CMakeLists.txt: <source>/../shared
}

// Full path of a file under shared/; the test fails (not skips) naming it when it is missing.
inline std::string shared_file(const std::string& rel) {
  const std::string p = shared_dir() + "/" + rel;
  EXPECT_TRUE(std::filesystem::exists(p))
      << "missing test data file: " << p << " (set PALU_SHARED_DIR to the shared/ folder)";
  return p;
}

}  // namespace palu::testing
