// The tools as scripts use them: exit codes, output formats, clear errors on bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "tests/common/test_paths.h"

namespace {

struct CliRun {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

CliRun run(const std::string& args) {
  static int n = 0;
  const std::string err_path = ::testing::TempDir() + "/palu_cli_err_" + std::to_string(::getpid()) + "_" + std::to_string(n++);
  const std::string cmd = std::string(PALU_TOOLS_DIR) + "/" + args + " 2>" + err_path;
  CliRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, k);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream f(err_path);
  std::stringstream ss;
  ss << f.rdbuf();
  r.err = ss.str();
  std::remove(err_path.c_str());
  return r;
}

std::string model(const char* name) { return palu::testing::shared_file(std::string("models/") + name); }

std::string last_line(const std::string& s) {
  std::string t = s;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  const size_t p = t.rfind('\n');
  return p == std::string::npos ? t : t.substr(p + 1);
}

double json_number(const std::string& json, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\": ([-0-9.eE+]+)");
  if (!std::regex_search(json, m, re)) return NAN;
  return std::stod(m[1]);
}

TEST(GenerateCli, GreedyIsDeterministicAndPrintsIds) {
  const std::string args = "palu-generate -q --model " + model("ref-mha") +
                           " --prompt 'The history of the city' --max-tokens 16 --temperature 0 --ids";
  CliRun a = run(args), b = run(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  const std::string ids = last_line(a.out);
  EXPECT_TRUE(std::regex_match(ids, std::regex("([0-9]+ ){15}[0-9]+"))) << ids;
  // Token-by-token prompt feeding gives the same continuation.
  CliRun c = run(args + " --decode-all");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(c.out, a.out);
}

TEST(GenerateCli, SeededSamplingRepeats) {
  const std::string args = "palu-generate -q --model " + model("ref-gqa") +
                           " --prompt 'Once upon a time' --max-tokens 24 --temperature 0.9 --top-p 0.9 --seed 42 --ids";
  CliRun a = run(args), b = run(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  CliRun c = run("palu-generate -q --model " + model("ref-gqa") +
              " --prompt 'Once upon a time' --max-tokens 24 --temperature 0.9 --top-p 0.9 --seed 43 --ids");
  EXPECT_NE(a.out, c.out);
}

TEST(GenerateCli, BadInputGivesClearErrors) {
  struct Case {
    std::string args;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"palu-generate --model /nonexistent/model --prompt hi", "/nonexistent/model"},
      {"palu-generate --prompt hi", "--model"},
      {"palu-generate --model " + model("ref-mha") + " --prompt hi --temperature -1", "temperature"},
      {"palu-generate --model " + model("ref-mha") + " --prompt hi --max-tokens abc", "max-tokens"},
      {"palu-generate --model " + model("ref-mha") + " --prompt hi --ctx 2", "context"},
      {"palu-generate --model " + palu::testing::shared_file("models/ref-mha/config.json") + " --prompt hi", "config.json"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    CliRun r = run(c.args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  }
}

TEST(PerplexityCli, LlamaCppScoringAndJsonLine) {
  const std::string wiki = palu::testing::shared_file("data/wikitext-2/wiki.test.raw");
  CliRun r = run("palu-perplexity -q --model " + model("ref-mha") + " --file " + wiki +
              " --ctx 256 --scoring llamacpp --max-windows 3 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string json = last_line(r.out);
  EXPECT_EQ(json.front(), '{');
  EXPECT_EQ(json_number(json, "windows"), 3);
  EXPECT_EQ(json_number(json, "scored_tokens"), 3 * (256 - 1 - 128));  // second half of each window
  const double ppl = json_number(json, "ppl");
  EXPECT_GT(ppl, 5.0);
  EXPECT_LT(ppl, 500.0);
  CliRun h = run("palu-perplexity -q --model " + model("ref-mha") + " --file " + wiki + " --ctx 256 --max-windows 3 --json");
  ASSERT_EQ(h.exit_code, 0) << h.err;
  EXPECT_EQ(json_number(last_line(h.out), "scored_tokens"), 3 * 255);
  EXPECT_EQ(json_number(last_line(h.out), "tokens"), 373852);  // the protocol's token count
}

TEST(PerplexityCli, BadInputGivesClearErrors) {
  CliRun a = run("palu-perplexity --model " + model("ref-mha") + " --file /nonexistent.txt --ctx 64");
  EXPECT_EQ(a.exit_code, 1);
  EXPECT_NE(a.err.find("/nonexistent.txt"), std::string::npos) << a.err;
  CliRun b = run("palu-perplexity --model " + model("ref-mha") + " --file " +
              palu::testing::shared_file("models/ref-mha/config.json") + " --ctx 100000");
  EXPECT_NE(b.exit_code, 0);
  EXPECT_NE(b.err.find("ctx"), std::string::npos) << b.err;
  CliRun c = run("palu-perplexity --model " + model("ref-mha") + " --file " +
              palu::testing::shared_file("models/ref-mha/generation_config.json") + " --ctx 2048");
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_NE(c.err.find("fewer than one window"), std::string::npos) << c.err;
  CliRun d = run("palu-perplexity --model " + model("ref-mha") + " --file x --scoring nope");
  EXPECT_NE(d.exit_code, 0);
  EXPECT_NE(d.err.find("scoring"), std::string::npos) << d.err;
}

// --backend: the CPU device model gives the CPU result; a backend that is not built or has no
// device, a device index that does not exist and the dense reference on a device are clear
// errors (exit 1, the problem named).
TEST(PerplexityCli, BackendFlag) {
  const std::string base = "palu-perplexity -q --json --model " + model("ref-mha") + " --file " +
                           palu::testing::shared_file("data/wikitext-2/wiki.test.raw") + " --ctx 64 --max-windows 2";
  CliRun cpu = run(base);
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  EXPECT_NE(last_line(cpu.out).find("\"backend\": \"cpu\""), std::string::npos) << cpu.out;
  CliRun bad_index = run(base + " --backend cpu --device 3");
  EXPECT_EQ(bad_index.exit_code, 1);
  EXPECT_NE(bad_index.err.find("one CPU device"), std::string::npos) << bad_index.err;
  CliRun dense = run(base + " --backend cuda --kv dense");
  EXPECT_EQ(dense.exit_code, 1);
  EXPECT_NE(dense.err.find("CPU reference only"), std::string::npos) << dense.err;
  CliRun f16_cpu = run(base + " --weights f16");
  EXPECT_EQ(f16_cpu.exit_code, 1);
  EXPECT_NE(f16_cpu.err.find("--weights f16 needs --backend cuda or vulkan"), std::string::npos) << f16_cpu.err;
  CliRun f32_cpu = run(base + " --backend cpu --weights f32");
  EXPECT_EQ(f32_cpu.exit_code, 0) << f32_cpu.err;
  EXPECT_EQ(last_line(f32_cpu.out).substr(0, 18), last_line(cpu.out).substr(0, 18));  // same ppl
  CliRun unknown = run(base + " --backend metal");
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_NE(unknown.err.find("backend"), std::string::npos) << unknown.err;
  for (const char* b : {"cuda", "vulkan"}) {
    // Either it runs (a device is here) and agrees with the CPU closely, or it says why not.
    CliRun r = run(base + " --backend " + b);
    if (r.exit_code == 0) {
      const double p_cpu = std::stod(last_line(cpu.out).substr(last_line(cpu.out).find(':') + 1));
      const double p_dev = std::stod(last_line(r.out).substr(last_line(r.out).find(':') + 1));
      EXPECT_NEAR(p_dev, p_cpu, 2e-3 * p_cpu) << b;
    } else {
      EXPECT_EQ(r.exit_code, 1) << b;
      EXPECT_NE(r.err.find(b), std::string::npos) << r.err;
    }
  }
}

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void spit(const std::string& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

std::string replace_once(std::string s, const std::string& from, const std::string& to) {
  const size_t p = s.find(from);
  if (p != std::string::npos) s.replace(p, from.size(), to);
  return s;
}

class CompressCli : public ::testing::Test {
 protected:
  // The first 64 KiB of WikiText-2's test split (cut at a line end): every perplexity here scores
  // at most 4 windows of 256 tokens, and tokenizing the whole 1.3 MB file took ~1.5 s per run.
  static std::string wiki_path() {
    return ::testing::TempDir() + "/palu_compress_wiki_" + std::to_string(::getpid()) + ".txt";
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    std::filesystem::remove(wiki_path(), ec);
  }
  static std::string wiki() {
    static const std::string path = [] {
      std::string text = slurp(palu::testing::shared_file("data/wikitext-2/wiki.test.raw"));
      const size_t cut = text.size() > 65536 ? text.rfind('\n', 65536) : std::string::npos;
      if (cut != std::string::npos) text.resize(cut + 1);
      const std::string p = wiki_path();
      spit(p, text);
      return p;
    }();
    return path;
  }
  std::string dir(const std::string& name) {
    const std::string d = ::testing::TempDir() + "/palu_compress_" + std::to_string(::getpid()) + "_" + name;
    std::filesystem::remove_all(d);
    return d;
  }
  std::string compress(const std::string& out, const std::string& args) {
    return "palu-compress -q --model " + model("ref-mha") + " --calib " +
           palu::testing::shared_file("data/calib.txt") + " --calib-samples 2 --calib-seq 128 --out " + out + " " + args;
  }
  double ppl(const std::string& m, const std::string& extra = "") {
    CliRun r = run("palu-perplexity -q --model " + m + " --file " + wiki() +
                   " --ctx 128 --max-windows 2 --json " + extra);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json_number(last_line(r.out), "ppl");
  }
};

TEST_F(CompressCli, FullRankReproducesTheModel) {
  const std::string out = dir("full");
  CliRun c = run(compress(out, "--ratio 1.0 --search uniform"));
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("achieved 1.0000"), std::string::npos) << c.out;
  EXPECT_TRUE(std::filesystem::exists(out + "/palu.json"));
  // Both through the dense float32 cache: the comparison isolates the decomposition.
  const double base = ppl(model("ref-mha"), "--kv dense"), full = ppl(out, "--kv dense");
  EXPECT_NEAR(full, base, 1e-4 * base);
  std::filesystem::remove_all(out);
}

TEST_F(CompressCli, HalfRankFisherHadamardAndQuantizedLatents) {
  const std::string out = dir("half");
  CliRun c = run(compress(out, "--ratio 0.5 --search fisher_uniform --fisher-samples 1 --hadamard --group-size 2"));
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("achieved 0.5000"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("8192 bytes latent vs 16384 bytes full"), std::string::npos) << c.out;
  const double base = ppl(model("ref-mha")), half = ppl(out), q2 = ppl(out, "--kv-bits 2 --kv sim");
  EXPECT_GT(half, base * 0.98);  // low rank costs accuracy (or nothing), never a large gain
  EXPECT_GT(q2, half * 0.98);
  EXPECT_LT(q2, base * 5);       // but the model still works
  // Latent bits on an uncompressed model are refused.
  CliRun bad = run("palu-perplexity --model " + model("ref-mha") + " --file " +
                   wiki() + " --kv-bits 4");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("compressed models only"), std::string::npos) << bad.err;
  std::filesystem::remove_all(out);
}

// Issue 4, must-show 2 (small): token-by-token decode through the paged latent cache gives
// the perplexity of the simulation (--kv sim: K/V rebuilt from fake-quantized latents in a
// dense cache), for float latents and 4/3/2 bits. The two differ only by float rounding
// order, but a rounding difference can flip a 2/3-bit code in a later layer, so on 1020
// scored tokens the gap is noise of up to ~0.2%; the bound here is 0.5% (a real defect —
// wrong scale, position or row — costs several %), docs/perf/latent-cache.md has the 0.2%
// measurement on more text. A window as long as the context keeps every token in f16.
TEST_F(CompressCli, LatentCacheDecodeMatchesTheSimulation) {
  const std::string out = dir("latent");
  ASSERT_EQ(run(compress(out, "--ratio 0.5 --group-size 4 --search uniform --hadamard")).exit_code, 0);
  auto ppl_of = [&](const std::string& args) {
    CliRun r = run("palu-perplexity -q --model " + out + " --file " +
                   wiki() + " --ctx 256 --max-windows 2 --json " + args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json_number(last_line(r.out), "ppl");
  };
  for (int bits : {0, 4, 3, 2}) {
    const std::string b = " --kv-bits " + std::to_string(bits);
    const double sim = ppl_of("--kv sim" + b);
    const double lat = ppl_of("--kv latent --decode-all" + b);
    EXPECT_NEAR(lat, sim, (bits == 0 ? 0.0002 : 0.005) * sim) << bits << " bits";
  }
  const double q2 = ppl_of("--kv latent --kv-bits 2"), w = ppl_of("--kv latent --kv-bits 2 --kv-window 256");
  const double f16 = ppl_of("--kv latent");
  EXPECT_NEAR(w, f16, 1e-6 * f16);  // a window as long as the context keeps every token in f16
  EXPECT_GT(q2, f16);
  // The cache flags are checked against the model.
  const std::string file = " --file " + wiki();
  CliRun full = run("palu-perplexity --model " + out + file + " --kv full");
  EXPECT_EQ(full.exit_code, 1);
  EXPECT_NE(full.err.find("--kv full needs an uncompressed model"), std::string::npos) << full.err;
  CliRun lat = run("palu-perplexity --model " + model("ref-mha") + file + " --kv latent");
  EXPECT_EQ(lat.exit_code, 1);
  EXPECT_NE(lat.err.find("--kv latent needs a compressed model"), std::string::npos) << lat.err;
  CliRun win = run("palu-perplexity --model " + out + file + " --kv-window 8");
  EXPECT_EQ(win.exit_code, 1);
  EXPECT_NE(win.err.find("--kv-window needs --kv-bits"), std::string::npos) << win.err;
  std::filesystem::remove_all(out);
}

TEST_F(CompressCli, CorruptOrMismatchedCompressedModelsAreRefused) {
  const std::string out = dir("corrupt");
  ASSERT_EQ(run(compress(out, "--ratio 0.5 --search uniform")).exit_code, 0);
  const std::string manifest = slurp(out + "/palu.json");
  const std::string factors = slurp(out + "/palu.safetensors");
  struct Case {
    const char* name;
    std::string manifest;
    std::string factors;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"newer version", replace_once(manifest, "\"version\": 1", "\"version\": 2"), factors, "format version 2"},
      {"not JSON", "{", factors, "palu.json: not a valid JSON"},
      {"wrong format name", replace_once(manifest, "palu-compressed", "other"), factors, "'format'"},
      {"group size does not divide", replace_once(manifest, "\"group_size\": 4", "\"group_size\": 3"), factors,
       "does not divide"},
      {"group size mismatch with tensors", replace_once(manifest, "\"group_size\": 4", "\"group_size\": 2"), factors,
       "group ranks"},
      {"truncated factors", manifest, factors.substr(0, factors.size() / 2), "palu.safetensors"},
      {"missing factors", manifest, "", "palu.safetensors"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    spit(out + "/palu.json", c.manifest);
    if (c.factors.empty()) std::filesystem::remove(out + "/palu.safetensors");
    else spit(out + "/palu.safetensors", c.factors);
    CliRun r = run("palu-generate -q --model " + out + " --prompt hi --max-tokens 2");
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  }
  std::filesystem::remove_all(out);
}

TEST_F(CompressCli, BadArgumentsGiveClearErrors) {
  const std::string out = dir("bad");
  struct Case {
    std::string args;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {compress(out, "--ratio 0.5 --group-size 3"), "--group-size"},
      {compress(out, "--ratio 0"), "--ratio"},
      {compress(out, "--ratio 1.5"), "ratio"},
      {compress(out, "--ratio 0.5 --search best"), "search"},
      {"palu-compress --model " + model("ref-mha") + " --calib " + palu::testing::shared_file("models/ref-mha/config.json") +
           " --ratio 0.5 --out " + out,
       "fewer than"},
      {"palu-compress --model " + model("ref-mha") + " --calib /nonexistent --ratio 0.5 --out " + out, "/nonexistent"},
      {"palu-compress --model " + palu::testing::shared_file("models/stories260K/stories260K-f32.gguf") +
           " --calib x --ratio 0.5 --out " + out,
       "Hugging Face model directories"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    CliRun r = run(c.args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
  }
  std::filesystem::remove_all(out);
}

// Must show 4: WikiText-2 perplexity at ctx 1024 within 0.3% of transformers' float32 value.
class SlowPerplexity : public ::testing::TestWithParam<std::pair<const char*, double>> {};

TEST_P(SlowPerplexity, WikiText2Ctx1024MatchesTransformers) {
  const auto [name, want] = GetParam();
  CliRun r = run("palu-perplexity -q --model " + model(name) + " --file " +
              palu::testing::shared_file("data/wikitext-2/wiki.test.raw") + " --ctx 1024 --scoring hf --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const double ppl = json_number(last_line(r.out), "ppl");
  std::printf("%s: ppl %.4f (transformers %.4f)\n", name, ppl, want);
  EXPECT_NEAR(ppl, want, 0.003 * want);
}

INSTANTIATE_TEST_SUITE_P(RefModels, SlowPerplexity,
                         ::testing::Values(std::make_pair("ref-mha", 49.338465872901985),
                                           std::make_pair("ref-gqa", 43.35702425133204)),
                         [](const auto& info) { return std::string(info.param.first) == "ref-mha" ? "RefMha" : "RefGqa"; });

}  // namespace
