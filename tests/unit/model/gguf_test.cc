// GGUF reader: the real stories260K and Llama-2 vocabulary files, and a table of handcrafted
// corrupt files, each naming its defect.
#include "model/gguf.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <sstream>

#include "tests/common/test_paths.h"

namespace palu::model {
namespace {

// ---- helpers ---------------------------------------------------------------------------------

std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A file under the test temp dir that is removed when the object dies.
class TempFile {
 public:
  TempFile(const std::string& name, std::string_view bytes)
      : path_(::testing::TempDir() + "palu_gguf_" + std::to_string(::getpid()) + "_" + name +
              ".gguf") {
    write(bytes);
  }
  ~TempFile() { std::filesystem::remove(path_); }
  void write(std::string_view bytes) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), (std::streamsize)bytes.size());
  }
  // Overwrites bytes at `offset` in place.
  void patch(size_t offset, std::string_view bytes) const {
    std::fstream io(path_, std::ios::binary | std::ios::in | std::ios::out);
    io.seekp((std::streamoff)offset);
    io.write(bytes.data(), (std::streamsize)bytes.size());
  }
  // Cuts (or extends with zeros) the file to `size` bytes.
  void resize(size_t size) const { std::filesystem::resize_file(path_, size); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Little-endian encoders for handcrafted files.
struct Bytes {
  std::string b;
  Bytes& u8(uint8_t v) { return raw(&v, 1); }
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& i32(int32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& f32(float v) { return raw(&v, 4); }
  Bytes& str(std::string_view s) {
    u64(s.size());
    b.append(s.data(), s.size());
    return *this;
  }
  Bytes& raw(const void* p, size_t n) {
    b.append(static_cast<const char*>(p), n);
    return *this;
  }
};

// Metadata entries, each encoded as key + type + value.
std::string kv_raw(std::string_view key, uint32_t type, std::string_view payload) {
  Bytes w;
  w.str(key).u32(type);
  w.b += payload;
  return w.b;
}
std::string kv_u32(std::string_view key, uint32_t v) {
  return kv_raw(key, 4, Bytes().u32(v).b);
}
std::string kv_f32(std::string_view key, float v) {
  return kv_raw(key, 6, Bytes().f32(v).b);
}
std::string kv_bool(std::string_view key, uint8_t v) {
  return kv_raw(key, 7, Bytes().u8(v).b);
}
std::string kv_str(std::string_view key, std::string_view v) {
  return kv_raw(key, 8, Bytes().str(v).b);
}
std::string kv_str_array(std::string_view key, const std::vector<std::string>& v) {
  Bytes w;
  w.u32(8).u64(v.size());
  for (const auto& s : v) w.str(s);
  return kv_raw(key, 9, w.b);
}
std::string kv_f32_array(std::string_view key, const std::vector<float>& v) {
  Bytes w;
  w.u32(6).u64(v.size());
  for (float x : v) w.f32(x);
  return kv_raw(key, 9, w.b);
}
std::string kv_i32_array(std::string_view key, const std::vector<int32_t>& v) {
  Bytes w;
  w.u32(5).u64(v.size());
  for (int32_t x : v) w.i32(x);
  return kv_raw(key, 9, w.b);
}

// A small GGUF file whose every field can be overridden.
struct TinyGguf {
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;  // ne[0] innermost
    uint32_t type = kGgmlTypeF32;
    std::optional<uint64_t> offset;  // default: packed, aligned
  };
  std::string magic = "GGUF";
  uint32_t version = 3;
  std::optional<uint64_t> n_tensors, n_kv;               // override the true counts
  std::vector<std::pair<std::string, std::string>> kvs;  // (key, encoded entry)
  std::vector<Tensor> tensors;
  uint64_t alignment = 32;      // used to lay the file out
  size_t cut_tail = 0;          // bytes removed from the end
  mutable size_t info_end = 0;  // set by build(): where the tensor infos end

  // The standard valid file: a 1-layer llama with d 8, 2 heads, 1 kv head, vocab 5.
  static TinyGguf llama() {
    TinyGguf t;
    t.set(kv_str("general.architecture", "llama"));
    t.set(kv_str("general.name", "tiny"));
    t.set(kv_u32("llama.context_length", 32));
    t.set(kv_u32("llama.embedding_length", 8));
    t.set(kv_u32("llama.block_count", 1));
    t.set(kv_u32("llama.feed_forward_length", 16));
    t.set(kv_u32("llama.rope.dimension_count", 4));
    t.set(kv_u32("llama.attention.head_count", 2));
    t.set(kv_u32("llama.attention.head_count_kv", 1));
    t.set(kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f));
    t.set(kv_str("tokenizer.ggml.model", "llama"));
    t.set(kv_str_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>",
                                                 "\xE2\x96\x81"
                                                 "a",
                                                 "b"}));
    t.set(kv_f32_array("tokenizer.ggml.scores", {0, 0, 0, -1, -2}));
    t.set(kv_i32_array("tokenizer.ggml.token_type", {2, 3, 3, 1, 1}));
    t.set(kv_u32("tokenizer.ggml.bos_token_id", 1));
    t.set(kv_u32("tokenizer.ggml.eos_token_id", 2));
    t.tensors = {
        {"token_embd.weight", {8, 5}, kGgmlTypeF32, {}},
        {"blk.0.attn_q.weight", {8, 8}, kGgmlTypeF16, {}},
        {"blk.0.attn_k.weight", {8, 4}, kGgmlTypeBF16, {}},
        {"output_norm.weight", {8}, kGgmlTypeF32, {}},
    };
    return t;
  }

  // Sets an entry by its key (replacing one with the same key, or appending).
  TinyGguf& set(std::string entry) {
    uint64_t len = 0;
    std::memcpy(&len, entry.data(), 8);
    std::string key = entry.substr(8, (size_t)len);
    for (auto& kv : kvs) {
      if (kv.first == key) {
        kv.second = std::move(entry);
        return *this;
      }
    }
    kvs.emplace_back(std::move(key), std::move(entry));
    return *this;
  }
  TinyGguf& erase(const std::string& key) {
    std::erase_if(kvs, [&](const auto& kv) { return kv.first == key; });
    return *this;
  }
  // Appends a raw entry (duplicates and garbage allowed).
  TinyGguf& append(std::string entry) {
    kvs.emplace_back("", std::move(entry));
    return *this;
  }

  static uint64_t nbytes(const Tensor& t) {
    const GgmlTypeTraits* tt = ggml_type_traits(t.type);
    if (tt == nullptr || t.ne.empty()) return 0;
    uint64_t n = 1;
    for (uint64_t d : t.ne) {
      if (__builtin_mul_overflow(n, d, &n)) return 0;
    }
    if (n > (1u << 20)) return 0;  // absurd shapes in corrupt cases: no data
    return n / tt->block_elems * tt->block_bytes;
  }

  std::string build() const {
    Bytes w;
    w.b += magic;
    w.u32(version);
    w.u64(n_tensors.value_or(tensors.size()));
    w.u64(n_kv.value_or(kvs.size()));
    for (const auto& kv : kvs) w.b += kv.second;
    uint64_t next = 0, end = 0;
    for (const auto& t : tensors) {
      w.str(t.name).u32((uint32_t)t.ne.size());
      for (uint64_t d : t.ne) w.u64(d);
      const uint64_t off = t.offset.value_or(next);
      w.u32(t.type).u64(off);
      const uint64_t nb = nbytes(t);
      if (off < (1u << 20)) end = std::max(end, off + nb);
      next = (off + nb + alignment - 1) / alignment * alignment;
    }
    info_end = w.b.size();
    if (!tensors.empty()) {
      while (w.b.size() % alignment != 0) w.b.push_back('\0');
      for (uint64_t k = 0; k < end; ++k) w.b.push_back((char)(k * 7 + 1));
    }
    if (cut_tail > 0) w.b.resize(w.b.size() > cut_tail ? w.b.size() - cut_tail : 0);
    return w.b;
  }
};

