// GGUF vocabulary → tokenizer. A "llama" (SentencePiece) vocabulary becomes a SentencePiece
// ModelProto, serialized here by hand (the generated protobuf headers of libsentencepiece are
// not installed), and is handed to make_sentencepiece_tokenizer().
//
// Field numbers, from sentencepiece_model.proto (checked with `protoc --decode_raw` against
// real tokenizer.model files):
//   ModelProto     { repeated SentencePiece pieces = 1; TrainerSpec trainer_spec = 2;
//                    NormalizerSpec normalizer_spec = 3; }
//   SentencePiece  { string piece = 1; float score = 2; Type type = 3; }
//   TrainerSpec    { ModelType model_type = 3; int32 vocab_size = 4; bool byte_fallback = 35;
//                    int32 unk_id = 40, bos_id = 41, eos_id = 42, pad_id = 43;
//                    string unk_piece = 45, bos_piece = 46, eos_piece = 47; }
//   NormalizerSpec { string name = 1; bytes precompiled_charsmap = 2; bool add_dummy_prefix = 3;
//                    bool remove_extra_whitespaces = 4; bool escape_whitespaces = 5; }
#include <cstring>
#include <limits>

#include "model/bpe_tokenizer.h"
#include "model/gguf.h"

namespace palu::model {
namespace {

// Minimal protobuf wire-format writer (proto2 semantics: every field we set is written).
class ProtoWriter {
 public:
  void varint_field(int field, uint64_t v) {
    tag(field, 0);
    varint(v);
  }
  // int32 fields encode negative values as 10-byte varints of the sign-extended value.
  void int32_field(int field, int32_t v) { varint_field(field, (uint64_t)(int64_t)v); }
  void bool_field(int field, bool v) { varint_field(field, v ? 1 : 0); }
  void float_field(int field, float v) {
    tag(field, 5);
    char b[4];
    std::memcpy(b, &v, 4);  // little-endian host (checked in gguf.cc)
    buf_.append(b, 4);
  }
  void bytes_field(int field, std::string_view s) {
    tag(field, 2);
    varint(s.size());
    buf_.append(s.data(), s.size());
  }
  const std::string& bytes() const { return buf_; }

 private:
  void tag(int field, int wire_type) { varint(((uint64_t)field << 3) | (uint64_t)wire_type); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      buf_.push_back((char)((v & 0x7f) | 0x80));
      v >>= 7;
    }
    buf_.push_back((char)v);
  }
  std::string buf_;
};

// SentencePiece ModelProto.SentencePiece.Type
enum SpType : int {
  kSpNormal = 1,
  kSpUnknown = 2,
  kSpControl = 3,
  kSpUserDefined = 4,
  kSpUnused = 5,
  kSpByte = 6
};
constexpr int kSpModelBpe = 2;

// GGUF token types (llama.cpp's llama_token_type) have the same numbering; 0 (undefined) is
// treated as normal.
Result<int> sp_type_of(int32_t gguf_type, size_t id, const std::string& path) {
  if (gguf_type == 0) return kSpNormal;
  if (gguf_type >= kSpNormal && gguf_type <= kSpByte) return gguf_type;
  return data_loss(path + ": tokenizer.ggml.token_type[" + std::to_string(id) + "] is " +
                   std::to_string(gguf_type) + ", expected 0..6");
}

// Optional token id key: -1 when missing or outside the vocabulary of `n` tokens is an error.
Result<int32_t> token_id_or_none(const GgufFile& g, std::string_view key, size_t n) {
  if (!g.has(key)) return -1;
  PALU_ASSIGN_OR_RETURN(uint32_t v, g.get_u32(key));
  if (v >= n) {
    return data_loss(g.path() + ": metadata key '" + std::string(key) + "' is " +
                     std::to_string(v) + ", outside the vocabulary of " + std::to_string(n) +
                     " tokens");
  }
  return (int32_t)v;
}

}  // namespace

