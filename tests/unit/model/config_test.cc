// config.json parsing: the supported layouts, and a table of bad configs with the field named.
#include <gtest/gtest.h>

#include "model/config.h"
#include "model/mapped_file.h"
#include "tests/common/test_paths.h"

namespace palu::model {
namespace {

TEST(ConfigTest, ReferenceModelsParse) {
  for (const char* m : {"ref-mha", "ref-gqa"}) {
    const std::string p = palu::testing::shared_file(std::string("models/") + m + "/config.json");
    auto text = read_text_file(p);
    ASSERT_TRUE(text.is_ok());
    auto c = parse_hf_config(text.value(), p);
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    EXPECT_EQ(c->hidden_size, 512);
    EXPECT_EQ(c->num_layers, 8);
    EXPECT_EQ(c->head_dim, 64);
    EXPECT_TRUE(c->tie_word_embeddings);
    EXPECT_EQ(c->bos_id, 1);
    EXPECT_EQ(c->eos_id, 2);
    if (std::string(m) == "ref-gqa") {
      EXPECT_EQ(c->num_kv_heads, 2);
      EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);  // from rope_parameters
    } else {
      EXPECT_EQ(c->num_kv_heads, 8);
      EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
    }
  }
}

TEST(ConfigTest, TopLevelRopeThetaQwen2AndMistral) {
  auto c = parse_hf_config(R"({"model_type":"qwen2","hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,
      "rope_theta":1000000.0,"rms_norm_eps":1e-6,"tie_word_embeddings":false})", "q.json");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  auto m = parse_hf_config(R"({"architectures":["MistralForCausalLM"],"hidden_size":64,"intermediate_size":128,
      "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":1,"vocab_size":100})", "m.json");
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  EXPECT_EQ(m->architecture, "mistral");
  EXPECT_FALSE(m->qkv_bias);
}

TEST(ConfigTest, BadConfigsNameTheField) {
  const std::string base_fields = R"("hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"vocab_size":100)";
  struct Case {
    const char* name;
    std::string json;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"not JSON", "{", "not valid JSON"},
      {"array", "[]", "JSON object"},
      {"no model type", "{" + base_fields + R"(,"num_attention_heads":4})", "model_type"},
      {"unknown architecture", R"({"model_type":"gpt2",)" + base_fields + R"(,"num_attention_heads":4})",
       "unknown architecture 'gpt2'"},
      {"missing hidden_size", R"({"model_type":"llama","intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":1})",
       "'hidden_size'"},
      {"string where int", R"({"model_type":"llama","hidden_size":"64","intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":1})",
       "'hidden_size' must be an integer"},
      {"heads not dividing", R"({"model_type":"llama",)" + base_fields + R"(,"num_attention_heads":4,"num_key_value_heads":3})",
       "multiple of num_key_value_heads"},
      {"zero heads", R"({"model_type":"llama",)" + base_fields + R"(,"num_attention_heads":0})", "num_attention_heads"},
      {"negative eps", R"({"model_type":"llama",)" + base_fields + R"(,"num_attention_heads":4,"rms_norm_eps":-1})",
       "rms_norm_eps"},
      // Found by fuzz_config_json: num_heads × head_dim overflowed int in q_width().
      {"heads x head_dim overflows", R"({"model_type":"llama",)" + base_fields +
                                         R"(,"num_attention_heads":1073741824,"head_dim":1073741824})",
       "num_attention_heads × head_dim = 1073741824 × 1073741824 is too large"},
      {"odd head_dim", R"({"model_type":"llama",)" + base_fields + R"(,"num_attention_heads":4,"head_dim":15})",
       "head_dim"},
      {"rope scaling", R"({"model_type":"llama",)" + base_fields + R"(,"num_attention_heads":4,"rope_scaling":{"rope_type":"yarn"}})",
       "rope_scaling type 'yarn'"},
      {"activation", R"({"model_type":"llama",)" + base_fields + R"(,"num_attention_heads":4,"hidden_act":"gelu"})",
       "hidden_act 'gelu'"},
      {"bool as string", R"({"model_type":"llama",)" + base_fields + R"(,"num_attention_heads":4,"tie_word_embeddings":"yes"})",
       "tie_word_embeddings"},
      {"bos outside vocab", R"({"model_type":"llama",)" + base_fields + R"(,"num_attention_heads":4,"bos_token_id":500})",
       "bos/eos"},
      {"huge value", R"({"model_type":"llama",)" + base_fields + R"(,"num_attention_heads":99999999999})", "out of range"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto r = parse_hf_config(c.json, "cfg.json");
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << r.status().message();
    EXPECT_EQ(r.status().message().rfind("cfg.json", 0), 0u) << "message starts with the file: " << r.status().message();
  }
}

}  // namespace
}  // namespace palu::model