std::vector<std::string> split(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t k = s.find(sep, start);
    if (k == std::string::npos) {
      out.push_back(s.substr(start));
      return out;
    }
    out.push_back(s.substr(start, k - start));
    start = k + sep.size();
  }
}

std::string ids_string(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (!s.empty()) s += ' ';
    s += std::to_string(id);
  }
  return s;
}

// ---- stories260K ---------------------------------------------------------------------------

const std::string& stories_path() {
  static const std::string p =
      palu::testing::shared_file("models/stories260K/stories260K-f32.gguf");
  return p;
}

TEST(GgufStories, ParsesHeaderMetadataAndTensors) {
  auto g = GgufFile::open(stories_path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_EQ(g->version(), 3u);
  EXPECT_EQ(g->alignment(), 32u);
  EXPECT_EQ(g->data_offset() % 32, 0u);
  EXPECT_EQ(g->tensors().size(), 48u);
  EXPECT_EQ(g->metadata().size(), 18u);
  EXPECT_EQ(*g->get_string("general.architecture"), "llama");
  EXPECT_EQ(*g->get_u32("llama.block_count"), 5u);
  EXPECT_EQ(*g->get_array_size("tokenizer.ggml.tokens"), 512u);
  const GgufTensorInfo* emb = g->find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->n_dims, 2u);
  EXPECT_EQ(emb->ne[0], 64u);
  EXPECT_EQ(emb->ne[1], 512u);
  EXPECT_EQ(emb->ggml_type, kGgmlTypeF32);
  EXPECT_EQ(emb->nbytes, 64u * 512 * 4);
}

TEST(GgufStories, TypedAccessorsReportMissingKeysAndWrongTypes) {
  auto g = GgufFile::open(stories_path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto missing = g->get_u32("llama.no_such_key");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("llama.no_such_key"), std::string::npos);
  auto wrong = g->get_u32("general.architecture");
  ASSERT_FALSE(wrong.is_ok());
  EXPECT_NE(wrong.status().message().find("has type string, expected an integer"),
            std::string::npos)
      << wrong.status().message();
  auto wrong_arr = g->get_f32_array("tokenizer.ggml.tokens");
  ASSERT_FALSE(wrong_arr.is_ok());
  EXPECT_NE(wrong_arr.status().message().find("array<string>[512]"), std::string::npos)
      << wrong_arr.status().message();
  EXPECT_FALSE(g->get_f32("llama.block_count").is_ok());  // u32 is not a float
  EXPECT_EQ(*g->get_u32_or("llama.no_such_key", 7), 7u);
  EXPECT_FALSE(g->get_u32_or("general.name", 7).is_ok());  // present with the wrong type
  auto eps = g->get_f32("llama.attention.layer_norm_rms_epsilon");
  ASSERT_TRUE(eps.is_ok());
  EXPECT_FLOAT_EQ(*eps, 1e-5f);
  auto types = g->get_i32_array("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.is_ok());
  ASSERT_EQ(types->size(), 512u);
  EXPECT_EQ((*types)[0], 2);  // <unk>
  EXPECT_EQ((*types)[3], 6);  // <0x00>
  auto tokens = g->get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.is_ok());
  EXPECT_EQ((*tokens)[1], "<s>");
}

