// palu-tokenize: text on stdin → token ids on stdout, for scripts and tests.
//
//   palu-tokenize (--model PATH | --tokenizer FILE) [--bos] [--pieces] [--special] [--bench]
//
// --model takes a model directory (tokenizer.model, else tokenizer.json) or a .gguf file;
// --tokenizer takes one tokenizer file of any kind (SentencePiece or tiktoken tokenizer.model,
// tokenizer.json, GGUF). The ids are printed space-separated on one line; --pieces adds a
// second line with the pieces, space-separated, bytes below 0x21, 0x7F and '\' written as \xNN.
// --special recognises control tokens such as <|eot_id|> in the text (BPE vocabularies).
// --bench prints the encoding speed for the input instead of the ids. Errors go to stderr
// as "palu-tokenize: error: ..." with exit code 1.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <string>

#include "model/bpe_tokenizer.h"
#include "model/gguf.h"
#include "model/tokenizer_loader.h"
#include "tools/tool_common.h"

using namespace palu;

namespace {

constexpr const char* kTool = "palu-tokenize";

Result<std::unique_ptr<model::Tokenizer>> load(const std::string& model_path,
                                               const std::string& tokenizer_path) {
  if (!tokenizer_path.empty()) return model::load_tokenizer_file(tokenizer_path);
  std::error_code ec;
  if (std::filesystem::is_directory(model_path, ec))
    return model::load_tokenizer_from_dir(model_path);
  if (!std::filesystem::exists(model_path, ec))
    return not_found(model_path + ": no such file or directory");
  if (model_path.size() >= 5 && model_path.compare(model_path.size() - 5, 5, ".gguf") == 0) {
    PALU_ASSIGN_OR_RETURN(model::GgufFile gguf, model::GgufFile::open(model_path));
    return model::gguf_tokenizer(gguf);
  }
  return invalid_argument(model_path + ": --model expects a model directory or a .gguf file " +
                          "(use --tokenizer for a tokenizer file)");
}

std::string escape_piece(const std::string& piece) {
  std::string out;
  for (unsigned char c : piece) {
    if (c < 0x21 || c == 0x7F || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else {
      out.push_back((char)c);
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palu-tokenize: print the token ids of the text on stdin"};
  std::string model_path, tokenizer_path;
  bool bos = false, pieces = false, special = false, bench = false;
  auto* model_opt = app.add_option("--model,-m", model_path, "model directory or .gguf file");
  auto* tok_opt = app.add_option("--tokenizer", tokenizer_path,
                                 "tokenizer file (tokenizer.model, tokenizer.json or .gguf)");
  model_opt->excludes(tok_opt);
  app.add_flag("--bos", bos, "put BOS first (when the vocabulary has one)");
  app.add_flag("--pieces", pieces, "also print the pieces on a second line");
  app.add_flag("--special", special,
               "recognise control tokens such as <|eot_id|> in the text (BPE only)");
  app.add_flag("--bench", bench, "print the encoding speed (MB/s) for stdin instead of the ids");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 1;
  }
  if (model_path.empty() == tokenizer_path.empty()) {
    return tools::fail(kTool,
                       invalid_argument("give exactly one of --model PATH or --tokenizer FILE"));
  }

  auto loaded = load(model_path, tokenizer_path);
  if (!loaded.is_ok()) return tools::fail(kTool, loaded.status());
  const model::Tokenizer& tok = *loaded.value();
  const auto* bpe = dynamic_cast<const model::BpeTokenizer*>(&tok);
  if (special && bpe == nullptr) {
    return tools::fail(
        kTool, invalid_argument("--special needs a BPE vocabulary; this one is " + tok.kind()));
  }
  auto encode = [&](const std::string& text) {
    if (bpe != nullptr) return bpe->encode(text, model::BpeTokenizer::EncodeOptions{bos, special});
    return tok.encode(text, bos);
  };

  std::cin >> std::noskipws;
  const std::string text((std::istreambuf_iterator<char>(std::cin)),
                         std::istreambuf_iterator<char>());
  if (std::cin.bad()) return tools::fail(kTool, io_error("cannot read stdin"));

  if (bench) {
    // Repeat for at least a second (and 3 runs); report the mean and the best run.
    double total_s = 0, best_s = 1e30;
    int runs = 0;
    size_t n_tokens = 0;
    while (runs < 3 || total_s < 1.0) {
      const double t0 = tools::now_seconds();
      auto ids = encode(text);
      const double dt = tools::now_seconds() - t0;
      if (!ids.is_ok()) return tools::fail(kTool, ids.status());
      n_tokens = ids.value().size();
      total_s += dt;
      best_s = std::min(best_s, dt);
      ++runs;
    }
    const double mb = text.size() / 1e6;
    std::printf(
        "%s tokenizer, %zu bytes -> %zu tokens (%.2f bytes/token), %d runs: mean %.1f MB/s, best "
        "%.1f MB/s\n",
        tok.kind().c_str(), text.size(), n_tokens, n_tokens ? (double)text.size() / n_tokens : 0.0,
        runs, mb * runs / total_s, mb / best_s);
    return 0;
  }

  auto ids = encode(text);
  if (!ids.is_ok()) return tools::fail(kTool, ids.status());
  std::string line;
  for (size_t i = 0; i < ids.value().size(); ++i) {
    if (i > 0) line += ' ';
    line += std::to_string(ids.value()[i]);
  }
  std::printf("%s\n", line.c_str());
  if (pieces) {
    line.clear();
    for (size_t i = 0; i < ids.value().size(); ++i) {
      if (i > 0) line += ' ';
      line += escape_piece(tok.id_to_piece(ids.value()[i]));
    }
    std::printf("%s\n", line.c_str());
  }
  return 0;
}
