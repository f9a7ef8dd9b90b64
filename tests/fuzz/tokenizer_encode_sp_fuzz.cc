// Fuzz target: arbitrary bytes as text through a real SentencePiece tokenizer (Llama-2's
// tokenizer.model from shared/): encode, then decode, piece and streaming bytes of every id,
// and the UTF-8 streamer over those bytes. Ids must lie in the vocabulary.
#include <cstdint>
#include <cstring>
#include <memory>

#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<palu::model::Tokenizer> tok = [] {
    auto t = palu::model::load_sentencepiece_tokenizer(palu::fuzz::shared_file("tokenizers/llama2/tokenizer.model"));
    PALU_FUZZ_CHECK(t.is_ok(), t.status().message().c_str());
    return std::move(t).value();
  }();
  const std::string_view text = palu::fuzz::as_view(data, size);
  auto ids = tok->encode(text, size > 0 && (data[0] & 1));
  if (!ids.is_ok()) {
    PALU_FUZZ_CHECK(!ids.status().message().empty(), "an error names its problem");
    return 0;
  }
  palu::model::Utf8Streamer streamer;
  int32_t prev = -1;
  for (int32_t id : *ids) {
    PALU_FUZZ_CHECK(id >= 0 && id < tok->vocab_size(), "encoded ids lie in the vocabulary");
    (void)tok->id_to_piece(id);
    (void)streamer.push(tok->token_bytes(id, prev));
    prev = id;
  }
  (void)streamer.flush();
  (void)tok->decode(*ids);
  // Ids straight from the input (in and out of range) must be refused or decoded, never crash.
  std::vector<int32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  (void)tok->decode(raw);
  for (int32_t id : raw) (void)tok->token_bytes(id, -1);
  return 0;
}
