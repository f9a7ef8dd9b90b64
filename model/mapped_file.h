// A read-only memory-mapped file. Parsers take a MappedFile and check every offset and
// length against size() before touching data().
//
// Thread-safety: immutable after open; may be shared by readers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "backends/base/status.h"

namespace palu::model {

class MappedFile {
 public:
  // Maps `path` read-only. Empty files map to size 0 with a null data pointer.
  static Result<std::shared_ptr<const MappedFile>> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) file into a string, e.g. config.json.
Result<std::string> read_text_file(const std::string& path);

}  // namespace palu::model
