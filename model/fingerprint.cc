#include "model/fingerprint.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "model/mapped_file.h"

namespace palu::model {
namespace {

std::string hex(uint64_t h) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "xxh3-64:%016llx", (unsigned long long)h);
  return buf;
}

Status hash_file_into(XXH3_state_t* st, const std::string& path) {
  PALU_ASSIGN_OR_RETURN(auto f, MappedFile::open(path));
  // The name (not the directory) and the size enter the hash so renamed shards differ.
  const std::string name = std::filesystem::path(path).filename().string();
  XXH3_64bits_update(st, name.data(), name.size());
  const uint64_t size = f->size();
  XXH3_64bits_update(st, &size, sizeof size);
  if (f->size() > 0) XXH3_64bits_update(st, f->data(), f->size());
  return Status::ok();
}

}  // namespace

Result<std::string> fingerprint_model(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<std::string> files;
  if (fs::is_directory(path, ec)) {
    files.push_back(path + "/config.json");
    for (const auto& e : fs::directory_iterator(path, ec)) {
      const std::string n = e.path().filename().string();
      if (n.size() > 12 && n.substr(n.size() - 12) == ".safetensors" && n != "palu.safetensors") {
        files.push_back(e.path().string());
      }
    }
    std::sort(files.begin() + 1, files.end());
  } else {
    files.push_back(path);
  }
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  Status s;
  for (const auto& f : files) {
    s = hash_file_into(st, f);
    if (!s.is_ok()) break;
  }
  const uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  if (!s.is_ok()) return s;
  return hex(h);
}

Result<std::string> fingerprint_file(const std::string& path) {
  PALU_ASSIGN_OR_RETURN(auto f, MappedFile::open(path));
  return hex(XXH3_64bits(f->data(), f->size()));
}

}  // namespace palu::model
