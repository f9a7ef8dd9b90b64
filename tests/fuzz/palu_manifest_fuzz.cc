// Fuzz target: palu.json, the manifest of a compressed model, through read_palu_manifest (what
// load_model calls for a palu-compress output directory), checked against a fixed model config
// (2 layers, 4 KV heads of 16 dims). A manifest that reads must have ranks the config allows.
#include <cstdint>
#include <filesystem>

#include "model/palu_format.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

palu::model::ModelConfig fixed_config() {
  palu::model::ModelConfig c;
  c.architecture = "llama";
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 4;
  c.head_dim = 16;
  c.vocab_size = 512;
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const palu::model::ModelConfig config = fixed_config();
  static const std::string dir = [] {
    const std::string d = palu::fuzz::scratch_dir() + "/compressed";
    std::filesystem::create_directories(d);
    return d;
  }();
  palu::fuzz::write_scratch_file("compressed/palu.json", palu::fuzz::as_view(data, size));
  auto m = palu::model::read_palu_manifest(dir, config);
  if (!m.is_ok()) {
    PALU_FUZZ_CHECK(!m.status().message().empty(), "an error names its problem");
    return 0;
  }
  PALU_FUZZ_CHECK(m->group_size > 0 && config.num_kv_heads % m->group_size == 0, "group size divides H_kv");
  PALU_FUZZ_CHECK((int)m->k_ranks.size() == config.num_layers && (int)m->v_ranks.size() == config.num_layers,
                  "one rank list per layer");
  for (const auto* ranks : {&m->k_ranks, &m->v_ranks}) {
    for (const auto& layer : *ranks) {
      PALU_FUZZ_CHECK((int)layer.size() == config.num_kv_heads / m->group_size, "one rank per group");
      for (int r : layer) PALU_FUZZ_CHECK(r >= 1 && r <= m->group_size * config.head_dim, "rank in 1..s*d_h");
    }
  }
  (void)m->latent_floats_per_token();
  return 0;
}
