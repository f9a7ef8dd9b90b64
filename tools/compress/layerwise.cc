#include "tools/compress/layerwise.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <new>
#include <random>

#include "backends/base/host_alloc.h"
#include "model/config.h"
#include "model/llama_backward.h"
#include "model/safetensors.h"
#include "tools/compress/calibration_stats.h"

namespace palu::compress {
namespace fs = std::filesystem;

namespace {

class ModelSource final : public LayerSource {
 public:
  explicit ModelSource(const model::LlamaModel& m) : m_(m) {}
  const model::ModelConfig& config() const override { return m_.config(); }
  Result<const model::LayerWeights*> layer(int l, bool) override {
    if (l < 0 || l >= m_.config().num_layers) return invalid_argument("layer " + std::to_string(l) + " out of range");
    return &m_.weights().layers[l];
  }
  Result<const float*> embedding() override { return m_.weights().embed.data(); }
  Result<const float*> final_norm() override { return m_.weights().final_norm.data(); }
  Result<const float*> output_matrix() override { return m_.weights().output_matrix(); }

 private:
  const model::LlamaModel& m_;
};

class FileSource final : public LayerSource {
 public:
  FileSource(model::ModelConfig c, model::TensorMap t, std::string dir)
      : c_(std::move(c)), t_(std::move(t)), dir_(std::move(dir)) {}
  const model::ModelConfig& config() const override { return c_; }

  Result<const model::LayerWeights*> layer(int l, bool kv_only) override {
    if (l == layer_ && (kv_only || !layer_kv_only_)) return &current_;
    current_ = model::LayerWeights();  // free the previous layer before converting the next
    layer_ = -1;
    if (kv_only) {
      const int64_t d = c_.hidden_size, kvw = c_.kv_width();
      const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
      if (l < 0 || l >= c_.num_layers) return invalid_argument(dir_ + ": layer " + std::to_string(l) + " out of range");
      PALU_RETURN_IF_ERROR(model::load_tensor_f32(t_, p + "k_proj.weight", {kvw, d}, dir_, &current_.wk));
      PALU_RETURN_IF_ERROR(model::load_tensor_f32(t_, p + "v_proj.weight", {kvw, d}, dir_, &current_.wv));
    } else {
      PALU_RETURN_IF_ERROR(model::load_layer_weights(c_, t_, l, dir_, false, &current_));
    }
    layer_ = l;
    layer_kv_only_ = kv_only;
    return &current_;
  }
  Result<const float*> embedding() override {
    if (embed_.empty()) {
      PALU_RETURN_IF_ERROR(model::load_tensor_f32(t_, "model.embed_tokens.weight", {c_.vocab_size, c_.hidden_size}, dir_,
                                                  &embed_));
    }
    return embed_.data();
  }
  Result<const float*> final_norm() override {
    if (norm_.empty()) PALU_RETURN_IF_ERROR(model::load_tensor_f32(t_, "model.norm.weight", {c_.hidden_size}, dir_, &norm_));
    return norm_.data();
  }
  Result<const float*> output_matrix() override {
    if (t_.find("lm_head.weight") == nullptr) {
      if (!c_.tie_word_embeddings) {
        return not_found(dir_ + ": tensor 'lm_head.weight' is missing and tie_word_embeddings is false");
      }
      return embedding();
    }
    if (head_.empty()) {
      PALU_RETURN_IF_ERROR(model::load_tensor_f32(t_, "lm_head.weight", {c_.vocab_size, c_.hidden_size}, dir_, &head_));
    }
    return head_.data();
  }
  void release() override {
    current_ = model::LayerWeights();
    layer_ = -1;
    std::vector<float>().swap(embed_);
    std::vector<float>().swap(norm_);
    std::vector<float>().swap(head_);
  }