TEST(GgufStories, LlamaConfig) {
  auto g = GgufFile::open(stories_path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto c = gguf_llama_config(*g);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->num_layers, 5);
  EXPECT_EQ(c->num_heads, 8);
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->intermediate_size, 172);
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->bos_id, 1);
  EXPECT_EQ(c->eos_id, 2);
  EXPECT_FALSE(c->tie_word_embeddings);  // output.weight is present
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_TRUE(c->qk_rows_interleaved);
}

TEST(GgufStories, TensorMapUsesHuggingFaceNamesAndShapes) {
  auto g = GgufFile::open(stories_path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto m = gguf_tensor_map(*g);
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  EXPECT_EQ(m->size(), 48u);
  // Every tensor has a Hugging Face name (none kept its GGUF name).
  for (const auto& [name, view] : m->tensors()) {
    EXPECT_TRUE(name.rfind("model.", 0) == 0 || name == "lm_head.weight") << name;
    EXPECT_EQ(view.dtype, DType::kF32) << name;
    EXPECT_EQ((size_t)view.numel() * 4, view.nbytes) << name;
  }
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"model.embed_tokens.weight", {512, 64}},
      {"lm_head.weight", {512, 64}},
      {"model.norm.weight", {64}},
      {"model.layers.0.input_layernorm.weight", {64}},
      {"model.layers.0.post_attention_layernorm.weight", {64}},
      {"model.layers.0.self_attn.q_proj.weight", {64, 64}},
      {"model.layers.0.self_attn.k_proj.weight", {32, 64}},
      {"model.layers.0.self_attn.v_proj.weight", {32, 64}},
      {"model.layers.0.self_attn.o_proj.weight", {64, 64}},
      {"model.layers.4.mlp.gate_proj.weight", {172, 64}},
      {"model.layers.4.mlp.up_proj.weight", {172, 64}},
      {"model.layers.4.mlp.down_proj.weight", {64, 172}},
  };
  for (const auto& [name, shape] : expected) {
    const TensorView* v = m->find(name);
    ASSERT_NE(v, nullptr) << name;
    EXPECT_EQ(v->shape, shape) << name << " " << v->shape_string();
  }
  for (int l = 0; l < 5; ++l) {
    for (const char* p : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                          "input_layernorm", "post_attention_layernorm"}) {
      const std::string name = "model.layers." + std::to_string(l) + "." + p + ".weight";
      EXPECT_NE(m->find(name), nullptr) << name;
    }
  }
  // The view points at the tensor's bytes in the mapping.
  const GgufTensorInfo* emb = g->find_tensor("token_embd.weight");
  EXPECT_EQ(m->find("model.embed_tokens.weight")->data, emb->data);
}

