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
