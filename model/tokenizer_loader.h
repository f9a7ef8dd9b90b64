// Picks and loads the tokenizer of a model from its files, behind the Tokenizer interface.
//
// A file is recognised by its content (the name only breaks ties):
//   * "GGUF" magic                      → the vocabulary embedded in a GGUF model (gguf_tokenizer)
//   * JSON object / *.json              → Hugging Face tokenizer.json (byte-level BPE)
//   * "<base64> <rank>" text lines      → Meta's tiktoken tokenizer.model (Llama-3 BPE)
//   * anything else                     → SentencePiece ModelProto (tokenizer.model of Llama-2,
//                                         Mistral, TinyLlama)
// For tokenizer.json and tiktoken files, a tokenizer_config.json in the same directory (when
// present) supplies bos_token / eos_token and, for tiktoken, the special-token names
// (added_tokens_decoder).
//
// Ownership: the returned tokenizer owns everything it needs; the files may be removed after.
// Thread-safety: the functions share no state. Errors: NOT_FOUND for missing files or
// directories (naming them), DATA_LOSS for corrupt files, UNIMPLEMENTED for valid files of a
// kind we do not support.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "backends/base/status.h"
#include "model/bpe_tokenizer.h"
#include "model/tokenizer.h"

namespace palu::model {

enum class TokenizerFileKind { kSentencePiece, kTiktoken, kTokenizerJson, kGguf };

// The kind of a tokenizer file from its first bytes (and its name for JSON).
TokenizerFileKind sniff_tokenizer_file(std::string_view head, std::string_view path);

// Loads one tokenizer file of any kind above.
Result<std::unique_ptr<Tokenizer>> load_tokenizer_file(const std::string& path);

// Loads the tokenizer of a model directory: tokenizer.model when present, else tokenizer.json.
// NOT_FOUND naming the directory when it has neither.
Result<std::unique_ptr<Tokenizer>> load_tokenizer_from_dir(const std::string& dir);

// A tokenizer with more pieces than the model's embedding rows would index past them:
// INVALID_ARGUMENT naming `path` and both counts (load_model and palu-compress check it).
Status check_tokenizer_fits(const Tokenizer& tokenizer, int model_vocab_size, const std::string& path);

// The special-token settings of a Hugging Face tokenizer_config.json: bos_token / eos_token
// (a string, an {"content": ...} object, or null for none) and added_tokens_decoder names.
Result<BpeSpecialConfig> parse_tokenizer_config_json(std::string_view json,
                                                     const std::string& origin);

}  // namespace palu::model
