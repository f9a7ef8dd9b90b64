// GGUF (v2/v3) reader: llama.cpp's single-file model format, with its metadata, tensor infos
// and embedded vocabulary.
//
// Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv × (string key,
// u32 value type, value), n_tensors × (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
// u64 offset), padding to `general.alignment` (default 32), then the data section. Strings
// are u64 length + bytes (no NUL). ne[0] is the innermost (fastest-varying) dimension, so a
// Linear weight [out, in] in Hugging Face order is stored with ne = {in, out}.
//
// The parser trusts nothing in the file: every length and count is bounded by the bytes
// left before anything is allocated or read, dimension products are checked for overflow,
// and every tensor must lie, aligned, inside the data section without overlapping another.
// Every error is a Status whose message names the file, the field or tensor, and the
// expected and found values.
//
// Ownership: a GgufFile holds its MappedFile through a shared_ptr; the string views and data
// pointers it hands out stay valid while the GgufFile (or any copy of it) lives. A TensorMap
// from gguf_tensor_map() keeps the mapping alive by itself.
//
// Thread-safety: immutable after open(); const methods may be called concurrently.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "backends/base/status.h"
#include "model/config.h"
#include "model/mapped_file.h"
#include "model/tensor_map.h"
#include "model/tokenizer.h"

namespace palu::model {

// Metadata value types, as numbered in the GGUF spec.
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
// "u32", "string", "array", ...; "type#N" for values outside the enum.
std::string gguf_type_name(GgufType t);

// ggml tensor element types that appear in GGUF files (ids as in ggml.h).
inline constexpr uint32_t kGgmlTypeF32 = 0;
inline constexpr uint32_t kGgmlTypeF16 = 1;
inline constexpr uint32_t kGgmlTypeQ4_0 = 2;
inline constexpr uint32_t kGgmlTypeBF16 = 30;

// Storage of one ggml type: `block_elems` elements take `block_bytes` bytes.
struct GgmlTypeTraits {
  const char* name = nullptr;  // "F32", "Q4_0", ...
  uint32_t block_elems = 0;
  uint32_t block_bytes = 0;
  bool quantized = false;
};
// Traits of `type`, or nullptr when the id is unknown or was removed from ggml.
const GgmlTypeTraits* ggml_type_traits(uint32_t type);
// "Q4_0", or "type#N" for an unknown id.
std::string ggml_type_name(uint32_t type);

// One metadata value. Scalars are decoded; arrays of numbers or bools point at their
// little-endian bytes inside the mapped file (possibly unaligned: read with memcpy).
struct GgufValue {
  GgufType type = GgufType::kU8;
  uint64_t u = 0;        // kU8 / kU16 / kU32 / kU64, and kBool (0 or 1)
  int64_t i = 0;         // kI8 / kI16 / kI32 / kI64
  double f = 0;          // kF32 / kF64
  std::string_view str;  // kString (into the mapped file)
  // kArray:
  GgufType elem_type = GgufType::kU8;
  uint64_t count = 0;              // number of elements
  const uint8_t* elems = nullptr;  // the elements' bytes in the mapped file: count × element size
                                   // for numbers and bools; count × (u64 length + bytes) for
                                   // strings (validated by the parser)
  uint64_t elems_nbytes = 0;

  // The elements of a string array, as views into the mapped file (empty for other values).
  std::vector<std::string_view> string_elements() const;
  // "u32", "array<string>[32000]", ...
  std::string type_string() const;
};

struct GgufKv {
  std::string key;
  GgufValue value;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t n_dims = 0;                     // 1..4
  std::array<uint64_t, 4> ne{1, 1, 1, 1};  // ne[0] innermost; unused dims are 1
  uint32_t ggml_type = 0;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // inside the mapped file; bounds-checked

  // Shape in Hugging Face order (outermost first): ne reversed, n_dims entries.
  std::vector<int64_t> hf_shape() const;
  // "[64, 512]" in GGUF (ne) order.
  std::string ne_string() const;
};

class GgufFile {
 public:
  // Maps and parses `path`. Fails with DATA_LOSS for a corrupt or truncated file,
  // UNIMPLEMENTED for a valid file we cannot read (version, unknown tensor type).
  static Result<GgufFile> open(const std::string& path);
  // Parses an already mapped file.
  static Result<GgufFile> parse(std::shared_ptr<const MappedFile> file);

