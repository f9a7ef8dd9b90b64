// GGUF parser (GgufFile), metadata accessors, Llama config and tensor-name mapping.
// The vocabulary → SentencePiece conversion lives in gguf_vocab.cc.
#include "model/gguf.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>

namespace palu::model {

static_assert(std::endian::native == std::endian::little,
              "the GGUF reader decodes little-endian files by memcpy");

namespace {

// Block layouts of the ggml types, by id (ggml.h). Ids 4, 5 (Q4_2, Q4_3), 31–33 and 36–38
// (repacked types) were removed from ggml and stay empty.
constexpr GgmlTypeTraits kGgmlTypes[] = {
    {"F32", 1, 4, false},       {"F16", 1, 2, false},       {"Q4_0", 32, 18, true},
    {"Q4_1", 32, 20, true},     {nullptr, 0, 0, false},     {nullptr, 0, 0, false},
    {"Q5_0", 32, 22, true},     {"Q5_1", 32, 24, true},     {"Q8_0", 32, 34, true},
    {"Q8_1", 32, 36, true},     {"Q2_K", 256, 84, true},    {"Q3_K", 256, 110, true},
    {"Q4_K", 256, 144, true},   {"Q5_K", 256, 176, true},   {"Q6_K", 256, 210, true},
    {"Q8_K", 256, 292, true},   {"IQ2_XXS", 256, 66, true}, {"IQ2_XS", 256, 74, true},
    {"IQ3_XXS", 256, 98, true}, {"IQ1_S", 256, 50, true},   {"IQ4_NL", 32, 18, true},
    {"IQ3_S", 256, 110, true},  {"IQ2_S", 256, 82, true},   {"IQ4_XS", 256, 136, true},
    {"I8", 1, 1, false},        {"I16", 1, 2, false},       {"I32", 1, 4, false},
    {"I64", 1, 8, false},       {"F64", 1, 8, false},       {"IQ1_M", 256, 56, true},
    {"BF16", 1, 2, false},      {nullptr, 0, 0, false},     {nullptr, 0, 0, false},
    {nullptr, 0, 0, false},     {"TQ1_0", 256, 54, true},   {"TQ2_0", 256, 66, true},
    {nullptr, 0, 0, false},     {nullptr, 0, 0, false},     {nullptr, 0, 0, false},
    {"MXFP4", 32, 17, true},
};
constexpr uint32_t kNumGgmlTypes = sizeof(kGgmlTypes) / sizeof(kGgmlTypes[0]);

constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kMaxReserve = 4096;  // entries reserved up front from a header count
constexpr uint32_t kDefaultAlignment = 32;
// Smallest encodings, used to bound counts by the bytes left before reserving anything.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;                  // empty key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // empty name, 1 dim, type, offset

// Size in bytes of a fixed-size value type; 0 for string/array/unknown.
uint64_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

bool is_known_type(uint32_t t) {
  return t <= (uint32_t)GgufType::kF64;
}
bool is_unsigned(GgufType t) {
  return t == GgufType::kU8 || t == GgufType::kU16 || t == GgufType::kU32 || t == GgufType::kU64;
}
bool is_signed(GgufType t) {
  return t == GgufType::kI8 || t == GgufType::kI16 || t == GgufType::kI32 || t == GgufType::kI64;
}
bool is_float(GgufType t) {
  return t == GgufType::kF32 || t == GgufType::kF64;
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Decodes one scalar of type `t` (numbers and bool) at `p` into `v`.
void decode_scalar(GgufType t, const uint8_t* p, GgufValue* v) {
  switch (t) {
    case GgufType::kU8:
      v->u = load<uint8_t>(p);
      break;
    case GgufType::kBool:
      v->u = load<uint8_t>(p);
      break;
    case GgufType::kU16:
      v->u = load<uint16_t>(p);
      break;
    case GgufType::kU32:
      v->u = load<uint32_t>(p);
      break;
    case GgufType::kU64:
      v->u = load<uint64_t>(p);
      break;
    case GgufType::kI8:
      v->i = load<int8_t>(p);
      break;
    case GgufType::kI16:
      v->i = load<int16_t>(p);
      break;
    case GgufType::kI32:
      v->i = load<int32_t>(p);
      break;
    case GgufType::kI64:
      v->i = load<int64_t>(p);
      break;
    case GgufType::kF32:
      v->f = load<float>(p);
      break;
    case GgufType::kF64:
      v->f = load<double>(p);
      break;
    case GgufType::kString:
    case GgufType::kArray:
      break;
  }
}

// An element of a numeric array as int64, when it is an integer that fits.
bool integer_element(GgufType t, const uint8_t* p, int64_t* out) {
  GgufValue v;
  decode_scalar(t, p, &v);
  if (is_signed(t)) {
    *out = v.i;
    return true;
  }
  if (is_unsigned(t) && v.u <= (uint64_t)std::numeric_limits<int64_t>::max()) {
    *out = (int64_t)v.u;
    return true;
  }
  return false;
}

std::string quoted(std::string_view s) {
  // Keep messages readable for binary garbage: at most 64 bytes, control bytes escaped.
  std::string out = "'";
  const size_t n = std::min<size_t>(s.size(), 64);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += (char)c;
    }
  }
  if (s.size() > n) out += "...";
  return out + "'";
}

}  // namespace

