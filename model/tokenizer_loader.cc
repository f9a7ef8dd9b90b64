#include "model/tokenizer_loader.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <climits>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <system_error>

#include "model/gguf.h"
#include "model/mapped_file.h"

namespace palu::model {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// First line is "<base64> <decimal rank>".
bool looks_like_tiktoken(std::string_view head) {
  const size_t eol = head.find('\n');
  std::string_view line = head.substr(0, eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const size_t sp = line.find(' ');
  if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size()) return false;
  for (size_t i = 0; i < sp; ++i) {
    const char c = line[i];
    if (!std::isalnum((unsigned char)c) && c != '+' && c != '/' && c != '=') return false;
  }
  for (size_t i = sp + 1; i < line.size(); ++i) {
    if (!std::isdigit((unsigned char)line[i])) return false;
  }
  return true;
}

// The tokenizer_config.json next to `path`, or an empty config when there is none.
Result<BpeSpecialConfig> sibling_config(const std::string& path) {
  const fs::path config_path = fs::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (!fs::is_regular_file(config_path, ec)) return BpeSpecialConfig{};
  PALU_ASSIGN_OR_RETURN(std::string text, read_text_file(config_path.string()));
  return parse_tokenizer_config_json(text, config_path.string());
}

Result<std::optional<std::string>> config_token(const json& j, const char* key,
                                                const std::string& origin) {
  if (!j.contains(key)) return std::optional<std::string>();
  const json& v = j[key];
  if (v.is_null()) return std::optional<std::string>("");
  if (v.is_string()) return std::optional<std::string>(v.get<std::string>());
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return std::optional<std::string>(v["content"].get<std::string>());
  }
  return data_loss(origin + ": " + key + " is " + v.dump().substr(0, 60) +
                   "; expected a string, {\"content\": ...} or null");
}

}  // namespace

TokenizerFileKind sniff_tokenizer_file(std::string_view head, std::string_view path) {
  if (head.size() >= 4 && std::memcmp(head.data(), "GGUF", 4) == 0) return TokenizerFileKind::kGguf;
  size_t i = 0;
  while (i < head.size() && std::isspace((unsigned char)head[i])) ++i;
  if ((i < head.size() && head[i] == '{') || ends_with(path, ".json")) {
    return TokenizerFileKind::kTokenizerJson;
  }
  if (looks_like_tiktoken(head)) return TokenizerFileKind::kTiktoken;
  return TokenizerFileKind::kSentencePiece;
}

Result<std::unique_ptr<Tokenizer>> load_tokenizer_file(const std::string& path) {
  PALU_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::open(path));
  const std::string_view head(reinterpret_cast<const char*>(file->data()),
                              std::min<size_t>(file->size(), 4096));
  switch (sniff_tokenizer_file(head, path)) {
    case TokenizerFileKind::kGguf: {
      PALU_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::parse(file));
      return gguf_tokenizer(gguf);
    }
    case TokenizerFileKind::kTokenizerJson: {
      PALU_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
      PALU_ASSIGN_OR_RETURN(BpeSpecialConfig config, sibling_config(path));
      PALU_ASSIGN_OR_RETURN(auto t, BpeTokenizer::from_tokenizer_json(text, config, path));
      return std::unique_ptr<Tokenizer>(std::move(t));
    }
    case TokenizerFileKind::kTiktoken: {
      PALU_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
      PALU_ASSIGN_OR_RETURN(BpeSpecialConfig config, sibling_config(path));
      PALU_ASSIGN_OR_RETURN(auto t, BpeTokenizer::from_tiktoken(text, config, path));
      return std::unique_ptr<Tokenizer>(std::move(t));
    }
    case TokenizerFileKind::kSentencePiece: {
      auto t = load_sentencepiece_tokenizer(path);
      if (!t.is_ok()) {
        return Status(t.status().code(),
                      t.status().message() +
                          " (the file is neither GGUF, tokenizer.json nor tiktoken text either)");
      }
      return t;
    }
  }
  return internal_error(path + ": unhandled tokenizer file kind");
}

Result<std::unique_ptr<Tokenizer>> load_tokenizer_from_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return not_found(dir + ": no such directory");
  if (!fs::is_directory(dir, ec)) return invalid_argument(dir + ": not a directory");
  for (const char* name : {"tokenizer.model", "tokenizer.json"}) {
    const fs::path p = fs::path(dir) / name;
    if (fs::exists(p, ec)) return load_tokenizer_file(p.string());
  }
  return not_found(dir + ": no tokenizer.model or tokenizer.json in this directory");
}

Result<BpeSpecialConfig> parse_tokenizer_config_json(std::string_view text,
                                                     const std::string& origin) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    return data_loss(origin + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) return data_loss(origin + ": expected a JSON object at the top level");
  BpeSpecialConfig config;
  PALU_ASSIGN_OR_RETURN(config.bos_token, config_token(j, "bos_token", origin));
  PALU_ASSIGN_OR_RETURN(config.eos_token, config_token(j, "eos_token", origin));
  if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object()) {
    for (const auto& [key, entry] : j["added_tokens_decoder"].items()) {
      int64_t id = -1;
      const auto [ptr, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || ptr != key.data() + key.size() || id < 0 || id > INT32_MAX) {
        return data_loss(origin + ": added_tokens_decoder key \"" + key + "\" is not a token id");
      }
      if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string()) {
        return data_loss(origin + ": added_tokens_decoder[\"" + key +
                         "\"] has no string \"content\"");
      }
      config.names[(int32_t)id] = entry["content"].get<std::string>();
    }
  }
  return config;
}

Status check_tokenizer_fits(const Tokenizer& tokenizer, int model_vocab_size, const std::string& path) {
  if (tokenizer.vocab_size() > model_vocab_size) {
    return invalid_argument(path + ": the tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                            " pieces but the model's vocab_size is " + std::to_string(model_vocab_size));
  }
  return Status::ok();
}

}  // namespace palu::model
