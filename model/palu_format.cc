#include "model/palu_format.h"

#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "model/safetensors.h"

namespace palu::model {

using nlohmann::json;

int64_t PaluManifest::latent_floats_per_token() const {
  int64_t n = 0;
  for (const auto& l : k_ranks)
    for (int r : l) n += r;
  for (const auto& l : v_ranks)
    for (int r : l) n += r;
  return n;
}

bool is_palu_model_dir(const std::string& dir) {
  std::error_code ec;
  return std::filesystem::is_regular_file(dir + "/palu.json", ec);
}

static std::string tensor_name(int layer, char proj, int group, char ab) {
  return "layers." + std::to_string(layer) + "." + proj + "." + std::to_string(group) + "." + ab;
}

Status write_palu_files(const std::string& dir, const PaluManifest& m, const std::vector<PaluLayerFactors>& factors,
                        int hidden_size, int head_dim) {
  json j;
  j["format"] = kPaluFormatName;
  j["version"] = m.version;
  j["group_size"] = m.group_size;
  j["ratio"] = m.ratio;
  j["achieved_ratio"] = m.achieved_ratio;
  j["search"] = m.search;
  j["rank_align"] = m.rank_align;
  j["hadamard"] = m.hadamard;
  j["source"] = {{"model", m.source_model}, {"fingerprint", m.source_fingerprint}};
  j["calibration"] = {{"file", m.calibration.file},       {"fingerprint", m.calibration.fingerprint},
                      {"samples", m.calibration.samples}, {"seq_len", m.calibration.seq_len},
                      {"tokens", m.calibration.tokens},   {"fisher_samples", m.calibration.fisher_samples}};
  j["k_ranks"] = m.k_ranks;
  j["v_ranks"] = m.v_ranks;
  j["value_fold"] = "at_load";
  j["factors_file"] = "palu.safetensors";
  j["created_by"] = m.created_by;
  std::vector<TensorToWrite> tensors;
  for (size_t l = 0; l < factors.size(); ++l) {
    for (char p : {'k', 'v'}) {
      const LowRankProjection& proj = p == 'k' ? factors[l].k : factors[l].v;
      for (size_t g = 0; g < proj.groups.size(); ++g) {
        const LowRankGroup& grp = proj.groups[g];
        const int64_t width = (int64_t)(grp.b.size() / std::max(1, grp.rank));
        tensors.push_back({tensor_name((int)l, p, (int)g, 'A'), DType::kF32, {grp.rank, hidden_size}, grp.a.data()});
        tensors.push_back({tensor_name((int)l, p, (int)g, 'B'), DType::kF32, {width, grp.rank}, grp.b.data()});
        (void)head_dim;
      }
    }
  }
  PALU_RETURN_IF_ERROR(write_safetensors_file(dir + "/palu.safetensors", tensors, {{"format", kPaluFormatName}}));
  return write_file_atomic(dir + "/palu.json", j.dump(2) + "\n");
}

namespace {

// One field of palu.json: `fallback` when absent or null, DATA_LOSS naming the field when it has
// another type or does not fit T. (json::value() throws on a wrong type and get<int>() wraps an
// out-of-range integer; the manifest is input, so neither may see it unchecked.)
template <typename T>
Result<T> manifest_field(const json& obj, const char* key, T fallback, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  std::string found = it->dump();
  if (found.size() > 40) found = found.substr(0, 40) + "...";
  const std::string field = where + ": '" + key + "' must be ";
  if constexpr (std::is_same_v<T, bool>) {
    if (it->is_boolean()) return it->get<bool>();
    return data_loss(field + "true or false, found " + found);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (it->is_string()) return it->get<std::string>();
    return data_loss(field + "a string, found " + found);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (it->is_number()) return it->get<T>();
    return data_loss(field + "a number, found " + found);
  } else {
    constexpr int64_t lo = std::numeric_limits<T>::min();
    constexpr int64_t hi = std::numeric_limits<T>::max();
    if (it->is_number_integer() && !(it->is_number_unsigned() && it->get<uint64_t>() > (uint64_t)hi)) {
      const int64_t v = it->get<int64_t>();
      if (v >= lo && v <= hi) return (T)v;
    }
    return data_loss(field + "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], found " +
                     found);
  }
}

Result<std::vector<std::vector<int>>> read_ranks(const json& j, const char* key, const ModelConfig& c, int groups,
                                                 int width, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) return data_loss(origin + ": '" + key + "' missing or not an array");
  if ((int)it->size() != c.num_layers) {
    return data_loss(origin + ": '" + key + "' has " + std::to_string(it->size()) + " layers, the model has " +
                     std::to_string(c.num_layers));
  }
  std::vector<std::vector<int>> out;
  for (size_t l = 0; l < it->size(); ++l) {
    const json& row = (*it)[l];
    if (!row.is_array() || (int)row.size() != groups) {
      return data_loss(origin + ": " + key + "[" + std::to_string(l) + "] must list " + std::to_string(groups) +
                       " group ranks");
    }
    std::vector<int> r;
    for (const auto& v : row) {
      if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > width) {
        return data_loss(origin + ": " + key + "[" + std::to_string(l) + "] has rank " + v.dump() +
                         "; ranks must be in 1.." + std::to_string(width));
      }
      r.push_back(v.get<int>());
    }
    out.push_back(r);
  }
  return out;
}

}  // namespace