std::string gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::kU8:
      return "u8";
    case GgufType::kI8:
      return "i8";
    case GgufType::kU16:
      return "u16";
    case GgufType::kI16:
      return "i16";
    case GgufType::kU32:
      return "u32";
    case GgufType::kI32:
      return "i32";
    case GgufType::kF32:
      return "f32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kU64:
      return "u64";
    case GgufType::kI64:
      return "i64";
    case GgufType::kF64:
      return "f64";
  }
  return "type#" + std::to_string((uint32_t)t);
}

const GgmlTypeTraits* ggml_type_traits(uint32_t type) {
  if (type >= kNumGgmlTypes || kGgmlTypes[type].name == nullptr) return nullptr;
  return &kGgmlTypes[type];
}

std::string ggml_type_name(uint32_t type) {
  const GgmlTypeTraits* t = ggml_type_traits(type);
  return t ? std::string(t->name) : "type#" + std::to_string(type);
}

std::string GgufValue::type_string() const {
  if (type != GgufType::kArray) return gguf_type_name(type);
  return "array<" + gguf_type_name(elem_type) + ">[" + std::to_string(count) + "]";
}

std::vector<std::string_view> GgufValue::string_elements() const {
  std::vector<std::string_view> out;
  if (type != GgufType::kArray || elem_type != GgufType::kString) return out;
  out.reserve((size_t)std::min<uint64_t>(count, elems_nbytes / 8));
  uint64_t pos = 0;
  for (uint64_t k = 0; k < count; ++k) {
    // The parser checked every length; stay inside elems_nbytes regardless.
    if (elems_nbytes - pos < 8) break;
    const uint64_t len = load<uint64_t>(elems + pos);
    pos += 8;
    if (len > elems_nbytes - pos) break;
    out.emplace_back(reinterpret_cast<const char*>(elems + pos), (size_t)len);
    pos += len;
  }
  return out;
}

std::vector<int64_t> GgufTensorInfo::hf_shape() const {
  std::vector<int64_t> s;
  s.reserve(n_dims);
  for (uint32_t d = n_dims; d-- > 0;) s.push_back((int64_t)ne[d]);
  return s;
}

std::string GgufTensorInfo::ne_string() const {
  std::string s = "[";
  for (uint32_t d = 0; d < n_dims; ++d) {
    if (d) s += ", ";
    s += std::to_string(ne[d]);
  }
  return s + "]";
}

// ---------------------------------------------------------------------------------------------
// Parser

class GgufParser {
 public:
  explicit GgufParser(std::shared_ptr<const MappedFile> file)
      : path_(file->path()), data_(file->data()), size_(file->size()) {
    out_.file_ = std::move(file);
  }

  Result<GgufFile> run() {
    PALU_RETURN_IF_ERROR(parse_header());
    PALU_RETURN_IF_ERROR(parse_metadata());
    PALU_RETURN_IF_ERROR(parse_alignment());
    PALU_RETURN_IF_ERROR(parse_tensor_infos());
    PALU_RETURN_IF_ERROR(place_tensors());
    return std::move(out_);
  }

 private:
  uint64_t left() const { return size_ - pos_; }

  Status truncated(const std::string& what, uint64_t need) const {
    return data_loss(path_ + ": truncated: " + what + " needs " + std::to_string(need) +
                     " bytes at offset " + std::to_string(pos_) + " but the file ends at " +
                     std::to_string(size_));
  }

  template <typename T>
  Status read(T* v, const std::string& what) {
    if (left() < sizeof(T)) return truncated(what, sizeof(T));
    *v = load<T>(data_ + pos_);
    pos_ += sizeof(T);
    return Status::ok();
  }

  Status read_string(std::string_view* s, const std::string& what) {
    uint64_t len = 0;
    PALU_RETURN_IF_ERROR(read(&len, "length of " + what));
    if (len > left()) {
      return data_loss(path_ + ": " + what + " has length " + std::to_string(len) + " at offset " +
                       std::to_string(pos_ - 8) + ", past the end of the file (" +
                       std::to_string(left()) + " bytes left)");
    }
    *s = std::string_view(reinterpret_cast<const char*>(data_ + pos_), (size_t)len);
    pos_ += len;
    return Status::ok();
  }

