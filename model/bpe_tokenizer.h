// Byte-level BPE tokenizer (GPT-2 family: Llama-3, Qwen2, GGUF "gpt2" vocabularies).
//
// Encoding: (1) special / added tokens are cut out of the text (user-defined added tokens
// always, control tokens such as <|eot_id|> only with EncodeOptions::parse_special); (2) each
// remaining segment is split into pre-tokens by the vocabulary's split regex (PCRE2, UTF + UCP
// mode); (3) each pre-token starts as one token per byte and adjacent pairs are merged, lowest
// merge rank first (leftmost on ties), until no pair has a merge. With `ignore_merges` (Llama-3)
// a pre-token that is itself a token is emitted whole first, as tiktoken and Hugging Face do.
//
// Bytes that are not valid UTF-8: every byte has a token in a byte-level vocabulary, so
// nothing is lost or replaced. The split regex cannot match invalid UTF-8, so each maximal run
// of bytes that no regex alternative matched (in practice: the invalid bytes) forms a pre-token
// of its own and is merged like any other. decode(encode(x)) == x for every byte string x
// (without parse_special; with it, control tokens decode to nothing unless rendered).
//
// Token strings: vocabularies in Hugging Face / GGUF form store normal tokens in GPT-2's
// byte-to-unicode form ("Ġthe" for " the"); control and user-defined tokens as raw text.
// id_to_piece() returns that stored form; token_bytes() and decode() return raw bytes.
//
// Ownership: a BpeTokenizer owns all its tables. Thread-safety: immutable after construction;
// every const method may be called concurrently. Errors are Status values naming the file
// (`origin`), the line / field, the expected and the found value.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backends/base/status.h"
#include "model/tokenizer.h"

namespace palu::model {

namespace detail {
struct BpeState;  // the tables, defined in bpe_tokenizer.cc
}  // namespace detail

// Token types, numbered as GGUF's tokenizer.ggml.token_type (llama.cpp's llama_token_type).
enum class BpeTokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // BOS, EOS, <|eot_id|>: matched in text only with parse_special; no text
  kUserDefined = 4,  // added tokens: always matched in text; decode to their raw text
  kUnused = 5,       // holes in the id space; decode to nothing
  kByte = 6,         // treated as kNormal
};

// A pre-tokenizer: the split regex (PCRE2 syntax) and whether a pre-token that is a whole
// token is emitted without merging.
struct BpePreTokenizer {
  std::string regex;
  bool ignore_merges = false;
};

// The pre-tokenizer of a name: "llama3" / "llama-bpe" / "llama-v3" (Llama-3; digits in runs of
// up to 3; ignore_merges), "qwen2" / "deepseek-r1-qwen" (digits one by one), "gpt2" / "gpt-2" /
// "default" (GPT-2). The names include GGUF's tokenizer.ggml.pre values. UNIMPLEMENTED for
// other names, listing the supported ones.
Result<BpePreTokenizer> bpe_pre_tokenizer(std::string_view name);

// An in-memory vocabulary (e.g. from GGUF metadata: tokenizer.ggml.tokens / merges /
// token_type with tokenizer.ggml.model == "gpt2").
struct BpeVocab {
  std::vector<std::string> tokens;   // by id; normal tokens in byte-level form, others raw
  std::vector<int32_t> token_types;  // BpeTokenType values by id; empty: all normal
  // Merges in rank order (rank = index), as pairs of token strings in byte-level form.
  std::vector<std::pair<std::string, std::string>> merges;
  BpePreTokenizer pre_tokenizer;
  int32_t bos_id = -1;  // −1: none
  int32_t eos_id = -1;
};

// Splits merges stored as "left right" strings (GGUF, older tokenizer.json) into pairs.
// DATA_LOSS naming the index when an entry does not have exactly one space.
Result<std::vector<std::pair<std::string, std::string>>> split_bpe_merges(
    const std::vector<std::string>& lines, std::string_view origin);