 private:
  model::ModelConfig c_;
  model::TensorMap t_;
  std::string dir_;
  model::LayerWeights current_;
  int layer_ = -1;
  bool layer_kv_only_ = false;
  std::vector<float> embed_, norm_, head_;
};

// A scratch file of fixed-size records, written and read with pwrite/pread.
class ScratchFile {
 public:
  ~ScratchFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  // A new, empty file (create) or an existing one to read back (!create).
  Status open(const std::string& path, bool create = true) {
    path_ = path;
    fd_ = create ? ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)
                 : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return io_error(path + ": cannot open scratch file: " + std::strerror(errno));
    return Status::ok();
  }
  Status write(const void* data, size_t bytes, int64_t offset) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      const ssize_t w = ::pwrite(fd_, p, bytes, offset);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return io_error(path_ + ": cannot write scratch data: " + std::strerror(w < 0 ? errno : ENOSPC));
      p += w;
      bytes -= (size_t)w;
      offset += w;
    }
    return Status::ok();
  }
  Status read(void* data, size_t bytes, int64_t offset) const {
    char* p = static_cast<char*>(data);
    while (bytes > 0) {
      const ssize_t r = ::pread(fd_, p, bytes, offset);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return io_error(path_ + ": cannot read scratch data back: " + (r < 0 ? std::strerror(errno) : "short file"));
      p += r;
      bytes -= (size_t)r;
      offset += r;
    }
    return Status::ok();
  }

 private:
  std::string path_;
  int fd_ = -1;
};

std::string gib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / 1073741824.0);
  return buf;
}

}  // namespace

std::unique_ptr<LayerSource> model_layer_source(const model::LlamaModel& model) {
  return std::make_unique<ModelSource>(model);
}

Result<std::unique_ptr<LayerSource>> open_layer_source(const std::string& dir) {
  const std::string cfg_path = dir + "/config.json";
  PALU_ASSIGN_OR_RETURN(std::string cfg_text, model::read_text_file(cfg_path));
  PALU_ASSIGN_OR_RETURN(model::ModelConfig cfg, model::parse_hf_config(cfg_text, cfg_path));
  PALU_RETURN_IF_ERROR(cfg.validate(dir));
  PALU_ASSIGN_OR_RETURN(model::TensorMap tensors, model::load_safetensors_dir(dir));
  return std::unique_ptr<LayerSource>(new FileSource(std::move(cfg), std::move(tensors), dir));
}

int64_t layerwise_scratch_bytes(const model::ModelConfig& c, int fisher_samples, int seq) {
  const int64_t d = c.hidden_size;
  return 4 * (int64_t)fisher_samples * c.num_layers * seq * d + 8 * (int64_t)c.num_layers * d * d;
}