TEST(GgufStories, NameMapping) {
  EXPECT_EQ(gguf_to_hf_tensor_name("blk.12.attn_output.weight"),
            "model.layers.12.self_attn.o_proj.weight");
  EXPECT_EQ(gguf_to_hf_tensor_name("blk.3.attn_q.bias"), "model.layers.3.self_attn.q_proj.bias");
  EXPECT_EQ(gguf_to_hf_tensor_name("blk.0.ffn_down.weight"), "model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(gguf_to_hf_tensor_name("rope_freqs.weight"), "");
  EXPECT_EQ(gguf_to_hf_tensor_name("blk.x.attn_q.weight"), "");
  EXPECT_EQ(gguf_to_hf_tensor_name("blk..attn_q.weight"), "");
  EXPECT_EQ(gguf_to_hf_tensor_name("blk.0.attn_q"), "");
  EXPECT_EQ(gguf_to_hf_tensor_name("blk.0.unknown.weight"), "");
}

// ---- tokenizers ----------------------------------------------------------------------------

TEST(GgufTokenizer, Stories260KMatchesTokenizerModel) {
  auto g = GgufFile::open(stories_path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto tok = gguf_tokenizer(*g);
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  auto ref =
      load_sentencepiece_tokenizer(palu::testing::shared_file("models/stories260K/tok512.model"));
  ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
  EXPECT_EQ((*tok)->vocab_size(), 512);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_EQ((*tok)->kind(), "sentencepiece");
  // tok512.model removes extra whitespace (SentencePiece's default), which a GGUF vocabulary
  // cannot express and llama.cpp never does; these sentences have none.
  const std::vector<std::string> texts = {
      "Once upon a time, there was a little girl named Lily.",
      "She loved to play outside in the park with her dog, Max!",
      "\"Why?\" asked Tom. 12345 + 678 = 13023",
      "Caf\xC3\xA9 na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\xA6\x99 (byte "
      "fallback)",
      "tab\there\nnewline",
      "",
  };
  for (const std::string& text : texts) {
    for (bool bos : {false, true}) {
      auto a = (*tok)->encode(text, bos);
      auto b = (*ref)->encode(text, bos);
      ASSERT_TRUE(a.is_ok() && b.is_ok()) << text;
      EXPECT_EQ(*a, *b) << "text: '" << text << "'\n gguf: " << ids_string(*a)
                        << "\n  ref: " << ids_string(*b);
      auto back = (*tok)->decode(*a);
      ASSERT_TRUE(back.is_ok());
      EXPECT_EQ(*back, text);
    }
  }
  for (int32_t id = 0; id < 512; ++id) EXPECT_EQ((*tok)->id_to_piece(id), (*ref)->id_to_piece(id));
}

TEST(GgufTokenizer, KeepsExtraWhitespaceLikeLlamaCpp) {
  auto g = GgufFile::open(stories_path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto tok = gguf_tokenizer(*g);
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  const std::string text = "two  spaces and a trailing one ";
  auto ids = (*tok)->encode(text, false);
  ASSERT_TRUE(ids.is_ok());
  EXPECT_EQ(*(*tok)->decode(*ids), text);
}

TEST(GgufTokenizer, Llama2VocabMatchesTokenizerModelAndLlamaCpp) {
  const std::string dir = "tokenizers/llama2/";
  auto g = GgufFile::open(palu::testing::shared_file(dir + "ggml-vocab-llama-spm.gguf"));
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_TRUE(g->tensors().empty());  // a vocabulary-only file
  auto tok = gguf_tokenizer(*g);
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  auto ref = load_sentencepiece_tokenizer(palu::testing::shared_file(dir + "tokenizer.model"));
  ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
  EXPECT_EQ((*tok)->vocab_size(), 32000);
  EXPECT_EQ((*tok)->bos_id(), (*ref)->bos_id());
  EXPECT_EQ((*tok)->eos_id(), (*ref)->eos_id());

  // Inputs are separated by "\n__ggml_vocab_test__\n"; the file ends with a separator.
  std::vector<std::string> inputs =
      split(read_file_bytes(palu::testing::shared_file(dir + "ggml-vocab-llama-spm.gguf.inp")),
            "\n__ggml_vocab_test__\n");
  ASSERT_FALSE(inputs.empty());
  EXPECT_EQ(inputs.back(), "");
  inputs.pop_back();
  std::vector<std::string> outputs = split(
      read_file_bytes(palu::testing::shared_file(dir + "ggml-vocab-llama-spm.gguf.out")), "\n");
  if (!outputs.empty() && outputs.back().empty()) outputs.pop_back();
  ASSERT_EQ(inputs.size(), 46u);
  ASSERT_EQ(outputs.size(), inputs.size());

  int vs_ref = 0, vs_llama_cpp = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    auto a = (*tok)->encode(inputs[k], false);
    auto b = (*ref)->encode(inputs[k], false);
    ASSERT_TRUE(a.is_ok() && b.is_ok()) << k;
    std::vector<int32_t> expected;
    std::istringstream line(outputs[k]);
    for (int32_t id; line >> id;) expected.push_back(id);
    if (*a != *b) {
      ++vs_ref;
      ADD_FAILURE() << "#" << k << " vs tokenizer.model: '" << inputs[k]
                    << "'\n gguf: " << ids_string(*a) << "\n  ref: " << ids_string(*b);
    }
    if (*a != expected) {
      ++vs_llama_cpp;
      ADD_FAILURE() << "#" << k << " vs llama.cpp (.out): '" << inputs[k]
                    << "'\n gguf: " << ids_string(*a) << "\n  out: " << ids_string(expected);
    }
  }
  EXPECT_EQ(vs_ref, 0);
  EXPECT_EQ(vs_llama_cpp, 0);
}

TEST(GgufTokenizer, OtherVocabulariesAreUnimplemented) {
  TinyGguf t = TinyGguf::llama();
  t.set(kv_str("tokenizer.ggml.model", "rwkv"));
  TempFile f("rwkv_vocab", t.build());
  auto g = GgufFile::open(f.path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto tok = gguf_tokenizer(*g);
  ASSERT_FALSE(tok.is_ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(tok.status().message().find("'rwkv'"), std::string::npos) << tok.status().message();
}

TEST(GgufTokenizer, Gpt2VocabularyWithoutMergesIsRefused) {
  TinyGguf t = TinyGguf::llama();
  t.set(kv_str("tokenizer.ggml.model", "gpt2"));
  TempFile f("gpt2_vocab", t.build());
  auto g = GgufFile::open(f.path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto tok = gguf_tokenizer(*g);
  ASSERT_FALSE(tok.is_ok());
  EXPECT_NE(tok.status().message().find("tokenizer.ggml.merges"), std::string::npos) << tok.status().message();
}

TEST(GgufTokenizer, TinyHandcraftedVocabulary) {
  TempFile f("tiny_vocab", TinyGguf::llama().build());
  auto g = GgufFile::open(f.path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto tok = gguf_tokenizer(*g);
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  EXPECT_EQ((*tok)->vocab_size(), 5);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  auto ids = (*tok)->encode("ab", true);
  ASSERT_TRUE(ids.is_ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, 3, 4}));  // <s> ▁a b
}

// ---- corrupt inputs ------------------------------------------------------------------------

enum class Stage { kOpen, kConfig, kTensorMap, kTokenizer };

struct CorruptCase {
  const char* name;
  std::function<std::string()> bytes;
  Stage stage;
  const char* expect;  // substring of the error message
};

std::string tiny(const std::function<void(TinyGguf&)>& edit) {
  TinyGguf t = TinyGguf::llama();
  edit(t);
  return t.build();
}

std::string with_u32_at(std::string b, size_t pos, uint32_t v) {
  std::memcpy(b.data() + pos, &v, 4);
  return b;
}

constexpr uint64_t kHuge = 1ull << 60;

TEST(GgufCorrupt, TableOfDefects) {
  const std::vector<CorruptCase> cases = {
      {"empty file", [] { return std::string(); }, Stage::kOpen, "too short"},
      {"bad magic", [] { return tiny([](TinyGguf& t) { t.magic = "GGML"; }); }, Stage::kOpen,
       "expected 'GGUF'"},
      {"unsupported version 4", [] { return tiny([](TinyGguf& t) { t.version = 4; }); },
       Stage::kOpen, "GGUF version 4 is not supported"},
      {"version 1", [] { return tiny([](TinyGguf& t) { t.version = 1; }); }, Stage::kOpen,
       "GGUF version 1"},
      {"big-endian file", [] { return tiny([](TinyGguf& t) { t.version = 3u << 24; }); },
       Stage::kOpen, "big-endian"},
      {"truncated header", [] { return TinyGguf::llama().build().substr(0, 13); }, Stage::kOpen,
       "header field 'n_tensors'"},
      {"n_tensors huge", [] { return tiny([&](TinyGguf& t) { t.n_tensors = kHuge; }); },
       Stage::kOpen, "'n_tensors' is 1152921504606846976"},
      {"n_kv huge", [] { return tiny([](TinyGguf& t) { t.n_kv = ~0ull; }); }, Stage::kOpen,
       "'n_kv' is 18446744073709551615"},
      // The first tensor info is read as a 17th metadata entry; what follows is garbage.
      {"n_kv one too many", [] { return tiny([](TinyGguf& t) { t.n_kv = t.kvs.size() + 1; }); },
       Stage::kOpen, "name of tensor info #0 has length"},
      {"key length past EOF",
       [] { return tiny([&](TinyGguf& t) { t.append(Bytes().u64(kHuge).b); }); }, Stage::kOpen,
       "key of metadata entry #16 has length 1152921504606846976"},
      {"string length past EOF",
       [] {
         return tiny([&](TinyGguf& t) {
           t.append(kv_raw("general.description", 8, Bytes().u64(kHuge).b));
         });
       },
       Stage::kOpen, "past the end of the file"},
      {"array count huge",
       [] {
         return tiny([&](TinyGguf& t) {
           t.append(kv_raw("general.numbers", 9, Bytes().u32(4).u64(kHuge).b));
         });
       },
       Stage::kOpen, "claims an array of 1152921504606846976 u32 elements"},
      {"array count overflows bytes",
       [] {
         return tiny([&](TinyGguf& t) {
           t.append(kv_raw("general.numbers", 9, Bytes().u32(10).u64(1ull << 61).b));
         });
       },
       Stage::kOpen, "claims an array"},
      {"string array count huge",
       [] {
         return tiny([&](TinyGguf& t) {
           t.append(kv_raw("general.strings", 9, Bytes().u32(8).u64(kHuge).b));
         });
       },
       Stage::kOpen, "string elements"},
      {"unknown value type",
       [] { return tiny([&](TinyGguf& t) { t.append(kv_raw("general.x", 13, "abcd")); }); },
       Stage::kOpen, "unknown value type 13"},
      {"unknown array element type",
       [] {
         return tiny(
             [&](TinyGguf& t) { t.append(kv_raw("general.x", 9, Bytes().u32(77).u64(1).b)); });
       },
       Stage::kOpen, "array of unknown value type 77"},
      {"nested array",
       [] {
         return tiny([&](TinyGguf& t) {
           t.append(kv_raw("general.x", 9, Bytes().u32(9).u64(1).u32(4).u64(0).b));
         });
       },
       Stage::kOpen, "array of arrays"},
      {"bool value 2", [] { return tiny([&](TinyGguf& t) { t.set(kv_bool("general.flag", 2)); }); },
       Stage::kOpen, "expected 0 or 1"},
      {"duplicate metadata key",
       [] { return tiny([&](TinyGguf& t) { t.append(kv_u32("llama.block_count", 2)); }); },
       Stage::kOpen, "'llama.block_count' appears twice"},
      {"alignment not a power of two",
       [] { return tiny([&](TinyGguf& t) { t.set(kv_u32("general.alignment", 24)); }); },
       Stage::kOpen, "must be a power of two, found 24"},
      {"alignment zero",
       [] { return tiny([&](TinyGguf& t) { t.set(kv_u32("general.alignment", 0)); }); },
       Stage::kOpen, "must be a power of two, found 0"},
      {"alignment wrong type",
       [] { return tiny([&](TinyGguf& t) { t.set(kv_str("general.alignment", "32")); }); },
       Stage::kOpen, "'general.alignment' has type string"},
      {"n_dims 0", [] { return tiny([](TinyGguf& t) { t.tensors[1].ne = {}; }); }, Stage::kOpen,
       "n_dims is 0, expected 1..4"},
      {"n_dims 5", [] { return tiny([](TinyGguf& t) {
                          t.tensors[1].ne = {8, 1, 1, 1, 1};
                        }); },
       Stage::kOpen, "n_dims is 5, expected 1..4"},
      {"ne product overflow",
       [] {
         return tiny([](TinyGguf& t) { t.tensors[1].ne = {1ull << 32, 1ull << 32, 1ull << 32}; });
       },
       Stage::kOpen, "overflows 64 bits"},
      {"ne above int64", [] { return tiny([](TinyGguf& t) { t.tensors[1].ne = {1ull << 63}; }); },
       Stage::kOpen, "more than 2^63-1"},
      {"byte size overflow",
       [] { return tiny([](TinyGguf& t) { t.tensors[0].ne = {1ull << 62}; }); }, Stage::kOpen,
       "byte size of ne [4611686018427387904] as F32 overflows 64 bits"},
      {"tensor offset misaligned",
       [] { return tiny([](TinyGguf& t) { t.tensors[1].offset = 164; }); }, Stage::kOpen,
       "data offset 164 is not aligned to 32"},
      {"tensor data past EOF", [] { return tiny([](TinyGguf& t) { t.cut_tail = 4; }); },
       Stage::kOpen, "'output_norm.weight' (F32 [8], 32 bytes at data offset 352) runs past"},
      {"tensor offset huge",
       [] { return tiny([](TinyGguf& t) { t.tensors[1].offset = 1ull << 62; }); }, Stage::kOpen,
       "runs past the end of the file"},
      {"data section past EOF",
       [] {
         // The file ends right after the tensor infos, before the aligned data section.
         TinyGguf t = TinyGguf::llama();
         t.tensors = {{"empty", {0}, kGgmlTypeF32, {}}};
         std::string b = t.build();
         for (int pad = 1; t.info_end % 32 == 0; ++pad) {
           t.set(kv_str("general.name", std::string((size_t)pad, 'x')));
           b = t.build();
         }
         return b.substr(0, t.info_end);
       },
       Stage::kOpen, "the data section starts at offset"},
      {"duplicate tensor name",
       [] { return tiny([](TinyGguf& t) { t.tensors[2].name = t.tensors[1].name; }); },
       Stage::kOpen, "'blk.0.attn_q.weight' appears twice"},
      {"empty tensor name", [] { return tiny([](TinyGguf& t) { t.tensors[2].name = ""; }); },
       Stage::kOpen, "empty name"},
      {"overlapping tensors",
       [] { return tiny([](TinyGguf& t) { t.tensors[2].offset = 160 + 64; }); }, Stage::kOpen,
       "overlaps tensor 'blk.0.attn_q.weight'"},
      {"unknown ggml type", [] { return tiny([](TinyGguf& t) { t.tensors[1].type = 99; }); },
       Stage::kOpen, "unknown ggml type id 99"},
      {"removed ggml type", [] { return tiny([](TinyGguf& t) { t.tensors[1].type = 4; }); },
       Stage::kOpen, "unknown ggml type id 4"},
      {"partial quantization block",
       [] {
         return tiny([](TinyGguf& t) { t.tensors[1] = {"blk.0.attn_q.weight", {8, 8}, 2, {}}; });
       },
       Stage::kOpen, "not a multiple of 32, the block size of type Q4_0"},
      {"tensor count one too many",
       [] { return tiny([](TinyGguf& t) { t.n_tensors = t.tensors.size() + 1; }); }, Stage::kOpen,
       "tensor info #4"},
      {"quantized tensor type refused",
       [] {
         return tiny([](TinyGguf& t) {
           t.tensors[1] = {"blk.0.attn_q.weight", {32, 8}, kGgmlTypeQ4_0, {}};
         });
       },
       Stage::kTensorMap,
       "tensor 'blk.0.attn_q.weight' has quantized type Q4_0; palu loads f32/f16/bf16"},
      {"K-quant tensor type refused",
       [] {
         return tiny([](TinyGguf& t) { t.tensors[0] = {"token_embd.weight", {256, 5}, 12, {}}; });
       },
       Stage::kTensorMap, "quantized type Q4_K"},
      {"integer tensor type refused",
       [] { return tiny([](TinyGguf& t) { t.tensors[3].type = 26; }); }, Stage::kTensorMap,
       "has type I32"},
      {"tensor named like a Hugging Face tensor twice",
       [] {
         return tiny([](TinyGguf& t) {
           t.tensors.push_back({"model.norm.weight", {8}, kGgmlTypeF32, {}});
         });
       },
       Stage::kTensorMap, "'model.norm.weight' appears twice"},
      {"wrong architecture refused",
       [] { return tiny([](TinyGguf& t) { t.set(kv_str("general.architecture", "falcon")); }); },
       Stage::kConfig, "unknown architecture 'falcon'"},
      {"architecture missing",
       [] { return tiny([](TinyGguf& t) { t.erase("general.architecture"); }); }, Stage::kConfig,
       "'general.architecture' is missing"},
      {"required key missing",
       [] { return tiny([](TinyGguf& t) { t.erase("llama.block_count"); }); }, Stage::kConfig,
       "'llama.block_count' is missing"},
      {"key with wrong type",
       [] { return tiny([](TinyGguf& t) { t.set(kv_f32("llama.block_count", 1.0f)); }); },
       Stage::kConfig, "'llama.block_count' has type f32, expected an integer"},
      {"value out of int range",
       [] { return tiny([](TinyGguf& t) { t.set(kv_u32("llama.embedding_length", ~0u)); }); },
       Stage::kConfig, "'llama.embedding_length' is 4294967295"},
      {"bos outside vocabulary",
       [] { return tiny([](TinyGguf& t) { t.set(kv_u32("tokenizer.ggml.bos_token_id", 5)); }); },
       Stage::kConfig, "outside the vocabulary of 5 tokens"},
      {"rope scaling refused",
       [] { return tiny([](TinyGguf& t) { t.set(kv_str("llama.rope.scaling.type", "linear")); }); },
       Stage::kConfig, "'linear' is not supported"},
      {"partial rotary refused",
       [] { return tiny([](TinyGguf& t) { t.set(kv_u32("llama.rope.dimension_count", 2)); }); },
       Stage::kConfig, "partial rotary"},
      {"heads not a multiple of kv heads",
       [] { return tiny([](TinyGguf& t) { t.set(kv_u32("llama.attention.head_count_kv", 3)); }); },
       Stage::kConfig, "num_key_value_heads"},
      {"token_type length mismatch",
       [] {
         return tiny([](TinyGguf& t) { t.set(kv_i32_array("tokenizer.ggml.token_type", {2})); });
       },
       Stage::kTokenizer, "token_type has 1 entries, expected one per token (5)"},
      {"scores wrong type",
       [] {
         return tiny([](TinyGguf& t) {
           t.set(kv_i32_array("tokenizer.ggml.scores", {0, 0, 0, 0, 0}));
         });
       },
       Stage::kTokenizer, "'tokenizer.ggml.scores' has type array<i32>[5]"},
      {"token type out of range",
       [] {
         return tiny([](TinyGguf& t) {
           t.set(kv_i32_array("tokenizer.ggml.token_type", {2, 3, 3, 9, 1}));
         });
       },
       Stage::kTokenizer, "token_type[3] is 9, expected 0..6"},
      {"no unknown token",
       [] {
         return tiny([](TinyGguf& t) {
           t.set(kv_i32_array("tokenizer.ggml.token_type", {1, 3, 3, 1, 1}));
         });
       },
       Stage::kTokenizer, "not a valid SentencePiece model"},
      {"tokenizer model wrong type",
       [] { return tiny([](TinyGguf& t) { t.set(kv_u32("tokenizer.ggml.model", 1)); }); },
       Stage::kTokenizer, "'tokenizer.ggml.model' has type u32, expected string"},
      {"eos outside vocabulary (tokenizer)",
       [] { return tiny([](TinyGguf& t) { t.set(kv_u32("tokenizer.ggml.eos_token_id", 77)); }); },
       Stage::kTokenizer, "'tokenizer.ggml.eos_token_id' is 77"},
      // A valid file edited in place: the value type of the first entry.
      {"value type patched to 200",
       [] { return with_u32_at(TinyGguf::llama().build(), 24 + 8 + 20, 200); }, Stage::kOpen,
       "unknown value type 200"},
  };

  for (const CorruptCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::string name = c.name;
    for (char& ch : name) {
      if (!std::isalnum((unsigned char)ch)) ch = '_';
    }
    TempFile f(name, c.bytes());
    auto g = GgufFile::open(f.path());
    Status st;
    if (c.stage == Stage::kOpen) {
      ASSERT_FALSE(g.is_ok()) << "opened a file with defect: " << c.name;
      st = g.status();
    } else {
      ASSERT_TRUE(g.is_ok()) << g.status().to_string();
      if (c.stage == Stage::kConfig) {
        auto r = gguf_llama_config(*g);
        ASSERT_FALSE(r.is_ok());
        st = r.status();
      } else if (c.stage == Stage::kTensorMap) {
        auto r = gguf_tensor_map(*g);
        ASSERT_FALSE(r.is_ok());
        st = r.status();
      } else {
        auto r = gguf_tokenizer(*g);
        ASSERT_FALSE(r.is_ok());
        st = r.status();
      }
    }
    EXPECT_NE(st.message().find(c.expect), std::string::npos)
        << "expected '" << c.expect << "' in: " << st.to_string();
    EXPECT_NE(st.message().find(f.path()), std::string::npos)
        << "the message should name the file: " << st.to_string();
  }
}

TEST(GgufCorrupt, QuantizedAndWrongArchitectureCodes) {
  TempFile q("quant_code", tiny([](TinyGguf& t) {
               t.tensors[1] = {"blk.0.attn_q.weight", {32, 8}, kGgmlTypeQ4_0, {}};
             }));
  auto g = GgufFile::open(q.path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_EQ(gguf_tensor_map(*g).status().code(), StatusCode::kUnimplemented);
  TempFile a("arch_code",
             tiny([](TinyGguf& t) { t.set(kv_str("general.architecture", "qwen2")); }));
  auto h = GgufFile::open(a.path());
  ASSERT_TRUE(h.is_ok()) << h.status().to_string();
  EXPECT_EQ(gguf_llama_config(*h).status().code(), StatusCode::kUnimplemented);
}

TEST(GgufCorrupt, TinyValidFileParses) {
  TempFile f("tiny_valid", TinyGguf::llama().build());
  auto g = GgufFile::open(f.path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  auto c = gguf_llama_config(*g);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->head_dim, 4);
  EXPECT_TRUE(c->tie_word_embeddings);  // no output.weight
  auto m = gguf_tensor_map(*g);
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  EXPECT_EQ(m->find("model.layers.0.self_attn.q_proj.weight")->dtype, DType::kF16);
  EXPECT_EQ(m->find("model.layers.0.self_attn.k_proj.weight")->dtype, DType::kBF16);
  EXPECT_EQ(m->find("model.layers.0.self_attn.k_proj.weight")->shape, (std::vector<int64_t>{4, 8}));
  // A custom alignment is honoured.
  TempFile f64("tiny_align64", tiny([](TinyGguf& t) {
                 t.set(kv_u32("general.alignment", 64));
                 t.alignment = 64;
               }));
  auto g64 = GgufFile::open(f64.path());
  ASSERT_TRUE(g64.is_ok()) << g64.status().to_string();
  EXPECT_EQ(g64->alignment(), 64u);
  EXPECT_EQ(g64->data_offset() % 64, 0u);
  // Unknown tensors keep their GGUF name.
  TempFile fx("tiny_extra", tiny([](TinyGguf& t) {
                t.tensors.push_back({"rope_freqs.weight", {2}, kGgmlTypeF32, {}});
              }));
  auto gx = GgufFile::open(fx.path());
  ASSERT_TRUE(gx.is_ok()) << gx.status().to_string();
  auto mx = gguf_tensor_map(*gx);
  ASSERT_TRUE(mx.is_ok()) << mx.status().to_string();
  EXPECT_NE(mx->find("rope_freqs.weight"), nullptr);
}

// Opens `path` and, if that works, runs every consumer; nothing may crash.
bool open_and_consume(const std::string& path) {
  auto g = GgufFile::open(path);
  if (!g.is_ok()) {
    EXPECT_FALSE(g.status().message().empty());
    return false;
  }
  (void)gguf_llama_config(*g);
  auto m = gguf_tensor_map(*g);
  if (m.is_ok()) {
    // Touch every byte of every tensor: the views must lie inside the mapping.
    uint8_t acc = 0;
    for (const auto& [name, v] : m->tensors()) {
      for (size_t k = 0; k < v.nbytes; k += 997) acc ^= v.data[k];
      if (v.nbytes) acc ^= v.data[v.nbytes - 1];
    }
    (void)acc;
  }
  auto tok = gguf_tokenizer(*g);
  if (tok.is_ok()) (void)(*tok)->encode("hello world", true);
  return true;
}

TEST(GgufCorrupt, TruncatedAtEveryByteOfTinyFile) {
  const std::string full = TinyGguf::llama().build();
  // Shrink one file byte by byte from the end (cheaper than rewriting it each time).
  TempFile f("trunc_tiny", full);
  for (size_t len = full.size(); len-- > 0;) {
    f.resize(len);
    EXPECT_FALSE(open_and_consume(f.path()))
        << "a file truncated to " << len << " of " << full.size() << " bytes was accepted";
  }
  f.write(full);
  EXPECT_TRUE(open_and_consume(f.path()));
}

TEST(GgufCorrupt, TruncatedAtEveryByteOfStoriesHeader) {
  const std::string full = read_file_bytes(stories_path());
  ASSERT_GT(full.size(), 20000u);
  auto g = GgufFile::open(stories_path());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  const size_t header_end = g->data_offset();  // header, metadata and tensor infos
  TempFile f("trunc_stories", std::string_view(full).substr(0, header_end + 64));
  for (size_t len = header_end + 64 + 1; len-- > 0;) {
    f.resize(len);
    EXPECT_FALSE(open_and_consume(f.path())) << "truncated to " << len << " bytes";
  }
  // Cutting into the data section fails too.
  for (size_t cut : {1u, 4u, 1000u, 300000u}) {
    f.write(std::string_view(full).substr(0, full.size() - cut));
    EXPECT_FALSE(open_and_consume(f.path())) << "cut " << cut << " bytes";
  }
}

TEST(GgufCorrupt, RandomByteFlipsDoNotCrash) {
  std::mt19937_64 rng(20240611);
  {
    const std::string full = TinyGguf::llama().build();
    TempFile f("flip_tiny", "");
    int opened = 0;
    for (int iter = 0; iter < 3000; ++iter) {
      std::string b = full;
      const int flips = 1 + (int)(rng() % 4);
      for (int k = 0; k < flips; ++k) b[rng() % b.size()] ^= (char)(1u << (rng() % 8));
      f.write(b);
      opened += open_and_consume(f.path()) ? 1 : 0;
    }
    std::printf("tiny file: %d of 3000 mutations still opened\n", opened);
  }
  {
    const std::string full = read_file_bytes(stories_path());
    auto g = GgufFile::open(stories_path());
    ASSERT_TRUE(g.is_ok());
    const size_t header_end = g->data_offset();
    // Mutate the header region in place (rewriting 1 MB per case is slow), then restore it.
    const std::string_view header = std::string_view(full).substr(0, header_end);
    TempFile f("flip_stories", full);
    int opened = 0;
    for (int iter = 0; iter < 300; ++iter) {
      std::string b(header);
      const int flips = 1 + (int)(rng() % 3);
      for (int k = 0; k < flips; ++k) {
        const size_t pos = rng() % header_end;
        // Mostly single-bit flips; sometimes a whole byte set to 0xff (large counts).
        if (rng() % 4 == 0)
          b[pos] = (char)0xff;
        else
          b[pos] ^= (char)(1u << (rng() % 8));
      }
      f.patch(0, b);
      opened += open_and_consume(f.path()) ? 1 : 0;
      f.patch(0, header);
    }
    std::printf("stories260K: %d of 300 mutations still opened\n", opened);
  }
}

}  // namespace
}  // namespace palu::model
