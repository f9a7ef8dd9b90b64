// Fuzz target: a tokenizer file of any kind through load_tokenizer_file, the loader of a model's
// tokenizer: the content picks the parser (GGUF vocabulary, Hugging Face tokenizer.json,
// tiktoken text, else a SentencePiece ModelProto). A tokenizer that loads must encode and decode
// a short text with ids inside its vocabulary.
#include <cstdint>

#include "model/tokenizer_loader.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The name is neutral (no .json): the content alone picks the kind, as for tokenizer.model.
  const std::string path = palu::fuzz::write_scratch_file("tokenizer.model", palu::fuzz::as_view(data, size));
  auto tok = palu::model::load_tokenizer_file(path);
  if (!tok.is_ok()) {
    PALU_FUZZ_CHECK(!tok.status().message().empty(), "an error names its problem");
    return 0;
  }
  const palu::model::Tokenizer& t = **tok;
  PALU_FUZZ_CHECK(t.vocab_size() > 0, "a loaded vocabulary is not empty");
  auto ids = t.encode("Hello world, 123 \xc3\xa9\xe2\x82\xac!\n", true);
  if (!ids.is_ok()) return 0;  // e.g. a vocabulary without byte tokens: an error, not a crash
  int32_t prev = -1;
  for (int32_t id : *ids) {
    PALU_FUZZ_CHECK(id >= 0 && id < t.vocab_size(), "encoded ids lie in the vocabulary");
    (void)t.id_to_piece(id);
    (void)t.token_bytes(id, prev);
    prev = id;
  }
  (void)t.decode(*ids);
  return 0;
}