  Status parse_header() {
    if (size_ < 4) {
      return data_loss(path_ + ": not a GGUF file: " + std::to_string(size_) +
                       " bytes, too short for the magic 'GGUF'");
    }
    if (std::memcmp(data_, "GGUF", 4) != 0) {
      char hex[16];
      std::snprintf(hex, sizeof hex, "%02x%02x%02x%02x", data_[0], data_[1], data_[2], data_[3]);
      return data_loss(path_ + ": not a GGUF file: magic is " +
                       quoted(std::string_view((const char*)data_, 4)) + " (0x" + hex +
                       "), expected 'GGUF'");
    }
    pos_ = 4;
    PALU_RETURN_IF_ERROR(read(&out_.version_, "header field 'version'"));
    const uint32_t v = out_.version_;
    if (v != 2 && v != 3) {
      std::string hint;
      if (v == 1) hint = " (GGUF v1 is obsolete; re-convert the model)";
      if (v >= 0x01000000u && (v & 0xffffu) == 0) hint = " (a big-endian GGUF file?)";
      return unimplemented(path_ + ": GGUF version " + std::to_string(v) +
                           " is not supported (expected 2 or 3)" + hint);
    }
    PALU_RETURN_IF_ERROR(read(&n_tensors_, "header field 'n_tensors'"));
    PALU_RETURN_IF_ERROR(read(&n_kv_, "header field 'n_kv'"));
    // Bound both counts by the bytes that follow, before anything is reserved.
    if (n_kv_ > left() / kMinKvBytes) {
      return data_loss(path_ + ": header field 'n_kv' is " + std::to_string(n_kv_) + " but only " +
                       std::to_string(left()) + " bytes follow the header; at most " +
                       std::to_string(left() / kMinKvBytes) + " metadata entries fit");
    }
    if (n_tensors_ > left() / kMinTensorInfoBytes) {
      return data_loss(path_ + ": header field 'n_tensors' is " + std::to_string(n_tensors_) +
                       " but only " + std::to_string(left()) +
                       " bytes follow the header; at most " +
                       std::to_string(left() / kMinTensorInfoBytes) + " tensor infos fit");
    }
    if (n_kv_ * kMinKvBytes + n_tensors_ * kMinTensorInfoBytes > left()) {
      return data_loss(path_ + ": header fields 'n_kv' (" + std::to_string(n_kv_) +
                       ") and 'n_tensors' (" + std::to_string(n_tensors_) + ") need at least " +
                       std::to_string(n_kv_ * kMinKvBytes + n_tensors_ * kMinTensorInfoBytes) +
                       " bytes but only " + std::to_string(left()) + " follow the header");
    }
    return Status::ok();
  }

  // Reads a value of type `t` for metadata key `key` (`elem` true inside an array).
  Status read_value(GgufType t, const std::string& what, GgufValue* v) {
    v->type = t;
    if (t == GgufType::kString) return read_string(&v->str, what);
    if (t == GgufType::kArray) {
      uint32_t et = 0;
      PALU_RETURN_IF_ERROR(read(&et, "element type of " + what));
      if (!is_known_type(et)) {
        return data_loss(path_ + ": " + what + " is an array of unknown value type " +
                         std::to_string(et) + " (expected 0..12)");
      }
      v->elem_type = (GgufType)et;
      if (v->elem_type == GgufType::kArray) {
        return unimplemented(path_ + ": " + what +
                             " is an array of arrays, which is not supported");
      }
      PALU_RETURN_IF_ERROR(read(&v->count, "element count of " + what));
      if (v->elem_type == GgufType::kString) {
        // Each string needs at least its 8-byte length.
        if (v->count > left() / 8) {
          return data_loss(path_ + ": " + what + " claims " + std::to_string(v->count) +
                           " string elements but only " + std::to_string(left()) +
                           " bytes are left (at most " + std::to_string(left() / 8) + " fit)");
        }
        // Walk the strings to check them; they are not stored (string_elements() re-walks), so
        // memory does not grow with a forged count.
        v->elems = data_ + pos_;
        for (uint64_t k = 0; k < v->count; ++k) {
          std::string_view s;
          PALU_RETURN_IF_ERROR(read_string(&s, "element " + std::to_string(k) + " of " + what));
        }
        v->elems_nbytes = (uint64_t)(data_ + pos_ - v->elems);
        return Status::ok();
      }
      const uint64_t esize = scalar_size(v->elem_type);
      if (v->count > left() / esize) {
        return data_loss(path_ + ": " + what + " claims an array of " + std::to_string(v->count) +
                         " " + gguf_type_name(v->elem_type) + " elements (" +
                         std::to_string(esize) + " bytes each) but only " + std::to_string(left()) +
                         " bytes are left");
      }
      v->elems = data_ + pos_;
      v->elems_nbytes = v->count * esize;
      if (v->elem_type == GgufType::kBool) {
        for (uint64_t k = 0; k < v->count; ++k) {
          if (v->elems[k] > 1) {
            return data_loss(path_ + ": element " + std::to_string(k) + " of " + what +
                             " is a bool with value " + std::to_string(v->elems[k]) +
                             " (expected 0 or 1)");
          }
        }
      }
      pos_ += v->count * esize;
      return Status::ok();
    }
    const uint64_t n = scalar_size(t);
    if (left() < n) return truncated(what, n);
    decode_scalar(t, data_ + pos_, v);
    pos_ += n;
    if (t == GgufType::kBool && v->u > 1) {
      return data_loss(path_ + ": " + what + " is a bool with value " + std::to_string(v->u) +
                       " (expected 0 or 1)");
    }
    return Status::ok();
  }

