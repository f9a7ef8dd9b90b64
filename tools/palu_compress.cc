// palu-compress: turns a Hugging Face Llama/Mistral/Qwen2 model directory into a compressed
// (Palu) model directory whose key/value projections are low-rank per group of KV heads.
//
//   palu-compress --model PATH --calib FILE --ratio R --out DIR
//                 [--calib-samples 64] [--calib-seq 1024] [--group-size S]
//                 [--search uniform|fisher|fisher_uniform] [--fisher-samples 16]
//                 [--rank-align 32] [--hadamard] [--scratch-dir DIR] [--threads N]
//
// Stages (each with a progress bar on stderr): calibration (palu's own forward; Σ x xᵀ of
// every layer's k/v_proj input in float64), Fisher scores (a backward pass per sample; RMS of
// dLoss/dW over samples), rank allocation, whitened SVD per layer and group (Eigen, float64),
// optional Hadamard folding, and writing the output (docs/formats.md). The method is
// DESIGN.md §1. The first two stages stream the model one layer at a time
// (tools/compress/layerwise.h): memory is about one layer's weights plus the calibration
// samples' residual streams (≈ 3.7 GB for a 7B model; the formula is in docs/formats.md), with
// scratch files under --scratch-dir (default: inside --out, removed at the end).
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backends/cpu/gemm.h"
#include "model/fingerprint.h"
#include "model/tokenizer_loader.h"
#include "model/palu_format.h"
#include "tools/compress/hadamard.h"
#include "tools/compress/head_groups.h"
#include "tools/compress/layerwise.h"
#include "tools/compress/rank_allocation.h"
#include "tools/compress/whitened_svd.h"
#include "tools/tool_common.h"

using namespace palu;
namespace fs = std::filesystem;

