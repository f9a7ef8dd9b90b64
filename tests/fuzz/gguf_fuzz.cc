// Fuzz target: a GGUF file through GgufFile::open (what load_model and the tokenizer loader call
// for a .gguf path), then everything a model load asks of it: the Llama config, the tensor map
// under Hugging Face names, and the embedded tokenizer (which, when it builds, encodes and
// decodes a short text). Every tensor view that comes back is read byte by byte.
#include <cstdint>

#include "model/gguf.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = palu::fuzz::write_scratch_file("model.gguf", palu::fuzz::as_view(data, size));
  auto gguf = palu::model::GgufFile::open(path);
  if (!gguf.is_ok()) {
    PALU_FUZZ_CHECK(!gguf.status().message().empty(), "an error names its problem");
    return 0;
  }
  for (const auto& kv : gguf->metadata()) {
    (void)kv.value.type_string();
    (void)kv.value.string_elements();
  }
  for (const auto& t : gguf->tensors()) {
    (void)t.hf_shape();
    (void)t.ne_string();
  }
  (void)palu::model::gguf_llama_config(*gguf);
  if (auto map = palu::model::gguf_tensor_map(*gguf); map.is_ok()) {
    unsigned sum = 0;
    for (const auto& [name, view] : map->tensors()) {
      for (size_t i = 0; i < view.nbytes; ++i) sum += view.data[i];
    }
    volatile unsigned sink = sum;
    (void)sink;
  }
  if (auto tok = palu::model::gguf_tokenizer(*gguf); tok.is_ok()) {
    if (auto ids = (*tok)->encode("Hello world, 123 \xc3\xa9!", true); ids.is_ok()) {
      (void)(*tok)->decode(*ids);
    }
  }
  return 0;
}