  Status parse_metadata() {
    // Counts are bounded by the file size, yet a forged one could still ask for several times
    // the file's size in entries; grow with what actually parses instead.
    out_.kvs_.reserve((size_t)std::min<uint64_t>(n_kv_, kMaxReserve));
    for (uint64_t k = 0; k < n_kv_; ++k) {
      const std::string entry = "metadata entry #" + std::to_string(k);
      std::string_view key;
      PALU_RETURN_IF_ERROR(read_string(&key, "key of " + entry));
      const std::string what = entry + " ('" + std::string(key) + "')";
      uint32_t t = 0;
      PALU_RETURN_IF_ERROR(read(&t, "value type of " + what));
      if (!is_known_type(t)) {
        return data_loss(path_ + ": " + what + " has unknown value type " + std::to_string(t) +
                         " (expected 0..12)");
      }
      GgufKv kv;
      kv.key = std::string(key);
      PALU_RETURN_IF_ERROR(read_value((GgufType)t, "value of " + what, &kv.value));
      if (!out_.kv_index_.emplace(kv.key, out_.kvs_.size()).second) {
        return data_loss(path_ + ": metadata key " + quoted(kv.key) + " appears twice (" + entry +
                         " repeats it)");
      }
      out_.kvs_.push_back(std::move(kv));
    }
    return Status::ok();
  }

  Status parse_alignment() {
    out_.alignment_ = kDefaultAlignment;
    if (!out_.has("general.alignment")) return Status::ok();
    PALU_ASSIGN_OR_RETURN(uint32_t a, out_.get_u32("general.alignment"));
    if (a == 0 || (a & (a - 1)) != 0) {
      return data_loss(path_ + ": metadata 'general.alignment' must be a power of two, found " +
                       std::to_string(a));
    }
    out_.alignment_ = a;
    return Status::ok();
  }

  Status parse_tensor_infos() {
    if (n_tensors_ > left() / kMinTensorInfoBytes) {
      return data_loss(path_ + ": header field 'n_tensors' is " + std::to_string(n_tensors_) +
                       " but only " + std::to_string(left()) +
                       " bytes follow the metadata; at most " +
                       std::to_string(left() / kMinTensorInfoBytes) + " tensor infos fit");
    }
    out_.tensors_.reserve((size_t)std::min<uint64_t>(n_tensors_, kMaxReserve));
    for (uint64_t k = 0; k < n_tensors_; ++k) {
      const std::string entry = "tensor info #" + std::to_string(k);
      GgufTensorInfo ti;
      std::string_view name;
      PALU_RETURN_IF_ERROR(read_string(&name, "name of " + entry));
      if (name.empty()) return data_loss(path_ + ": " + entry + " has an empty name");
      ti.name = std::string(name);
      const std::string where = path_ + ": tensor " + quoted(ti.name);
      PALU_RETURN_IF_ERROR(read(&ti.n_dims, "n_dims of " + entry));
      if (ti.n_dims == 0 || ti.n_dims > kMaxDims) {
        return data_loss(where + ": n_dims is " + std::to_string(ti.n_dims) + ", expected 1.." +
                         std::to_string(kMaxDims));
      }
      for (uint32_t d = 0; d < ti.n_dims; ++d) {
        PALU_RETURN_IF_ERROR(read(&ti.ne[d], "ne[" + std::to_string(d) + "] of " + entry));
        if (ti.ne[d] > (uint64_t)std::numeric_limits<int64_t>::max()) {
          return data_loss(where + ": ne[" + std::to_string(d) + "] is " +
                           std::to_string(ti.ne[d]) + ", more than 2^63-1");
        }
      }
      PALU_RETURN_IF_ERROR(read(&ti.ggml_type, "type of " + entry));
      PALU_RETURN_IF_ERROR(read(&ti.offset, "offset of " + entry));

      // Element count and byte size, each step checked for overflow.
      uint64_t numel = 1;
      for (uint32_t d = 0; d < ti.n_dims; ++d) {
        if (__builtin_mul_overflow(numel, ti.ne[d], &numel) ||
            numel > (uint64_t)std::numeric_limits<int64_t>::max()) {
          return data_loss(where + ": element count of ne " + ti.ne_string() +
                           " overflows 64 bits");
        }
      }
      const GgmlTypeTraits* tt = ggml_type_traits(ti.ggml_type);
      if (tt == nullptr) {
        return unimplemented(where + " has unknown ggml type id " + std::to_string(ti.ggml_type) +
                             " (known ids: 0..39 less removed ones)");
      }
      if (ti.ne[0] % tt->block_elems != 0) {
        return data_loss(where + ": ne[0] = " + std::to_string(ti.ne[0]) +
                         " is not a multiple of " + std::to_string(tt->block_elems) +
                         ", the block size of type " + tt->name);
      }
      uint64_t nbytes = 0;
      if (__builtin_mul_overflow(numel / tt->block_elems, (uint64_t)tt->block_bytes, &nbytes)) {
        return data_loss(where + ": byte size of ne " + ti.ne_string() + " as " + tt->name +
                         " overflows 64 bits");
      }
      ti.nbytes = nbytes;
      if (ti.offset % out_.alignment_ != 0) {
        return data_loss(where + ": data offset " + std::to_string(ti.offset) +
                         " is not aligned to " + std::to_string(out_.alignment_) +
                         " bytes (general.alignment)");
      }
      if (!out_.tensor_index_.emplace(ti.name, out_.tensors_.size()).second) {
        return data_loss(where + " appears twice (" + entry + " repeats it)");
      }
      out_.tensors_.push_back(std::move(ti));
    }
    return Status::ok();
  }

