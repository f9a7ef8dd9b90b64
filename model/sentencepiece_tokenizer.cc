// SentencePiece tokenizer through libsentencepiece.
#include <sentencepiece_processor.h>

#include "model/mapped_file.h"
#include "model/tokenizer.h"

namespace palu::model {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp)
      : sp_(std::move(sp)) {
    // "▁" (U+2581) marks a word-initial space in SentencePiece pieces.
    pieces_.reserve(sp_->GetPieceSize());
    for (int i = 0; i < sp_->GetPieceSize(); ++i) pieces_.push_back(sp_->IdToPiece(i));
  }

  Result<std::vector<int32_t>> encode(std::string_view text, bool add_bos) const override {
    std::vector<int> ids;
    const auto st = sp_->Encode(absl_view(text), &ids);
    if (!st.ok()) return invalid_argument("sentencepiece encode failed: " + st.ToString());
    std::vector<int32_t> out;
    out.reserve(ids.size() + 1);
    if (add_bos && bos_id() >= 0) out.push_back(bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  Result<std::string> decode(const std::vector<int32_t>& ids) const override {
    std::vector<int> v;
    v.reserve(ids.size());
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size()) {
        return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                std::to_string(vocab_size()) + ")");
      }
      v.push_back(id);
    }
    std::string text;
    const auto st = sp_->Decode(v, &text);
    if (!st.ok()) return invalid_argument("sentencepiece decode failed: " + st.ToString());
    return text;
  }

  std::string id_to_piece(int32_t id) const override {
    if (id < 0 || id >= vocab_size()) return "";
    return pieces_[id];
  }

  std::string token_bytes(int32_t id, int32_t prev) const override {
    if (id < 0 || id >= vocab_size()) return "";
    if (sp_->IsControl(id) || sp_->IsUnused(id)) return "";
    if (sp_->IsUnknown(id)) return "\xE2\x81\x87";  // " ⁇ " as sentencepiece prints it, minus spaces
    const std::string& p = pieces_[id];
    if (sp_->IsByte(id)) {
      // "<0xAB>"
      if (p.size() == 6) return std::string(1, (char)std::stoi(p.substr(3, 2), nullptr, 16));
      return "";
    }
    std::string s;
    s.reserve(p.size());
    for (size_t i = 0; i < p.size();) {
      if (p.compare(i, 3, "\xE2\x96\x81") == 0) {
        s += ' ';
        i += 3;
      } else {
        s += p[i++];
      }
    }
    // The first piece after BOS (or at the start) drops the dummy-prefix space.
    const bool at_start = prev < 0 || sp_->IsControl(prev);
    if (at_start && !s.empty() && s[0] == ' ') s.erase(0, 1);
    return s;
  }

  int32_t vocab_size() const override { return sp_->GetPieceSize(); }
  int32_t bos_id() const override { return sp_->bos_id(); }
  int32_t eos_id() const override { return sp_->eos_id(); }
  std::string kind() const override { return "sentencepiece"; }

 private:
  static absl::string_view absl_view(std::string_view s) { return absl::string_view(s.data(), s.size()); }
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<std::string> pieces_;
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> make_sentencepiece_tokenizer(std::string_view model_proto,
                                                                std::string origin) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto st = sp->LoadFromSerializedProto(absl::string_view(model_proto.data(), model_proto.size()));
  if (!st.ok()) return data_loss(origin + ": not a valid SentencePiece model: " + st.ToString());
  if (sp->GetPieceSize() <= 0) return data_loss(origin + ": SentencePiece model has no pieces");
  return std::unique_ptr<Tokenizer>(new SentencePieceTokenizer(std::move(sp)));
}

Result<std::unique_ptr<Tokenizer>> load_sentencepiece_tokenizer(const std::string& path) {
  PALU_ASSIGN_OR_RETURN(std::string bytes, read_text_file(path));
  return make_sentencepiece_tokenizer(bytes, path);
}

std::string Utf8Streamer::push(std::string_view bytes) {
  pending_.append(bytes.data(), bytes.size());
  // Find the longest prefix that does not end inside an incomplete (but so far valid) sequence.
  size_t cut = pending_.size();
  // Look back at most 3 bytes for a lead byte whose sequence is not complete yet.
  for (size_t back = 1; back <= 3 && back <= pending_.size(); ++back) {
    const unsigned char c = (unsigned char)pending_[pending_.size() - back];
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t need = 0;
    if ((c & 0xE0) == 0xC0) need = 2;
    else if ((c & 0xF0) == 0xE0) need = 3;
    else if ((c & 0xF8) == 0xF0) need = 4;
    if (need > back) cut = pending_.size() - back;  // incomplete: hold it back
    break;
  }
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string Utf8Streamer::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace palu::model
