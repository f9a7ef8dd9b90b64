// Helpers shared by the fuzz targets: a private scratch directory (on /dev/shm when there is
// one, so writing the input to a file costs no disk I/O), writing an input to a file there,
// and the shared/ folder with the reference models.
//
// Parsers that only read from a path get their input through a real file: the target writes
// the bytes and calls the same entry point a model load does.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace palu::fuzz {

// Aborts the process (a libFuzzer crash with this message) when a property does not hold.
#define PALU_FUZZ_CHECK(cond, what)                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "fuzz property violated: %s (%s)\n", #cond, (what)); \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

// A directory private to this process, created on first use, removed at exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    std::error_code ec;
    std::string base = std::filesystem::is_directory("/dev/shm", ec) ? "/dev/shm" : "";
    if (base.empty()) base = std::filesystem::temp_directory_path().string();
    std::string tmpl = base + "/palu-fuzz-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    static std::string cleanup;
    cleanup = tmpl;
    std::atexit([] {
      std::error_code e;
      std::filesystem::remove_all(cleanup, e);
    });
    return tmpl;
  }();
  return dir;
}

// Writes `bytes` to scratch_dir()/name (replacing it) and returns the path.
inline std::string write_scratch_file(const std::string& name, std::string_view bytes) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
  f.close();
  if (!f) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

// shared/ (models, tokenizers): PALU_SHARED_DIR, else the build's default.
inline std::string shared_file(const std::string& rel) {
  const char* env = std::getenv("PALU_SHARED_DIR");
  const std::string path = std::string(env ? env : PALU_DEFAULT_SHARED_DIR) + "/" + rel;
  if (!std::filesystem::exists(path)) {
    std::fprintf(stderr, "missing %s (set PALU_SHARED_DIR to the shared/ folder)\n", path.c_str());
    std::abort();
  }
  return path;
}

inline std::string_view as_view(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

}  // namespace palu::fuzz