  Status place_tensors() {
    const uint64_t info_end = pos_;
    const uint64_t a = out_.alignment_;
    // info_end <= size_ < 2^64 - a, so this does not wrap.
    out_.data_offset_ = (info_end + a - 1) / a * a;
    if (out_.tensors_.empty()) return Status::ok();  // vocab-only files may end here
    if (out_.data_offset_ > size_) {
      return data_loss(path_ + ": the data section starts at offset " +
                       std::to_string(out_.data_offset_) + " (tensor infos end at " +
                       std::to_string(info_end) + ", aligned to " + std::to_string(a) +
                       ") but the file has " + std::to_string(size_) + " bytes");
    }
    const uint64_t data_size = size_ - out_.data_offset_;
    for (GgufTensorInfo& ti : out_.tensors_) {
      if (ti.offset > data_size || ti.nbytes > data_size - ti.offset) {
        return data_loss(
            path_ + ": tensor " + quoted(ti.name) + " (" + ggml_type_name(ti.ggml_type) + " " +
            ti.ne_string() + ", " + std::to_string(ti.nbytes) + " bytes at data offset " +
            std::to_string(ti.offset) + ") runs past the end of the file: the data section has " +
            std::to_string(data_size) + " bytes");
      }
      ti.data = data_ + out_.data_offset_ + ti.offset;
    }
    // No two tensors may share bytes.
    std::vector<const GgufTensorInfo*> by_offset;
    by_offset.reserve(out_.tensors_.size());
    for (const auto& ti : out_.tensors_) by_offset.push_back(&ti);
    std::sort(
        by_offset.begin(), by_offset.end(),
        [](const GgufTensorInfo* x, const GgufTensorInfo* y) { return x->offset < y->offset; });
    for (size_t k = 1; k < by_offset.size(); ++k) {
      const GgufTensorInfo* p = by_offset[k - 1];
      const GgufTensorInfo* q = by_offset[k];
      if (p->nbytes > 0 && q->offset < p->offset + p->nbytes) {
        return data_loss(path_ + ": tensor " + quoted(q->name) + " at data offset " +
                         std::to_string(q->offset) + " overlaps tensor " + quoted(p->name) +
                         " at [" + std::to_string(p->offset) + ", " +
                         std::to_string(p->offset + p->nbytes) + ")");
      }
    }
    return Status::ok();
  }

  const std::string path_;
  const uint8_t* data_;
  const uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t n_tensors_ = 0;
  uint64_t n_kv_ = 0;
  GgufFile out_;
};

Result<GgufFile> GgufFile::open(const std::string& path) {
  PALU_ASSIGN_OR_RETURN(auto file, MappedFile::open(path));
  return parse(std::move(file));
}

Result<GgufFile> GgufFile::parse(std::shared_ptr<const MappedFile> file) {
  if (!file) return invalid_argument("GgufFile::parse: no file");
  return GgufParser(std::move(file)).run();
}

// ---------------------------------------------------------------------------------------------
// Metadata accessors

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kvs_[it->second].value;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Result<const GgufValue*> GgufFile::require(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr)
    return not_found(path() + ": metadata key '" + std::string(key) + "' is missing");
  return v;
}

Status GgufFile::wrong_type(std::string_view key, const GgufValue& v, const char* expected) const {
  return data_loss(path() + ": metadata key '" + std::string(key) + "' has type " +
                   v.type_string() + ", expected " + expected);
}

namespace {

// The value of an integer scalar, wide enough for u64 and i64 alike; nullopt otherwise.
std::optional<__int128> integer_value(const GgufValue& v) {
  if (is_unsigned(v.type)) return (__int128)v.u;
  if (is_signed(v.type)) return (__int128)v.i;
  return std::nullopt;
}

std::string integer_string(const GgufValue& v) {
  return is_signed(v.type) ? std::to_string(v.i) : std::to_string(v.u);
}

}  // namespace