// Special-token settings from outside the vocabulary file (a model's tokenizer_config.json).
struct BpeSpecialConfig {
  std::optional<std::string> bos_token;  // text of BOS; "" = none; nullopt = the format's default
  std::optional<std::string> eos_token;
  // tiktoken files: special-token texts by id, replacing entries of Meta's Llama-3 layout
  // (e.g. Llama-3.1's <|eom_id|> at 128008).
  std::map<int32_t, std::string> names;
};

class BpeTokenizer final : public Tokenizer {
 public:
  struct EncodeOptions {
    bool add_bos = false;        // prepend BOS when the vocabulary has one
    bool parse_special = false;  // recognise control tokens (<|eot_id|>, ...) in the text
  };

  // From in-memory arrays (the GGUF "gpt2" path). DATA_LOSS when a merge names a token that
  // is not in the vocabulary or whose concatenation is not one, when an id is out of range.
  static Result<std::unique_ptr<BpeTokenizer>> from_vocab(const BpeVocab& vocab,
                                                          std::string origin);
  // From Meta's tiktoken-style tokenizer.model text: one "<base64 token> <rank>" per line,
  // rank = id. Special tokens follow at max rank + 1 in Meta's Llama-3 layout (256 of them:
  // <|begin_of_text|>, <|end_of_text|>, <|reserved_special_token_0..3|>, <|start_header_id|>,
  // <|end_header_id|>, <|reserved_special_token_4|>, <|eot_id|>,
  // <|reserved_special_token_5..250|>), with `config.names` replacing entries. Pre-tokenizer:
  // Llama-3. BOS <|begin_of_text|>, EOS <|end_of_text|> unless `config` says otherwise.
  static Result<std::unique_ptr<BpeTokenizer>> from_tiktoken(std::string_view text,
                                                             const BpeSpecialConfig& config,
                                                             std::string origin);
  // From a Hugging Face tokenizer.json: model.type "BPE" with a ByteLevel pre-tokenizer
  // (alone, or after one regex Split), vocab, merges ("a b" strings or ["a", "b"] arrays),
  // added_tokens (special → control, else user-defined). A normalizer of type NFC is accepted
  // but not applied (input is taken as already normalised). BOS from the post_processor
  // template, else <|begin_of_text|> / <s> when present; EOS <|end_of_text|> / </s> /
  // <|endoftext|> / <|im_end|> when present; `config` overrides both. UNIMPLEMENTED for other
  // model types and pre-tokenizers.
  static Result<std::unique_ptr<BpeTokenizer>> from_tokenizer_json(std::string_view json,
                                                                   const BpeSpecialConfig& config,
                                                                   std::string origin);

  ~BpeTokenizer() override;
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  // Tokenizer: encode() never parses control tokens in the text.
  Result<std::vector<int32_t>> encode(std::string_view text, bool add_bos) const override;
  Result<std::vector<int32_t>> encode(std::string_view text, const EncodeOptions& options) const;
  // Control tokens decode to nothing unless `render_special` (then to their text).
  Result<std::string> decode(const std::vector<int32_t>& ids) const override;
  Result<std::string> decode(const std::vector<int32_t>& ids, bool render_special) const;
  std::string id_to_piece(int32_t id) const override;
  std::string token_bytes(int32_t id, int32_t prev) const override;
  int32_t vocab_size() const override;
  int32_t bos_id() const override;
  int32_t eos_id() const override;
  std::string kind() const override { return "bpe"; }

  // The pre-tokens of `text` (views into it), special tokens not considered.
  Result<std::vector<std::string_view>> pre_tokenize(std::string_view text) const;
  // Id of a control or user-defined token by its text, −1 when there is none.
  int32_t special_token_id(std::string_view text) const;
  // Type of `id`; kUnused outside the vocabulary.
  BpeTokenType token_type(int32_t id) const;
  // Number of merge rules (pairs of adjacent tokens that merge).
  size_t merge_count() const;

 private:
  explicit BpeTokenizer(std::unique_ptr<detail::BpeState> state);
  std::unique_ptr<detail::BpeState> s_;
};

}  // namespace palu::model
