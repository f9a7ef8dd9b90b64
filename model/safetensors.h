// Safetensors reader: one file, or a Hugging Face directory with a single model.safetensors
// or shards listed by model.safetensors.index.json. Every header field is checked against
// the file size before any tensor is exposed; tensors stay in the mapped files.
#pragma once

#include <string>

#include "backends/base/status.h"
#include "model/tensor_map.h"

namespace palu::model {

// Adds the tensors of one .safetensors file to `map`.
Status load_safetensors_file(const std::string& path, TensorMap* map);

// A model directory: model.safetensors, or the shards named by model.safetensors.index.json
// (every entry of its weight_map must exist in the shard it names).
Result<TensorMap> load_safetensors_dir(const std::string& dir);

}  // namespace palu::model

namespace palu::model {

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel · dtype_size bytes
};

// Writes a .safetensors file crash-safely: a temp file in the same directory, fsync,
// rename over `path`, fsync of the directory. `metadata` goes to "__metadata__".
Status write_safetensors_file(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata = {});

// Writes bytes to `path` with the same temp-file + fsync + rename + directory-fsync dance.
Status write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace palu::model