Result<std::string_view> GgufFile::get_string(std::string_view key) const {
  PALU_ASSIGN_OR_RETURN(const GgufValue* v, require(key));
  if (v->type != GgufType::kString) return wrong_type(key, *v, "string");
  return v->str;
}

Result<__int128> GgufFile::get_integer(std::string_view key, __int128 lo, __int128 hi,
                                       const char* range) const {
  PALU_ASSIGN_OR_RETURN(const GgufValue* v, require(key));
  const std::optional<__int128> x = integer_value(*v);
  if (!x) return wrong_type(key, *v, "an integer");
  if (*x < lo || *x > hi) {
    return data_loss(path() + ": metadata key '" + std::string(key) + "' is " + integer_string(*v) +
                     ", outside the " + range + " range");
  }
  return *x;
}

Result<uint64_t> GgufFile::get_u64(std::string_view key) const {
  PALU_ASSIGN_OR_RETURN(__int128 x,
                        get_integer(key, 0, std::numeric_limits<uint64_t>::max(), "u64"));
  return (uint64_t)x;
}

Result<uint32_t> GgufFile::get_u32(std::string_view key) const {
  PALU_ASSIGN_OR_RETURN(__int128 x,
                        get_integer(key, 0, std::numeric_limits<uint32_t>::max(), "u32"));
  return (uint32_t)x;
}

Result<int32_t> GgufFile::get_i32(std::string_view key) const {
  PALU_ASSIGN_OR_RETURN(__int128 x, get_integer(key, std::numeric_limits<int32_t>::min(),
                                                std::numeric_limits<int32_t>::max(), "i32"));
  return (int32_t)x;
}

Result<float> GgufFile::get_f32(std::string_view key) const {
  PALU_ASSIGN_OR_RETURN(const GgufValue* v, require(key));
  if (!is_float(v->type)) return wrong_type(key, *v, "f32 or f64");
  return (float)v->f;
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  PALU_ASSIGN_OR_RETURN(const GgufValue* v, require(key));
  if (v->type != GgufType::kBool) return wrong_type(key, *v, "bool");
  return v->u != 0;
}

Result<std::string_view> GgufFile::get_string_or(std::string_view key,
                                                 std::string_view fallback) const {
  if (!has(key)) return fallback;
  return get_string(key);
}

Result<uint32_t> GgufFile::get_u32_or(std::string_view key, uint32_t fallback) const {
  if (!has(key)) return fallback;
  return get_u32(key);
}

Result<float> GgufFile::get_f32_or(std::string_view key, float fallback) const {
  if (!has(key)) return fallback;
  return get_f32(key);
}

Result<bool> GgufFile::get_bool_or(std::string_view key, bool fallback) const {
  if (!has(key)) return fallback;
  return get_bool(key);
}

Result<uint64_t> GgufFile::get_array_size(std::string_view key) const {
  PALU_ASSIGN_OR_RETURN(const GgufValue* v, require(key));
  if (v->type != GgufType::kArray) return wrong_type(key, *v, "an array");
  return v->count;
}

Result<std::vector<std::string>> GgufFile::get_string_array(std::string_view key) const {
  PALU_ASSIGN_OR_RETURN(const GgufValue* v, require(key));
  if (v->type != GgufType::kArray || v->elem_type != GgufType::kString) {
    return wrong_type(key, *v, "array<string>");
  }
  std::vector<std::string> out;
  const std::vector<std::string_view> views = v->string_elements();
  out.reserve(views.size());
  for (std::string_view s : views) out.emplace_back(s);
  return out;
}

Result<std::vector<float>> GgufFile::get_f32_array(std::string_view key) const {
  PALU_ASSIGN_OR_RETURN(const GgufValue* v, require(key));
  if (v->type != GgufType::kArray || !is_float(v->elem_type)) {
    return wrong_type(key, *v, "array<f32> or array<f64>");
  }
  const uint64_t esize = scalar_size(v->elem_type);
  std::vector<float> out((size_t)v->count);
  for (uint64_t k = 0; k < v->count; ++k) {
    const uint8_t* p = v->elems + k * esize;
    out[k] = v->elem_type == GgufType::kF32 ? load<float>(p) : (float)load<double>(p);
  }
  return out;
}

