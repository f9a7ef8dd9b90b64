// GoldenFile: a reference model's golden.safetensors (../shared/models/*/golden.safetensors,
// written from Hugging Face transformers in float32): int32 token ids ("prompt0.ids",
// "long.ids", "prompt0.greedy32") and float32 logits ("prompt0.logits" [n, V],
// "long.logits_last64", "long.nll_sum"). One reader for every test that compares with them.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "model/safetensors.h"
#include "model/tensor_map.h"

namespace palu::testing {

class GoldenFile {
 public:
  // Maps <model_dir>/golden.safetensors; false (with a test failure naming the file) if it
  // cannot be read.
  bool open(const std::string& model_dir) {
    const std::string path = model_dir + "/golden.safetensors";
    const Status st = model::load_safetensors_file(path, &map_);
    EXPECT_TRUE(st.is_ok()) << path << ": " << st.to_string();
    return st.is_ok();
  }
  bool has(const std::string& name) const { return map_.find(name) != nullptr; }

  // The tensor's values; empty when it is absent (a test failure too when `required`, or when
  // its dtype is not the one asked for).
  std::vector<int32_t> ints(const std::string& name, bool required = true) const {
    return values<int32_t>(name, DType::kI32, required);
  }
  std::vector<float> floats(const std::string& name, bool required = true) const {
    return values<float>(name, DType::kF32, required);
  }

 private:
  template <typename T>
  std::vector<T> values(const std::string& name, DType dtype, bool required) const {
    const model::TensorView* v = map_.find(name);
    if (v == nullptr) {
      if (required) ADD_FAILURE() << "golden tensor '" << name << "' is missing";
      return {};
    }
    if (v->dtype != dtype || v->nbytes != (size_t)v->numel() * sizeof(T)) {
      ADD_FAILURE() << "golden tensor '" << name << "' has dtype " << dtype_name(v->dtype);
      return {};
    }
    std::vector<T> out((size_t)v->numel());
    std::memcpy(out.data(), v->data, out.size() * sizeof(T));
    return out;
  }

  model::TensorMap map_;
};

}  // namespace palu::testing