  const std::string& path() const { return file_->path(); }
  const std::shared_ptr<const MappedFile>& file() const { return file_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }      // bytes, a power of two
  uint64_t data_offset() const { return data_offset_; }  // start of the data section in the file

  // ---- Metadata ----
  const std::vector<GgufKv>& metadata() const { return kvs_; }  // in file order
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Typed accessors: NOT_FOUND when the key is missing; DATA_LOSS naming the key, the expected
  // and the found type (or value) when the type is wrong or the value does not fit. Integer
  // accessors take any integer type whose value fits; f32 accessors take f32 or f64.
  Result<std::string_view> get_string(std::string_view key) const;
  Result<uint32_t> get_u32(std::string_view key) const;
  Result<int32_t> get_i32(std::string_view key) const;
  Result<uint64_t> get_u64(std::string_view key) const;
  Result<float> get_f32(std::string_view key) const;
  Result<bool> get_bool(std::string_view key) const;
  // Same, with `fallback` when the key is missing (a wrong type is still an error).
  Result<std::string_view> get_string_or(std::string_view key, std::string_view fallback) const;
  Result<uint32_t> get_u32_or(std::string_view key, uint32_t fallback) const;
  Result<float> get_f32_or(std::string_view key, float fallback) const;
  Result<bool> get_bool_or(std::string_view key, bool fallback) const;

  // Arrays: the element count of any array; elements of string / f32 (or f64) / integer
  // arrays (each integer must fit in i32).
  Result<uint64_t> get_array_size(std::string_view key) const;
  Result<std::vector<std::string>> get_string_array(std::string_view key) const;
  Result<std::vector<float>> get_f32_array(std::string_view key) const;
  Result<std::vector<int32_t>> get_i32_array(std::string_view key) const;

  // ---- Tensors ----
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }  // in file order
  const GgufTensorInfo* find_tensor(std::string_view name) const;

 private:
  GgufFile() = default;
  friend class GgufParser;

  Result<const GgufValue*> require(std::string_view key) const;
  Status wrong_type(std::string_view key, const GgufValue& v, const char* expected) const;
  // An integer scalar in [lo, hi]; `range` names the range in messages.
  Result<__int128> get_integer(std::string_view key, __int128 lo, __int128 hi,
                               const char* range) const;

  std::shared_ptr<const MappedFile> file_;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<GgufKv> kvs_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// ModelConfig of a GGUF Llama file (`general.architecture` "llama"; anything else is
// UNIMPLEMENTED). Sets qk_rows_interleaved: llama.cpp's converter permutes the rows of W_q
// and W_k for interleaved RoPE, and the weight loader undoes it. Validated before returning.
Result<ModelConfig> gguf_llama_config(const GgufFile& gguf);

// The tensors of a GGUF file under their Hugging Face names (token_embd.weight →
// model.embed_tokens.weight, blk.N.attn_q.weight → model.layers.N.self_attn.q_proj.weight, ...)
// with shapes in Hugging Face order. Tensors with other names keep their GGUF name. Only F32,
// F16 and BF16 tensors are accepted; a quantized tensor is UNIMPLEMENTED naming it and its type.
Result<TensorMap> gguf_tensor_map(const GgufFile& gguf);
// The Hugging Face name of a GGUF tensor name, or "" when it has none.
std::string gguf_to_hf_tensor_name(std::string_view gguf_name);

// The tokenizer embedded in the metadata. `tokenizer.ggml.model` "llama" (SentencePiece) is
// turned into a SentencePiece ModelProto in memory; other models are UNIMPLEMENTED.
Result<std::unique_ptr<Tokenizer>> gguf_tokenizer(const GgufFile& gguf);
// The serialized SentencePiece ModelProto gguf_tokenizer() builds (exposed for tests/tools).
Result<std::string> gguf_sentencepiece_model_proto(const GgufFile& gguf);

}  // namespace palu::model