Result<std::vector<int32_t>> GgufFile::get_i32_array(std::string_view key) const {
  PALU_ASSIGN_OR_RETURN(const GgufValue* v, require(key));
  if (v->type != GgufType::kArray || !(is_signed(v->elem_type) || is_unsigned(v->elem_type))) {
    return wrong_type(key, *v, "an array of integers");
  }
  const uint64_t esize = scalar_size(v->elem_type);
  std::vector<int32_t> out((size_t)v->count);
  for (uint64_t k = 0; k < v->count; ++k) {
    int64_t x = 0;
    if (!integer_element(v->elem_type, v->elems + k * esize, &x) ||
        x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max()) {
      return data_loss(path() + ": element " + std::to_string(k) + " of metadata key '" +
                       std::string(key) + "' is outside the i32 range");
    }
    out[k] = (int32_t)x;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Llama config

namespace {

// A non-negative metadata integer that fits in int (validate() checks positivity), or
// `fallback` when missing and fallback >= 0; required otherwise.
Status get_int_field(const GgufFile& g, std::string_view key, int fallback, int* out) {
  if (!g.has(key)) {
    if (fallback >= 0) {
      *out = fallback;
      return Status::ok();
    }
    return not_found(g.path() + ": metadata key '" + std::string(key) +
                     "' is missing (required for a llama model)");
  }
  PALU_ASSIGN_OR_RETURN(uint32_t v, g.get_u32(key));
  if (v > (uint32_t)std::numeric_limits<int>::max()) {
    return data_loss(g.path() + ": metadata key '" + std::string(key) + "' is " +
                     std::to_string(v) + ", expected at most " +
                     std::to_string(std::numeric_limits<int>::max()));
  }
  *out = (int)v;
  return Status::ok();
}

// A token id key, or -1 when missing; must lie inside the vocabulary.
Status get_token_id(const GgufFile& g, std::string_view key, int vocab_size, int32_t* out) {
  *out = -1;
  if (!g.has(key)) return Status::ok();
  PALU_ASSIGN_OR_RETURN(uint32_t v, g.get_u32(key));
  if (v >= (uint32_t)vocab_size) {
    return data_loss(g.path() + ": metadata key '" + std::string(key) + "' is " +
                     std::to_string(v) + ", outside the vocabulary of " +
                     std::to_string(vocab_size) + " tokens");
  }
  *out = (int32_t)v;
  return Status::ok();
}

}  // namespace

Result<ModelConfig> gguf_llama_config(const GgufFile& g) {
  const std::string& path = g.path();
  PALU_ASSIGN_OR_RETURN(std::string_view arch, g.get_string("general.architecture"));
  if (arch != "llama") {
    return unimplemented(path + ": unknown architecture " + quoted(arch) +
                         " (palu reads GGUF files of architecture 'llama' only)");
  }
  ModelConfig c;
  c.architecture = "llama";
  PALU_RETURN_IF_ERROR(get_int_field(g, "llama.embedding_length", -1, &c.hidden_size));
  PALU_RETURN_IF_ERROR(get_int_field(g, "llama.feed_forward_length", -1, &c.intermediate_size));
  PALU_RETURN_IF_ERROR(get_int_field(g, "llama.block_count", -1, &c.num_layers));
  PALU_RETURN_IF_ERROR(get_int_field(g, "llama.attention.head_count", -1, &c.num_heads));
  PALU_RETURN_IF_ERROR(
      get_int_field(g, "llama.attention.head_count_kv", c.num_heads, &c.num_kv_heads));
  PALU_RETURN_IF_ERROR(get_int_field(g, "llama.context_length", -1, &c.max_position_embeddings));
  PALU_ASSIGN_OR_RETURN(c.rms_norm_eps, g.get_f32("llama.attention.layer_norm_rms_epsilon"));
  PALU_ASSIGN_OR_RETURN(float theta, g.get_f32_or("llama.rope.freq_base", 10000.0f));
  c.rope_theta = theta;

  // head_dim: attention.key_length, else d / H; the rotary dimension defaults to head_dim
  // (llama.cpp's reading). We rotate whole heads, so a partial rotary dimension is refused.
  const int default_head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  PALU_RETURN_IF_ERROR(
      get_int_field(g, "llama.attention.key_length", default_head_dim, &c.head_dim));
  int rope_dim = 0;
  PALU_RETURN_IF_ERROR(get_int_field(g, "llama.rope.dimension_count", c.head_dim, &rope_dim));
  int value_dim = 0;
  PALU_RETURN_IF_ERROR(get_int_field(g, "llama.attention.value_length", c.head_dim, &value_dim));
  if (rope_dim != c.head_dim || value_dim != c.head_dim) {
    return unimplemented(path + ": llama.rope.dimension_count (" + std::to_string(rope_dim) +
                         ") and llama.attention.value_length (" + std::to_string(value_dim) +
                         ") must equal the head dimension (" + std::to_string(c.head_dim) +
                         "); partial rotary embeddings are not supported");
  }
  PALU_ASSIGN_OR_RETURN(std::string_view scaling,
                        g.get_string_or("llama.rope.scaling.type", "none"));
  if (scaling != "none") {
    return unimplemented(path + ": llama.rope.scaling.type " + quoted(scaling) +
                         " is not supported (only 'none')");
  }
  if (g.find_tensor("rope_freqs.weight") != nullptr) {
    return unimplemented(path +
                         ": tensor 'rope_freqs.weight' (per-dimension RoPE frequency "
                         "scaling, e.g. Llama 3.1) is not supported");
  }
  PALU_ASSIGN_OR_RETURN(uint32_t experts, g.get_u32_or("llama.expert_count", 0));
  if (experts > 0) {
    return unimplemented(path + ": llama.expert_count is " + std::to_string(experts) +
                         "; mixture-of-experts models are not supported");
  }

  // Vocabulary size: the token list, else llama.vocab_size, else the embedding's rows.
  if (g.has("tokenizer.ggml.tokens")) {
    PALU_ASSIGN_OR_RETURN(uint64_t n, g.get_array_size("tokenizer.ggml.tokens"));
    if (n > (uint64_t)std::numeric_limits<int>::max()) {
      return data_loss(path + ": tokenizer.ggml.tokens has " + std::to_string(n) +
                       " entries, more than an int holds");
    }
    c.vocab_size = (int)n;
  } else if (g.has("llama.vocab_size")) {
    PALU_RETURN_IF_ERROR(get_int_field(g, "llama.vocab_size", -1, &c.vocab_size));
  } else if (const GgufTensorInfo* e = g.find_tensor("token_embd.weight");
             e && e->n_dims == 2 && e->ne[1] <= (uint64_t)std::numeric_limits<int>::max()) {
    c.vocab_size = (int)e->ne[1];
  } else {
    return not_found(path +
                     ": cannot tell the vocabulary size: no tokenizer.ggml.tokens, "
                     "llama.vocab_size or 2-D token_embd.weight");
  }
  PALU_RETURN_IF_ERROR(get_token_id(g, "tokenizer.ggml.bos_token_id", c.vocab_size, &c.bos_id));
  PALU_RETURN_IF_ERROR(get_token_id(g, "tokenizer.ggml.eos_token_id", c.vocab_size, &c.eos_id));

  c.tie_word_embeddings = g.find_tensor("output.weight") == nullptr;
  c.qkv_bias = g.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.qk_rows_interleaved = true;
  PALU_RETURN_IF_ERROR(c.validate(path));
  return c;
}

// ---------------------------------------------------------------------------------------------
// Tensor names

std::string gguf_to_hf_tensor_name(std::string_view name) {
  if (name == "token_embd.weight") return "model.embed_tokens.weight";
  if (name == "output_norm.weight") return "model.norm.weight";
  if (name == "output.weight") return "lm_head.weight";
  constexpr std::string_view kBlk = "blk.";
  if (name.substr(0, kBlk.size()) != kBlk) return "";
  const size_t dot = name.find('.', kBlk.size());
  if (dot == std::string_view::npos || dot == kBlk.size()) return "";
  const std::string_view layer = name.substr(kBlk.size(), dot - kBlk.size());
  if (layer.size() > 9 ||
      !std::all_of(layer.begin(), layer.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
    return "";
  }
  if (layer.size() > 1 && layer[0] == '0') return "";  // "blk.01" is not a layer name
  std::string_view rest = name.substr(dot + 1);        // e.g. "attn_q.weight"
  std::string_view suffix;
  if (rest.size() > 7 && rest.substr(rest.size() - 7) == ".weight") {
    suffix = ".weight";
  } else if (rest.size() > 5 && rest.substr(rest.size() - 5) == ".bias") {
    suffix = ".bias";
  } else {
    return "";
  }
  const std::string_view stem = rest.substr(0, rest.size() - suffix.size());
  static constexpr std::pair<std::string_view, std::string_view> kMap[] = {
      {"attn_norm", "input_layernorm"}, {"ffn_norm", "post_attention_layernorm"},
      {"attn_q", "self_attn.q_proj"},   {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},   {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  for (const auto& [g, hf] : kMap) {
    if (stem == g) {
      return "model.layers." + std::string(layer) + "." + std::string(hf) + std::string(suffix);
    }
  }
  return "";
}

Result<TensorMap> gguf_tensor_map(const GgufFile& g) {
  TensorMap map;
  map.add_file(g.file());
  for (const GgufTensorInfo& ti : g.tensors()) {
    TensorView v;
    switch (ti.ggml_type) {
      case kGgmlTypeF32:
        v.dtype = DType::kF32;
        break;
      case kGgmlTypeF16:
        v.dtype = DType::kF16;
        break;
      case kGgmlTypeBF16:
        v.dtype = DType::kBF16;
        break;
      default: {
        const GgmlTypeTraits* tt = ggml_type_traits(ti.ggml_type);
        const std::string kind = tt && tt->quantized ? "quantized type " : "type ";
        return unimplemented(g.path() + ": tensor " + quoted(ti.name) + " has " + kind +
                             ggml_type_name(ti.ggml_type) +
                             "; palu loads f32/f16/bf16 GGUF tensors only — convert with "
                             "llama.cpp's convert script using --outtype f16");
      }
    }
    v.shape = ti.hf_shape();
    v.data = ti.data;
    v.nbytes = (size_t)ti.nbytes;
    v.file = g.path();
    std::string hf = gguf_to_hf_tensor_name(ti.name);
    PALU_RETURN_IF_ERROR(map.add(hf.empty() ? ti.name : hf, std::move(v)));
  }
  return map;
}

}  // namespace palu::model
