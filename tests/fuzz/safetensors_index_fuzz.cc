// Fuzz target: model.safetensors.index.json (the shard index of a Hugging Face model directory)
// through load_safetensors_dir. The directory holds two small valid shards
// (model-00001-of-00002.safetensors with "a", model-00002-of-00002.safetensors with "b" and "c");
// the input is the index. A directory that loads must map exactly the tensors the index names.
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const std::string& model_dir() {
  static const std::string dir = [] {
    const std::string d = palu::fuzz::scratch_dir() + "/model";
    std::filesystem::create_directories(d);
    const float a[2] = {1.f, 2.f};
    const uint16_t b[3] = {0x3c00, 0x4000, 0x4200};
    const float c[4] = {0.f, 0.f, 0.f, 0.f};
    using palu::model::TensorToWrite;
    palu::Status st = palu::model::write_safetensors_file(
        d + "/model-00001-of-00002.safetensors", {TensorToWrite{"a", palu::DType::kF32, {2}, a}});
    if (st.is_ok()) {
      st = palu::model::write_safetensors_file(
          d + "/model-00002-of-00002.safetensors",
          {TensorToWrite{"b", palu::DType::kF16, {3}, b}, TensorToWrite{"c", palu::DType::kF32, {2, 2}, c}});
    }
    PALU_FUZZ_CHECK(st.is_ok(), st.message().c_str());
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = model_dir();
  palu::fuzz::write_scratch_file("model/model.safetensors.index.json", palu::fuzz::as_view(data, size));
  auto map = palu::model::load_safetensors_dir(dir);
  if (!map.is_ok()) {
    PALU_FUZZ_CHECK(!map.status().message().empty(), "an error names its problem");
    return 0;
  }
  // Loaded: the index is a JSON object whose weight_map names only tensors that exist.
  const auto index = nlohmann::json::parse(palu::fuzz::as_view(data, size), nullptr, false);
  PALU_FUZZ_CHECK(index.is_object() && index.contains("weight_map"), "a loaded index has a weight_map");
  for (const auto& [name, file] : index["weight_map"].items()) {
    PALU_FUZZ_CHECK(map->find(name) != nullptr, name.c_str());
  }
  return 0;
}
