// Fuzz target: config.json text through parse_hf_config (what load_model calls on the file's
// contents). A config that parses must validate: positive sizes, H_kv dividing H.
#include <cstdint>

#include "model/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto config = palu::model::parse_hf_config(palu::fuzz::as_view(data, size), "config.json");
  if (!config.is_ok()) {
    PALU_FUZZ_CHECK(!config.status().message().empty(), "an error names its problem");
    return 0;
  }
  PALU_FUZZ_CHECK(config->validate("config.json").is_ok(), "a parsed config is valid");
  PALU_FUZZ_CHECK(!config->summary().empty(), "summary");
  PALU_FUZZ_CHECK(config->num_heads > 0 && config->num_kv_heads > 0 && config->head_dim > 0, "positive sizes");
  PALU_FUZZ_CHECK(config->num_heads % config->num_kv_heads == 0, "H_kv divides H");
  // The loader sizes every projection from these products (int): they must not overflow.
  PALU_FUZZ_CHECK(config->q_width() > 0 && config->kv_width() > 0, "q/kv widths are positive ints");
  return 0;
}