LayerwiseCalibration::~LayerwiseCalibration() {
  if (!dir_.empty()) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

Result<std::unique_ptr<LayerwiseCalibration>> LayerwiseCalibration::run(LayerSource& source,
                                                                         const std::vector<std::vector<int32_t>>& samples,
                                                                         const HeadGrouping& grouping,
                                                                         const LayerwiseOptions& options) {
  const model::ModelConfig& c = source.config();
  const int S = (int)samples.size(), L = c.num_layers, d = c.hidden_size, kvw = c.kv_width();
  if (S == 0) return invalid_argument("layerwise calibration: no samples");
  const int n = (int)samples[0].size();
  if (n < 2) return invalid_argument("layerwise calibration: samples need at least 2 tokens, found " + std::to_string(n));
  for (int s = 0; s < S; ++s) {
    if ((int)samples[s].size() != n) {
      return invalid_argument("layerwise calibration: sample " + std::to_string(s) + " has " +
                              std::to_string(samples[s].size()) + " tokens, sample 0 has " + std::to_string(n));
    }
    for (int i = 0; i < n; ++i) {
      if (samples[s][i] < 0 || samples[s][i] >= c.vocab_size) {
        return invalid_argument("layerwise calibration: token id " + std::to_string(samples[s][i]) + " of sample " +
                                std::to_string(s) + " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
      }
    }
  }
  const int F = options.fisher_samples;
  if (F < 0 || F > S) {
    return invalid_argument("layerwise calibration: fisher_samples " + std::to_string(F) + " is outside [0, " +
                            std::to_string(S) + "]");
  }
  if (grouping.rows() != kvw) {
    return invalid_argument("layerwise calibration: the head grouping has " + std::to_string(grouping.rows()) +
                            " rows, the model's k_proj has " + std::to_string(kvw));
  }
  auto report = [&](const char* stage, int64_t done, int64_t total) {
    if (options.progress) options.progress(stage, done, total);
  };

  // Scratch space: a fresh directory under scratch_dir, checked for room first.
  std::unique_ptr<LayerwiseCalibration> out(new LayerwiseCalibration());
  out->dim_ = d;
  {
    std::error_code ec;
    const std::string base = options.scratch_dir.empty() ? fs::temp_directory_path(ec).string() : options.scratch_dir;
    fs::create_directories(base, ec);
    if (ec) return io_error(base + ": cannot create the scratch directory: " + ec.message());
    std::random_device rd;
    const std::string dir = base + "/palu-compress-" + std::to_string(::getpid()) + "-" + std::to_string(rd() % 1000000);
    if (!fs::create_directory(dir, ec) || ec) {
      return io_error(dir + ": cannot create the scratch directory: " + (ec ? ec.message() : "it exists"));
    }
    out->dir_ = dir;
    const int64_t need = layerwise_scratch_bytes(c, F, n);
    const fs::space_info sp = fs::space(dir, ec);
    if (!ec && (int64_t)sp.available < need + (64 << 20)) {
      return resource_exhausted(dir + ": layer-by-layer calibration needs " + gib(need) + " of scratch space (" +
                                std::to_string(F) + " Fisher samples × " + std::to_string(L) + " layers × " +
                                std::to_string(n) + " tokens × d " + std::to_string(d) + " floats + the " +
                                std::to_string(L) + " statistics), " + gib((int64_t)sp.available) +
                                " free there; pick another place with --scratch-dir");
    }
  }
  out->gram_path_ = out->dir_ + "/gram.f64";
  ScratchFile gram_file, input_file;
  PALU_RETURN_IF_ERROR(gram_file.open(out->gram_path_));
  if (F > 0) PALU_RETURN_IF_ERROR(input_file.open(out->dir_ + "/layer-inputs.f32"));

  const size_t seq_floats = (size_t)n * d;
  std::vector<std::vector<float>> x, dx;
  std::vector<float> xn;
  try {
    if (host_alloc_should_fail()) throw std::bad_alloc();
    x.assign(S, std::vector<float>(seq_floats));
    dx.assign(F, std::vector<float>(seq_floats));
    xn.resize(seq_floats);
  } catch (const std::bad_alloc&) {
    return resource_exhausted("layerwise calibration: out of memory for the residual streams of " + std::to_string(S) +
                              " samples × " + std::to_string(n) + " tokens × d " + std::to_string(d) + " (" +
                              gib((int64_t)(S + F) * (int64_t)seq_floats * 4) + ")");
  }
  PALU_ASSIGN_OR_RETURN(std::unique_ptr<model::LayerPass> pass, model::LayerPass::create(c, n));

  // 1. Forward sweep.
  {
    PALU_ASSIGN_OR_RETURN(const float* embed, source.embedding());
    for (int s = 0; s < S; ++s) {
      for (int i = 0; i < n; ++i) {
        std::memcpy(x[s].data() + (size_t)i * d, embed + (size_t)samples[s][i] * d, (size_t)d * sizeof(float));
      }
    }
    source.release();
    const int64_t total = (int64_t)L * S;
    for (int l = 0; l < L; ++l) {
      PALU_ASSIGN_OR_RETURN(const model::LayerWeights* w, source.layer(l));
      PALU_ASSIGN_OR_RETURN(CalibrationStats stats, CalibrationStats::create(d));
      for (int s = 0; s < S; ++s) {
        if (s < F) {
          PALU_RETURN_IF_ERROR(input_file.write(x[s].data(), seq_floats * 4, ((int64_t)l * F + s) * (int64_t)seq_floats * 4));
        }
        pass->forward(*w, x[s].data(), xn.data());
        PALU_RETURN_IF_ERROR(stats.add(xn.data(), n, d).with_context("layer " + std::to_string(l)));
        report("calibration", (int64_t)l * S + s + 1, total);
      }
      const Eigen::MatrixXd g = stats.gram();
      PALU_RETURN_IF_ERROR(gram_file.write(g.data(), (size_t)d * d * 8, (int64_t)l * d * d * 8));
    }
    out->tokens_ = (int64_t)S * n;
  }
  if (F == 0) {
    source.release();
    return out;
  }

  // 2. Fisher scores.
  const int groups = grouping.num_groups(), width = grouping.group_width();
  const size_t kv_elems = (size_t)kvw * d;
  std::vector<double> k_sq, v_sq;
  std::vector<float> dwk, dwv;
  try {
    if (host_alloc_should_fail()) throw std::bad_alloc();
    k_sq.resize(kv_elems);
    v_sq.resize(kv_elems);
    dwk.resize(kv_elems);
    dwv.resize(kv_elems);
  } catch (const std::bad_alloc&) {
    return resource_exhausted("layerwise calibration: out of memory for one layer's Fisher accumulators (" +
                              gib((int64_t)kv_elems * 24) + ")");
  }
  const int64_t total = (int64_t)(L + 1) * F;
  {
    PALU_ASSIGN_OR_RETURN(const float* norm, source.final_norm());
    PALU_ASSIGN_OR_RETURN(const float* head, source.output_matrix());
    double loss = 0;
    for (int s = 0; s < F; ++s) {
      PALU_ASSIGN_OR_RETURN(double ls, pass->head_loss(norm, head, samples[s].data(), x[s].data(), dx[s].data()));
      loss += ls / F;
      report("fisher", s + 1, total);
    }
    out->fisher_loss_ = loss;
    source.release();
  }
  x.clear();
  x.shrink_to_fit();
  std::vector<float> input(seq_floats);
  out->k_scores_.assign(L, std::vector<double>(groups, 0.0));
  out->v_scores_ = out->k_scores_;
  for (int l = L - 1; l >= 0; --l) {
    PALU_ASSIGN_OR_RETURN(const model::LayerWeights* w, source.layer(l));
    std::fill(k_sq.begin(), k_sq.end(), 0.0);
    std::fill(v_sq.begin(), v_sq.end(), 0.0);
    for (int s = 0; s < F; ++s) {
      PALU_RETURN_IF_ERROR(input_file.read(input.data(), seq_floats * 4, ((int64_t)l * F + s) * (int64_t)seq_floats * 4));
      pass->forward(*w, input.data());
      pass->backward(*w, dx[s].data(), dwk.data(), dwv.data(), l > 0);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < (int64_t)kv_elems; ++i) {
        k_sq[i] += (double)dwk[i] * dwk[i];
        v_sq[i] += (double)dwv[i] * dwv[i];
      }
      report("fisher", (int64_t)(L - l) * F + s + 1, total);
    }
    for (int gi = 0; gi < groups; ++gi) {
      double ks = 0, vs = 0;
      const size_t begin = (size_t)gi * width * d, end = begin + (size_t)width * d;
      for (size_t i = begin; i < end; ++i) {
        ks += std::sqrt(k_sq[i] / F);
        vs += std::sqrt(v_sq[i] / F);
      }
      out->k_scores_[l][gi] = ks / (double)(end - begin);
      out->v_scores_[l][gi] = vs / (double)(end - begin);
    }
  }
  source.release();
  return out;
}

Result<Eigen::MatrixXd> LayerwiseCalibration::gram(int layer) const {
  const int d = dim_;
  const int64_t bytes = (int64_t)d * d * 8;
  std::error_code ec;
  const auto size = fs::file_size(gram_path_, ec);
  if (ec) return io_error(gram_path_ + ": cannot read the scratch statistics: " + ec.message());
  if (layer < 0 || (int64_t)(layer + 1) * bytes > (int64_t)size) {
    return invalid_argument("layerwise calibration: no statistics for layer " + std::to_string(layer));
  }
  Eigen::MatrixXd g(d, d);
  ScratchFile f;
  PALU_RETURN_IF_ERROR(f.open(gram_path_, /*create=*/false));
  PALU_RETURN_IF_ERROR(f.read(g.data(), (size_t)bytes, (int64_t)layer * bytes).with_context("layer " + std::to_string(layer)));
  return g;
}

}  // namespace palu::compress