Result<std::string> gguf_sentencepiece_model_proto(const GgufFile& g) {
  const std::string& path = g.path();
  PALU_ASSIGN_OR_RETURN(std::string_view model, g.get_string("tokenizer.ggml.model"));
  if (model != "llama") {
    return unimplemented(path + ": tokenizer.ggml.model '" + std::string(model.substr(0, 64)) +
                         "' is not a SentencePiece ('llama') vocabulary");
  }
  PALU_ASSIGN_OR_RETURN(std::vector<std::string> tokens,
                        g.get_string_array("tokenizer.ggml.tokens"));
  const size_t n = tokens.size();
  if (n == 0) return data_loss(path + ": tokenizer.ggml.tokens is empty");
  if (n > (size_t)std::numeric_limits<int32_t>::max()) {
    return data_loss(path + ": tokenizer.ggml.tokens has " + std::to_string(n) + " entries");
  }
  // Scores and types are optional (llama.cpp defaults them to 0 and normal) but, when
  // present, must have one entry per token.
  std::vector<float> scores(n, 0.0f);
  if (g.has("tokenizer.ggml.scores")) {
    PALU_ASSIGN_OR_RETURN(scores, g.get_f32_array("tokenizer.ggml.scores"));
    if (scores.size() != n) {
      return data_loss(path + ": tokenizer.ggml.scores has " + std::to_string(scores.size()) +
                       " entries, expected one per token (" + std::to_string(n) + ")");
    }
  }
  std::vector<int32_t> types(n, 1);
  if (g.has("tokenizer.ggml.token_type")) {
    PALU_ASSIGN_OR_RETURN(types, g.get_i32_array("tokenizer.ggml.token_type"));
    if (types.size() != n) {
      return data_loss(path + ": tokenizer.ggml.token_type has " + std::to_string(types.size()) +
                       " entries, expected one per token (" + std::to_string(n) + ")");
    }
  }
  PALU_ASSIGN_OR_RETURN(int32_t bos, token_id_or_none(g, "tokenizer.ggml.bos_token_id", n));
  PALU_ASSIGN_OR_RETURN(int32_t eos, token_id_or_none(g, "tokenizer.ggml.eos_token_id", n));
  PALU_ASSIGN_OR_RETURN(int32_t unk, token_id_or_none(g, "tokenizer.ggml.unknown_token_id", n));
  PALU_ASSIGN_OR_RETURN(bool add_space_prefix,
                        g.get_bool_or("tokenizer.ggml.add_space_prefix", true));
  PALU_ASSIGN_OR_RETURN(bool remove_extra_ws,
                        g.get_bool_or("tokenizer.ggml.remove_extra_whitespaces", false));

  ProtoWriter model_proto;
  bool has_byte_pieces = false;
  int32_t unk_typed = -1;
  for (size_t id = 0; id < n; ++id) {
    PALU_ASSIGN_OR_RETURN(int type, sp_type_of(types[id], id, path));
    if (type == kSpByte) has_byte_pieces = true;
    if (type == kSpUnknown && unk_typed < 0) unk_typed = (int32_t)id;
    ProtoWriter piece;
    piece.bytes_field(1, tokens[id]);
    piece.float_field(2, scores[id]);
    piece.varint_field(3, (uint64_t)type);
    model_proto.bytes_field(1, piece.bytes());
  }
  if (unk < 0) unk = unk_typed;

  // SentencePiece finds BOS/EOS through their piece strings; an empty piece maps to <unk>,
  // which is not a control piece, so bos_id()/eos_id() then report −1.
  ProtoWriter trainer;
  trainer.int32_field(3, kSpModelBpe);  // llama.cpp's SPM tokenizer merges by score, as BPE does
  trainer.int32_field(4, (int32_t)n);
  trainer.bool_field(35, has_byte_pieces);
  trainer.int32_field(40, unk);
  trainer.int32_field(41, bos);
  trainer.int32_field(42, eos);
  trainer.int32_field(43, -1);
  if (unk >= 0) trainer.bytes_field(45, tokens[unk]);
  trainer.bytes_field(46, bos >= 0 ? std::string_view(tokens[bos]) : std::string_view());
  trainer.bytes_field(47, eos >= 0 ? std::string_view(tokens[eos]) : std::string_view());
  model_proto.bytes_field(2, trainer.bytes());

  // llama.cpp applies no Unicode normalization to SPM vocabularies: identity, spaces → "▁".
  ProtoWriter normalizer;
  normalizer.bytes_field(1, "identity");
  normalizer.bytes_field(2, "");
  normalizer.bool_field(3, add_space_prefix);
  normalizer.bool_field(4, remove_extra_ws);
  normalizer.bool_field(5, true);
  model_proto.bytes_field(3, normalizer.bytes());
  return model_proto.bytes();
}

Result<std::unique_ptr<Tokenizer>> gguf_tokenizer(const GgufFile& g) {
  PALU_ASSIGN_OR_RETURN(std::string_view model, g.get_string("tokenizer.ggml.model"));
  if (model == "gpt2") {
    // Byte-level BPE (Llama-3, Qwen2, ...): tokens, merges, token types, pre-tokenizer name.
    BpeVocab v;
    PALU_ASSIGN_OR_RETURN(v.tokens, g.get_string_array("tokenizer.ggml.tokens"));
    if (g.has("tokenizer.ggml.token_type")) {
      PALU_ASSIGN_OR_RETURN(v.token_types, g.get_i32_array("tokenizer.ggml.token_type"));
    }
    PALU_ASSIGN_OR_RETURN(std::vector<std::string> merges, g.get_string_array("tokenizer.ggml.merges"));
    PALU_ASSIGN_OR_RETURN(v.merges, split_bpe_merges(merges, g.path()));
    PALU_ASSIGN_OR_RETURN(std::string_view pre, g.get_string_or("tokenizer.ggml.pre", "default"));
    PALU_ASSIGN_OR_RETURN(v.pre_tokenizer, bpe_pre_tokenizer(pre));
    if (g.has("tokenizer.ggml.bos_token_id")) {
      PALU_ASSIGN_OR_RETURN(uint32_t bos, g.get_u32("tokenizer.ggml.bos_token_id"));
      v.bos_id = (int32_t)bos;
    }
    if (g.has("tokenizer.ggml.eos_token_id")) {
      PALU_ASSIGN_OR_RETURN(uint32_t eos, g.get_u32("tokenizer.ggml.eos_token_id"));
      v.eos_id = (int32_t)eos;
    }
    PALU_ASSIGN_OR_RETURN(auto bpe, BpeTokenizer::from_vocab(v, g.path() + " (GGUF vocabulary)"));
    return std::unique_ptr<Tokenizer>(std::move(bpe));
  }
  if (model != "llama") {
    return unimplemented(g.path() + ": tokenizer.ggml.model '" + std::string(model.substr(0, 64)) +
                         "' is not supported (palu reads 'llama' (SentencePiece) and 'gpt2' (byte-level BPE))");
  }
  PALU_ASSIGN_OR_RETURN(std::string proto, gguf_sentencepiece_model_proto(g));
  return make_sentencepiece_tokenizer(proto, g.path() + " (GGUF vocabulary)");
}

}  // namespace palu::model