Result<PaluManifest> read_palu_manifest(const std::string& dir, const ModelConfig& c) {
  const std::string origin = dir + "/palu.json";
  PALU_ASSIGN_OR_RETURN(std::string text, read_text_file(origin));
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return data_loss(origin + ": not a valid JSON object");
  PALU_ASSIGN_OR_RETURN(std::string format, manifest_field(j, "format", std::string(), origin));
  if (format != kPaluFormatName) {
    return data_loss(origin + ": 'format' must be \"" + std::string(kPaluFormatName) + "\"");
  }
  PaluManifest m;
  if (!j.contains("version") || !j["version"].is_number_integer()) return data_loss(origin + ": 'version' missing");
  PALU_ASSIGN_OR_RETURN(m.version, manifest_field(j, "version", 0, origin));
  if (m.version != kPaluFormatVersion) {
    return unimplemented(origin + ": format version " + std::to_string(m.version) + " is not supported (this palu reads version " +
                         std::to_string(kPaluFormatVersion) + ")");
  }
  if (!j.contains("group_size") || !j["group_size"].is_number_integer()) return data_loss(origin + ": 'group_size' missing");
  PALU_ASSIGN_OR_RETURN(m.group_size, manifest_field(j, "group_size", 0, origin));
  if (m.group_size <= 0 || c.num_kv_heads % m.group_size != 0) {
    return data_loss(origin + ": group_size " + std::to_string(m.group_size) + " does not divide the " +
                     std::to_string(c.num_kv_heads) + " KV heads of the model");
  }
  const int groups = c.num_kv_heads / m.group_size;
  const int width = m.group_size * c.head_dim;
  PALU_ASSIGN_OR_RETURN(m.k_ranks, read_ranks(j, "k_ranks", c, groups, width, origin));
  PALU_ASSIGN_OR_RETURN(m.v_ranks, read_ranks(j, "v_ranks", c, groups, width, origin));
  PALU_ASSIGN_OR_RETURN(m.ratio, manifest_field(j, "ratio", 0.0, origin));
  PALU_ASSIGN_OR_RETURN(m.achieved_ratio, manifest_field(j, "achieved_ratio", 0.0, origin));
  PALU_ASSIGN_OR_RETURN(m.search, manifest_field(j, "search", std::string(), origin));
  PALU_ASSIGN_OR_RETURN(m.rank_align, manifest_field(j, "rank_align", 32, origin));
  PALU_ASSIGN_OR_RETURN(m.hadamard, manifest_field(j, "hadamard", false, origin));
  if (j.contains("source") && j["source"].is_object()) {
    const json& sj = j["source"];
    const std::string where = origin + " source";
    PALU_ASSIGN_OR_RETURN(m.source_model, manifest_field(sj, "model", std::string(), where));
    PALU_ASSIGN_OR_RETURN(m.source_fingerprint, manifest_field(sj, "fingerprint", std::string(), where));
  }
  if (j.contains("calibration") && j["calibration"].is_object()) {
    const json& cj = j["calibration"];
    const std::string where = origin + " calibration";
    PALU_ASSIGN_OR_RETURN(m.calibration.file, manifest_field(cj, "file", std::string(), where));
    PALU_ASSIGN_OR_RETURN(m.calibration.fingerprint, manifest_field(cj, "fingerprint", std::string(), where));
    PALU_ASSIGN_OR_RETURN(m.calibration.samples, manifest_field(cj, "samples", 0, where));
    PALU_ASSIGN_OR_RETURN(m.calibration.seq_len, manifest_field(cj, "seq_len", 0, where));
    PALU_ASSIGN_OR_RETURN(m.calibration.tokens, manifest_field(cj, "tokens", (int64_t)0, where));
    PALU_ASSIGN_OR_RETURN(m.calibration.fisher_samples, manifest_field(cj, "fisher_samples", 0, where));
  }
  PALU_ASSIGN_OR_RETURN(m.created_by, manifest_field(j, "created_by", std::string(), origin));
  return m;
}

Result<std::vector<PaluLayerFactors>> read_palu_factors(const std::string& dir, const PaluManifest& m,
                                                        const ModelConfig& c) {
  TensorMap map;
  const std::string path = dir + "/palu.safetensors";
  PALU_RETURN_IF_ERROR(load_safetensors_file(path, &map));
  const int width = m.group_size * c.head_dim;
  std::vector<PaluLayerFactors> out(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    for (char p : {'k', 'v'}) {
      const auto& ranks = p == 'k' ? m.k_ranks[l] : m.v_ranks[l];
      LowRankProjection& proj = p == 'k' ? out[l].k : out[l].v;
      proj.groups.resize(ranks.size());
      for (size_t g = 0; g < ranks.size(); ++g) {
        const int r = ranks[g];
        for (char ab : {'A', 'B'}) {
          const std::string name = tensor_name(l, p, (int)g, ab);
          PALU_ASSIGN_OR_RETURN(const TensorView* v, map.get(name, path));
          const std::vector<int64_t> want = ab == 'A' ? std::vector<int64_t>{r, c.hidden_size}
                                                      : std::vector<int64_t>{width, r};
          if (v->shape != want || v->dtype != DType::kF32) {
            TensorView w;
            w.shape = want;
            return data_loss(path + ": tensor '" + name + "' is " + dtype_name(v->dtype) + " " + v->shape_string() +
                             ", palu.json's ranks need f32 " + w.shape_string());
          }
          std::vector<float>& dst = ab == 'A' ? proj.groups[g].a : proj.groups[g].b;
          dst.resize(v->numel());
          std::memcpy(dst.data(), v->data, v->nbytes);
        }
        proj.groups[g].rank = r;
      }
    }
  }
  return out;
}

}  // namespace palu::model
