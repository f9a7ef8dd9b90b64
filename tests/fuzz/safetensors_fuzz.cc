// Fuzz target: one .safetensors file (8-byte header length, JSON header, data section) through
// load_safetensors_file, the function every model load calls per shard. A file that loads must
// expose only tensors that lie inside it: every byte of every tensor is read (ASan / the mapping
// catch a view that points outside).
#include <cstdint>

#include "model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = palu::fuzz::write_scratch_file("model.safetensors", palu::fuzz::as_view(data, size));
  palu::model::TensorMap map;
  const palu::Status st = palu::model::load_safetensors_file(path, &map);
  if (!st.is_ok()) {
    PALU_FUZZ_CHECK(!st.message().empty(), "an error names its problem");
    return 0;
  }
  unsigned sum = 0;
  for (const auto& [name, view] : map.tensors()) {
    PALU_FUZZ_CHECK(view.nbytes == (size_t)view.numel() * palu::dtype_size(view.dtype), name.c_str());
    for (size_t i = 0; i < view.nbytes; ++i) sum += view.data[i];
  }
  volatile unsigned sink = sum;
  (void)sink;
  return 0;
}
