// Tokenizer: text ↔ token ids, behind one interface for every vocabulary kind.
//
// Implementations: SentencePiece (tokenizer.model files, and GGUF "llama" vocabularies turned
// into a SentencePiece model in memory); byte-level BPE (issue 10) plugs in here too.
// Thread-safety: encode/decode are const and safe to call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "backends/base/status.h"

namespace palu::model {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`; a BOS id first when `add_bos` (and the vocabulary has one).
  virtual Result<std::vector<int32_t>> encode(std::string_view text, bool add_bos) const = 0;
  // The text of `ids` (special tokens such as BOS/EOS produce no text).
  virtual Result<std::string> decode(const std::vector<int32_t>& ids) const = 0;
  // The piece of one id as stored in the vocabulary (e.g. "▁the", "<0x0A>").
  virtual std::string id_to_piece(int32_t id) const = 0;
  // Bytes that `id` contributes when it follows `prev` in a stream (handles the leading
  // space of SentencePiece and byte-fallback pieces). Used for streaming output; a
  // multi-byte UTF-8 character split over several byte tokens comes out byte by byte, and
  // the caller holds back incomplete sequences (see Utf8Streamer).
  virtual std::string token_bytes(int32_t id, int32_t prev) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // −1 when there is none
  virtual int32_t eos_id() const = 0;  // −1 when there is none
  virtual std::string kind() const = 0;  // "sentencepiece", "bpe", ...
};

// Holds back an incomplete UTF-8 sequence at the end of a stream of byte chunks.
class Utf8Streamer {
 public:
  // Appends `bytes`; returns what can be printed now (complete characters; invalid bytes
  // are passed through as they are so nothing is lost).
  std::string push(std::string_view bytes);
  // Whatever is still held back.
  std::string flush();

 private:
  std::string pending_;
};

// SentencePiece from a serialized ModelProto (the contents of a tokenizer.model file).
Result<std::unique_ptr<Tokenizer>> make_sentencepiece_tokenizer(std::string_view model_proto,
                                                                std::string origin);
// SentencePiece from a tokenizer.model file.
Result<std::unique_ptr<Tokenizer>> load_sentencepiece_tokenizer(const std::string& path);

}  // namespace palu::model
