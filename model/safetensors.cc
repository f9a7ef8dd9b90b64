#include "model/safetensors.h"

#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

namespace palu::model {
namespace {

using nlohmann::json;

// Header JSON larger than this is refused before it is parsed (the spec's own limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

Result<DType> parse_dtype(const std::string& s, const std::string& where) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  if (s == "F64") return DType::kF64;
  if (s == "I32") return DType::kI32;
  if (s == "I64") return DType::kI64;
  if (s == "I16") return DType::kI16;
  if (s == "I8") return DType::kI8;
  if (s == "U8") return DType::kU8;
  return unimplemented(where + ": unsupported dtype '" + s + "' (supported: F32, F16, BF16, F64, I32, I64, I16, I8, U8)");
}

}  // namespace

Status load_safetensors_file(const std::string& path, TensorMap* map) {
  PALU_ASSIGN_OR_RETURN(auto file, MappedFile::open(path));
  const size_t size = file->size();
  if (size < 8) {
    return data_loss(path + ": truncated: " + std::to_string(size) + " bytes, a safetensors file needs at least 8");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file->data()[i];
  if (header_len > kMaxHeaderBytes) {
    return data_loss(path + ": header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
  }
  if (header_len > size - 8) {
    return data_loss(path + ": header length " + std::to_string(header_len) + " runs past the end of the file (" +
                     std::to_string(size) + " bytes)");
  }
  const char* hbeg = reinterpret_cast<const char*>(file->data() + 8);
  json header = json::parse(hbeg, hbeg + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return data_loss(path + ": header is not valid JSON");
  if (!header.is_object()) return data_loss(path + ": header must be a JSON object");

  const uint8_t* data = file->data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string where = path + ": tensor '" + name + "'";
    if (!entry.is_object()) return data_loss(where + ": entry must be an object");
    auto dt = entry.find("dtype");
    auto sh = entry.find("shape");
    auto off = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string()) return data_loss(where + ": 'dtype' missing or not a string");
    if (sh == entry.end() || !sh->is_array()) return data_loss(where + ": 'shape' missing or not an array");
    if (off == entry.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return data_loss(where + ": 'data_offsets' must be two non-negative integers");
    }
    PALU_ASSIGN_OR_RETURN(DType dtype, parse_dtype(dt->get<std::string>(), where));
    if (sh->size() > 8) return data_loss(where + ": shape has " + std::to_string(sh->size()) + " dimensions (max 8)");
    TensorView v;
    v.dtype = dtype;
    v.file = path;
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return data_loss(where + ": shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > (1ull << 40) || (dim != 0 && numel > (std::numeric_limits<uint64_t>::max() >> 8) / dim)) {
        return data_loss(where + ": shape " + sh->dump() + " overflows");
      }
      numel *= dim;
      v.shape.push_back((int64_t)dim);
    }
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return data_loss(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                       "] lie outside the data section (" + std::to_string(data_size) + " bytes)");
    }
    const uint64_t expect = numel * dtype_size(dtype);
    if (end - begin != expect) {
      return data_loss(where + ": data_offsets span " + std::to_string(end - begin) + " bytes but shape " +
                       sh->dump() + " of " + dtype_name(dtype) + " needs " + std::to_string(expect));
    }
    v.data = data + begin;
    v.nbytes = (size_t)expect;
    PALU_RETURN_IF_ERROR(map->add(name, std::move(v)));
  }
  map->add_file(std::move(file));
  return Status::ok();
}

Result<TensorMap> load_safetensors_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  TensorMap map;
  const std::string single = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  std::error_code ec;
  if (fs::exists(single, ec)) {
    PALU_RETURN_IF_ERROR(load_safetensors_file(single, &map));
    return map;
  }
  if (!fs::exists(index, ec)) {
    return not_found(dir + ": no model.safetensors and no model.safetensors.index.json");
  }
  PALU_ASSIGN_OR_RETURN(std::string text, read_text_file(index));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return data_loss(index + ": not a valid JSON object");
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) return data_loss(index + ": 'weight_map' missing or not an object");
  if (wm->empty()) return data_loss(index + ": 'weight_map' is empty");
  std::set<std::string> shards;
  for (auto& [name, file] : wm->items()) {
    if (!file.is_string()) return data_loss(index + ": weight_map['" + name + "'] must be a file name");
    const std::string f = file.get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
      return data_loss(index + ": weight_map['" + name + "'] = '" + f + "' is not a plain file name in the model directory");
    }
    shards.insert(f);
  }
  for (const std::string& s : shards) {
    Status st = load_safetensors_file(dir + "/" + s, &map);
    if (!st.is_ok()) {
      if (st.code() == StatusCode::kNotFound) return not_found(index + ": lists shard '" + s + "', which is missing");
      return st;
    }
  }
  for (auto& [name, file] : wm->items()) {
    const TensorView* v = map.find(name);
    if (v == nullptr) {
      return data_loss(index + ": tensor '" + name + "' is listed in shard '" + file.get<std::string>() +
                       "' but that shard does not contain it");
    }
  }
  return map;
}

}  // namespace palu::model

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace palu::model {

namespace {

const char* st_dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kF64: return "F64";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
    case DType::kI16: return "I16";
    case DType::kI8: return "I8";
    case DType::kU8: return "U8";
  }
  return "?";
}

Status write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return io_error(path + ": write failed: " + std::strerror(errno));
    }
    p += w;
    n -= (size_t)w;
  }
  return Status::ok();
}

// Writes through `write_body(fd)` to a temp file, then fsync + rename + directory fsync.
template <typename F>
Status atomic_write(const std::string& path, F&& write_body) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return io_error(tmp + ": cannot create: " + std::strerror(errno));
  Status st = write_body(fd, tmp);
  if (st.is_ok() && ::fsync(fd) != 0) st = io_error(tmp + ": fsync failed: " + std::strerror(errno));
  if (::close(fd) != 0 && st.is_ok()) st = io_error(tmp + ": close failed: " + std::strerror(errno));
  if (st.is_ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = io_error(path + ": rename failed: " + std::strerror(errno));
  }
  if (!st.is_ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return Status::ok();
}

}  // namespace

Status write_file_atomic(const std::string& path, std::string_view bytes) {
  return atomic_write(path, [&](int fd, const std::string& tmp) { return write_all(fd, bytes.data(), bytes.size(), tmp); });
}

Status write_safetensors_file(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata) {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return invalid_argument(path + ": tensor '" + t.name + "' has a negative dimension");
      numel *= (uint64_t)d;
    }
    const uint64_t bytes = numel * dtype_size(t.dtype);
    header[t.name] = {{"dtype", st_dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) {
    json m = json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  std::string hs = header.dump();
  while (hs.size() % 8 != 0) hs += ' ';  // keep the data section 8-byte aligned
  return atomic_write(path, [&](int fd, const std::string& tmp) -> Status {
    char len[8];
    const uint64_t n = hs.size();
    for (int i = 0; i < 8; ++i) len[i] = (char)((n >> (8 * i)) & 0xff);
    PALU_RETURN_IF_ERROR(write_all(fd, len, 8, tmp));
    PALU_RETURN_IF_ERROR(write_all(fd, hs.data(), hs.size(), tmp));
    for (const auto& t : tensors) {
      uint64_t numel = 1;
      for (int64_t d : t.shape) numel *= (uint64_t)d;
      PALU_RETURN_IF_ERROR(write_all(fd, static_cast<const char*>(t.data), numel * dtype_size(t.dtype), tmp));
    }
    return Status::ok();
  });
}

}  // namespace palu::model
