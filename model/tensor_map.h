// TensorMap: named tensors that live in memory-mapped files (safetensors shards or a GGUF
// file), with shapes in Hugging Face order (outermost first: a Linear weight is [out, in]).
// The files stay mapped as long as the map (or any copy of it) lives.
//
// Thread-safety: immutable after construction.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/base/status.h"
#include "model/mapped_file.h"

namespace palu::model {

struct TensorView {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;      // outermost first
  const uint8_t* data = nullptr;   // inside a mapped file; already bounds-checked
  size_t nbytes = 0;
  std::string file;                // the file it came from, for messages

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  std::string shape_string() const;  // "[512, 8000]"
};

class TensorMap {
 public:
  void add_file(std::shared_ptr<const MappedFile> f) { files_.push_back(std::move(f)); }
  // Fails when the name exists already (duplicate tensors across shards).
  Status add(const std::string& name, TensorView view);

  const TensorView* find(const std::string& name) const;
  // find() or NOT_FOUND naming the tensor and `origin`.
  Result<const TensorView*> get(const std::string& name, std::string_view origin) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  size_t size() const { return tensors_.size(); }

 private:
  std::vector<std::shared_ptr<const MappedFile>> files_;
  std::map<std::string, TensorView> tensors_;
};

}  // namespace palu::model