namespace {

constexpr const char* kTool = "palu-compress";

// Calibration samples: documents separated by blank lines, BOS before each, concatenated
// in file order and cut into `samples` windows of `seq` tokens.
Result<std::vector<std::vector<int32_t>>> calibration_samples(const std::string& path, const model::Tokenizer& tok,
                                                              int samples, int seq) {
  PALU_ASSIGN_OR_RETURN(auto file, model::MappedFile::open(path));
  const std::string_view text(reinterpret_cast<const char*>(file->data()), file->size());
  const size_t need = (size_t)samples * seq;
  std::vector<int32_t> stream;
  stream.reserve(need);
  size_t pos = 0;
  while (pos < text.size() && stream.size() < need) {
    size_t end = text.find("\n\n", pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view doc = text.substr(pos, end - pos);
    pos = end + 2;
    while (!doc.empty() && (doc.front() == '\n' || doc.front() == ' ')) doc.remove_prefix(1);
    if (doc.empty()) continue;
    PALU_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok.encode(doc, /*add_bos=*/true));
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  if (stream.size() < need) {
    return invalid_argument(path + ": has " + std::to_string(stream.size()) + " tokens, fewer than --calib-samples × --calib-seq = " +
                            std::to_string(need));
  }
  std::vector<std::vector<int32_t>> out(samples);
  for (int s = 0; s < samples; ++s) out[s].assign(stream.begin() + (size_t)s * seq, stream.begin() + (size_t)(s + 1) * seq);
  return out;
}

// Links (or copies) the source model's files into the output directory.
Status link_source_files(const std::string& src, const std::string& dst) {
  std::vector<std::string> names = {"config.json", "generation_config.json", "tokenizer.model", "tokenizer.json",
                                    "tokenizer_config.json", "special_tokens_map.json", "model.safetensors",
                                    "model.safetensors.index.json"};
  const std::string index = src + "/model.safetensors.index.json";
  std::error_code ec;
  if (fs::exists(index, ec)) {
    PALU_ASSIGN_OR_RETURN(std::string text, model::read_text_file(index));
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_object() && j.contains("weight_map") && j["weight_map"].is_object()) {
      for (auto& [k, v] : j["weight_map"].items()) {
        if (v.is_string() && std::find(names.begin(), names.end(), v.get<std::string>()) == names.end()) {
          names.push_back(v.get<std::string>());
        }
      }
    }
  }
  for (const auto& n : names) {
    const fs::path from = fs::path(src) / n, to = fs::path(dst) / n;
    if (!fs::exists(from, ec)) continue;
    fs::remove(to, ec);
    fs::create_hard_link(from, to, ec);
    if (ec) {
      ec.clear();
      fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
      if (ec) return io_error("cannot copy " + from.string() + " to " + to.string() + ": " + ec.message());
    }
  }
  return Status::ok();
}

Eigen::MatrixXd to_eigen(const std::vector<float>& w, int rows, int cols) {
  Eigen::MatrixXd m(rows, cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) m(r, c) = w[(size_t)r * cols + c];
  return m;
}

std::vector<float> to_floats(const Eigen::MatrixXd& m) {
  std::vector<float> v((size_t)m.rows() * m.cols());
  for (int r = 0; r < m.rows(); ++r)
    for (int c = 0; c < m.cols(); ++c) v[(size_t)r * m.cols() + c] = (float)m(r, c);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palu-compress: low-rank (Palu) compression of a model's key/value projections"};
  std::string model_path, calib, out_dir, search = "fisher_uniform";
  std::string scratch_dir;
  int calib_samples = 64, calib_seq = 1024, group_size = 0, fisher_samples = 16, rank_align = 32, threads = 0;
  double ratio = 0.5;
  bool hadamard = false, quiet = false;
  app.add_option("--model,-m", model_path, "source model directory (Hugging Face)")->required();
  app.add_option("--calib", calib, "calibration text (documents separated by blank lines)")->required();
  app.add_option("--ratio", ratio, "fraction of the K/V width kept (0.5 = Palu-50%)")->required()->check(CLI::Range(0.0, 1.0));
  app.add_option("--out,-o", out_dir, "output directory (created)")->required();
  app.add_option("--calib-samples", calib_samples, "calibration samples")->check(CLI::Range(1, 1 << 20));
  app.add_option("--calib-seq", calib_seq, "tokens per calibration sample")->check(CLI::Range(2, 1 << 20));
  app.add_option("--group-size", group_size, "KV heads per low-rank group (default 4, or H_kv if smaller)")
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--search", search, "rank search")->check(CLI::IsMember({"uniform", "fisher", "fisher_uniform"}));
  app.add_option("--fisher-samples", fisher_samples, "calibration samples used for Fisher scores")->check(CLI::Range(1, 1 << 20));
  app.add_option("--rank-align", rank_align, "ranks are multiples of this")->check(CLI::Range(1, 1 << 16));
  app.add_flag("--hadamard", hadamard, "fold a Hadamard rotation into every group's latent (for quantized latents)");
  app.add_option("--scratch-dir", scratch_dir,
                 "where the layer-by-layer run keeps its temporary files (default: --out; removed at the end)");
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 4096));
  app.add_flag("--quiet,-q", quiet, "no progress on stderr");
  CLI11_PARSE(app, argc, argv);
  const double t_start = tools::now_seconds();
  backends::cpu::set_num_threads(threads);

  if (!fs::is_directory(model_path)) {
    return tools::fail(kTool, invalid_argument(model_path + ": palu-compress reads Hugging Face model directories"));
  }
  if (model::is_palu_model_dir(model_path)) {
    return tools::fail(kTool, invalid_argument(model_path + ": is already a compressed model (it has palu.json)"));
  }
  if (ratio <= 0.0) return tools::fail(kTool, invalid_argument("--ratio must be > 0"));
  auto source_r = compress::open_layer_source(model_path);
  if (!source_r.is_ok()) return tools::fail(kTool, source_r.status());
  compress::LayerSource& source = *source_r.value();
  const model::ModelConfig& c = source.config();
  auto tokenizer = model::load_tokenizer_from_dir(model_path);
  if (!tokenizer.is_ok()) return tools::fail(kTool, tokenizer.status());
  if (Status st = model::check_tokenizer_fits(*tokenizer.value(), c.vocab_size, model_path); !st.is_ok()) {
    return tools::fail(kTool, st);
  }
  if (group_size == 0) group_size = std::min(4, c.num_kv_heads);
  auto grouping = compress::make_head_grouping(c.num_kv_heads, c.head_dim, group_size);
  if (!grouping.is_ok()) return tools::fail(kTool, grouping.status().with_context("--group-size"));
  auto method = compress::parse_rank_search(search);
  if (!method.is_ok()) return tools::fail(kTool, method.status());
  fisher_samples = std::min(fisher_samples, calib_samples);
  const bool fisher = method.value() != compress::RankSearch::kUniform;

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return tools::fail(kTool, io_error(out_dir + ": cannot create: " + ec.message()));
  if (fs::equivalent(out_dir, model_path, ec)) {
    return tools::fail(kTool, invalid_argument("--out must differ from --model"));
  }

  // 1–2. Calibration statistics and Fisher scores, one layer in memory at a time.
  auto samples_r = calibration_samples(calib, *tokenizer.value(), calib_samples, calib_seq);
  if (!samples_r.is_ok()) return tools::fail(kTool, samples_r.status());
  const auto& samples = samples_r.value();
  std::unique_ptr<compress::LayerwiseCalibration> calibration;
  {
    tools::ProgressBar calib_bar("calibration", c.num_layers * calib_samples, !quiet);
    tools::ProgressBar fisher_bar("fisher", (c.num_layers + 1) * fisher_samples, !quiet && fisher);
    compress::LayerwiseOptions lo;
    lo.fisher_samples = fisher ? fisher_samples : 0;
    lo.scratch_dir = scratch_dir.empty() ? out_dir : scratch_dir;
    lo.progress = [&](const char* stage, int64_t done, int64_t) {
      (stage[0] == 'c' ? calib_bar : fisher_bar).update((int)done);
    };
    auto run = compress::LayerwiseCalibration::run(source, samples, grouping.value(), lo);
    if (!run.is_ok()) return tools::fail(kTool, run.status());
    calibration = std::move(run).value();
  }
  const int groups = grouping.value().num_groups();
  const int width = grouping.value().group_width();
  std::vector<std::vector<double>> k_scores(c.num_layers, std::vector<double>(groups, 1.0));
  std::vector<std::vector<double>> v_scores = k_scores;
  if (fisher) {
    k_scores = calibration->k_scores();
    v_scores = calibration->v_scores();
  }

  // 3. Rank allocation over all k_proj and v_proj (projection order: layer-major, K then V).
  std::vector<compress::ProjectionSpec> specs;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int which = 0; which < 2; ++which) {
      compress::ProjectionSpec p;
      p.name = "layers." + std::to_string(l) + (which == 0 ? ".k_proj" : ".v_proj");
      p.group_widths.assign(groups, width);
      p.group_scores = which == 0 ? k_scores[l] : v_scores[l];
      specs.push_back(std::move(p));
    }
  }
  compress::RankAllocationOptions ao;
  ao.method = method.value();
  ao.ratio = ratio;
  ao.align = rank_align;
  auto alloc = compress::allocate_ranks(specs, ao);
  if (!alloc.is_ok()) return tools::fail(kTool, alloc.status());

  // 4. Whitened SVD per layer and group (+ Hadamard folding).
  std::vector<model::PaluLayerFactors> factors(c.num_layers);
  model::PaluManifest manifest;
  std::vector<double> k_err(c.num_layers), v_err(c.num_layers);
  int shifted = 0;
  {
    tools::ProgressBar bar("svd", c.num_layers, !quiet);
    for (int l = 0; l < c.num_layers; ++l) {
      auto gram = calibration->gram(l);
      if (!gram.is_ok()) return tools::fail(kTool, gram.status());
      auto whitener = compress::make_whitener(gram.value());
      if (!whitener.is_ok()) return tools::fail(kTool, whitener.status().with_context("layer " + std::to_string(l)));
      shifted += whitener.value().shifted();
      auto layer = source.layer(l, /*kv_only=*/true);
      if (!layer.is_ok()) return tools::fail(kTool, layer.status());
      for (int which = 0; which < 2; ++which) {
        const auto& w = which == 0 ? layer.value()->wk : layer.value()->wv;
        const std::vector<int>& ranks = alloc.value().ranks[2 * l + which];
        auto fs_r = compress::factor_head_groups(to_eigen(w, c.kv_width(), c.hidden_size), whitener.value(),
                                                 grouping.value(), ranks);
        if (!fs_r.is_ok()) return tools::fail(kTool, fs_r.status().with_context("layer " + std::to_string(l)));
        model::LowRankProjection& proj = which == 0 ? factors[l].k : factors[l].v;
        double discarded = 0, total = 0;
        for (auto& f : fs_r.value()) {
          discarded += f.discarded_energy();
          total += f.total_energy();
          Eigen::MatrixXd a = f.a, b = f.b;
          if (hadamard) {
            auto rot = compress::latent_rotation(f.rank());
            if (!rot.is_ok()) return tools::fail(kTool, rot.status());
            Status st = compress::fold_rotation(rot.value().q, &a, &b);
            if (!st.is_ok()) return tools::fail(kTool, st);
          }
          model::LowRankGroup g;
          g.rank = f.rank();
          g.a = to_floats(a);
          g.b = to_floats(b);
          proj.groups.push_back(std::move(g));
        }
        (which == 0 ? k_err : v_err)[l] = total > 0 ? discarded / total : 0.0;
      }
      manifest.k_ranks.push_back(alloc.value().ranks[2 * l]);
      manifest.v_ranks.push_back(alloc.value().ranks[2 * l + 1]);
      bar.update(l + 1);
    }
  }

  // 5. Output.
  manifest.group_size = group_size;
  manifest.ratio = ratio;
  manifest.achieved_ratio = alloc.value().achieved_ratio;
  manifest.search = search;
  manifest.rank_align = rank_align;
  manifest.hadamard = hadamard;
  manifest.source_model = fs::absolute(model_path).string();
  auto fp = model::fingerprint_model(model_path);
  if (!fp.is_ok()) return tools::fail(kTool, fp.status());
  manifest.source_fingerprint = fp.value();
  manifest.calibration.file = fs::absolute(calib).string();
  auto cfp = model::fingerprint_file(calib);
  if (!cfp.is_ok()) return tools::fail(kTool, cfp.status());
  manifest.calibration.fingerprint = cfp.value();
  manifest.calibration.samples = calib_samples;
  manifest.calibration.seq_len = calib_seq;
  manifest.calibration.tokens = (int64_t)calib_samples * calib_seq;
  manifest.calibration.fisher_samples = method.value() == compress::RankSearch::kUniform ? 0 : fisher_samples;
  manifest.created_by = std::string("palu-compress ") + PALU_VERSION;
  Status st = link_source_files(model_path, out_dir);
  if (st.is_ok()) st = model::write_palu_files(out_dir, manifest, factors, c.hidden_size, c.head_dim);
  if (!st.is_ok()) return tools::fail(kTool, st);

  // 6. Report.
  std::printf("%-6s %-24s %-24s %8s %8s %10s %10s%s\n", "layer", "K ranks", "V ranks", "K kept", "V kept", "K err", "V err",
              fisher ? "    K score    V score" : "");
  for (int l = 0; l < c.num_layers; ++l) {
    auto join = [](const std::vector<int>& v) {
      std::string s;
      for (size_t i = 0; i < v.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(v[i]);
      }
      return s;
    };
    int kr = 0, vr = 0;
    for (int r : manifest.k_ranks[l]) kr += r;
    for (int r : manifest.v_ranks[l]) vr += r;
    std::printf("%-6d %-24s %-24s %7.1f%% %7.1f%% %10.2e %10.2e", l, join(manifest.k_ranks[l]).c_str(),
                join(manifest.v_ranks[l]).c_str(), 100.0 * kr / c.kv_width(), 100.0 * vr / c.kv_width(), k_err[l], v_err[l]);
    if (fisher) {
      double ks = 0, vs = 0;  // mean Fisher score of the projection (mean over its groups)
      for (double v : k_scores[l]) ks += v / groups;
      for (double v : v_scores[l]) vs += v / groups;
      std::printf(" %10.3e %10.3e", ks, vs);
    }
    std::printf("\n");
  }
  const double full_bytes = 2.0 * 2 * c.num_layers * c.kv_width();          // f16 K and V
  const double latent_bytes = 2.0 * (double)manifest.latent_floats_per_token();  // f16 latents
  std::printf("\nratio: requested %.3f, achieved %.4f (search %s, group size %d, align %d%s)\n", ratio,
              manifest.achieved_ratio, search.c_str(), group_size, rank_align, hadamard ? ", hadamard" : "");
  std::printf("KV cache per token (f16): %.0f bytes latent vs %.0f bytes full (%.1f%% of full)\n", latent_bytes, full_bytes,
              100.0 * latent_bytes / full_bytes);
  std::printf("eigen-shift applied in %d of %d layers; K/V err = whitened discarded energy / total energy\n", shifted,
              c.num_layers);
  std::printf("time %.1f s, peak RSS %.1f MiB, written to %s\n", tools::now_seconds() - t_start,
              tools::peak_rss_bytes() / 1048576.0, out_dir.c_str());
  return 0;
}
