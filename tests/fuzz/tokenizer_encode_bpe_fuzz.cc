// Fuzz target: arbitrary bytes as text through a real byte-level BPE tokenizer (Llama-3's
// tiktoken tokenizer.model from shared/). Checks the documented property
// decode(encode(x)) == x for every byte string x (without parse_special), ids in the vocabulary,
// and that ids taken straight from the input are refused or decoded, never a crash.
#include <cstdint>
#include <cstring>

#include "model/bpe_tokenizer.h"
#include "model/tokenizer_loader.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<palu::model::Tokenizer> tok = [] {
    auto t = palu::model::load_tokenizer_file(palu::fuzz::shared_file("tokenizers/llama3/tokenizer.model"));
    PALU_FUZZ_CHECK(t.is_ok(), t.status().message().c_str());
    PALU_FUZZ_CHECK((*t)->kind() == "bpe", "llama3 tokenizer.model is byte-level BPE");
    return std::move(t).value();
  }();
  const auto& bpe = static_cast<const palu::model::BpeTokenizer&>(*tok);
  const std::string_view text = palu::fuzz::as_view(data, size);
  palu::model::BpeTokenizer::EncodeOptions options;
  options.add_bos = size > 0 && (data[0] & 1);
  auto ids = bpe.encode(text, options);
  PALU_FUZZ_CHECK(ids.is_ok(), ids.status().message().c_str());
  for (int32_t id : *ids) PALU_FUZZ_CHECK(id >= 0 && id < bpe.vocab_size(), "encoded ids lie in the vocabulary");
  auto back = bpe.decode(*ids);
  PALU_FUZZ_CHECK(back.is_ok(), back.status().message().c_str());
  PALU_FUZZ_CHECK(*back == text, "decode(encode(x)) == x");

  options.parse_special = true;
  if (auto special = bpe.encode(text, options); special.is_ok()) {
    for (int32_t id : *special) PALU_FUZZ_CHECK(id >= 0 && id < bpe.vocab_size(), "ids in the vocabulary");
    (void)bpe.decode(*special, /*render_special=*/true);
  }
  std::vector<int32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  (void)bpe.decode(raw);
  for (int32_t id : raw) (void)bpe.token_bytes(id, -1);
  return 0;
}
