// Session files: one saved session (its token history, its KV cache image and what it is bound
// to) on disk. Byte layout and rules: docs/formats.md "Session files". In short:
//
//   header  32 bytes  "PALUSESS", format version, header length, flags, XXH3-64 of the rest
//   chunks            tag u32, index u32, payload length u64, payload, XXH3-64 (of the chunk
//                     header and payload): META (JSON), TOKS (int32 token ids), IMAG × n (the
//                     cache image, ≤ 4 MiB each), END (the number of chunks before it)
//
// A file is bound to the model fingerprint and the cache layout hash it was saved with:
// check_session_binding refuses another model or layout (FAILED_PRECONDITION). Files are
// written with write_file_atomically (temp + fsync + rename + directory fsync): after a crash
// or a failed save the previous file is there, whole. The reader trusts nothing: every length
// is bounded by the bytes left before anything is allocated, every checksum is verified, and
// any defect is DATA_LOSS naming the file, the chunk and what was wrong; a corrupt file is
// kept for inspection with move_aside, never loaded.
//
// Ownership: values. Thread-safety: free functions on values; the FileSystem's rules apply.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backends/base/status.h"
#include "cache/block_pool.h"
#include "daemon/file_system.h"

namespace palu::daemon {

inline constexpr char kSessionMagic[8] = {'P', 'A', 'L', 'U', 'S', 'E', 'S', 'S'};
inline constexpr uint32_t kSessionFormatVersion = 1;
// The writer's image chunk size and the reader's limit for one image chunk.
inline constexpr size_t kSessionImageChunkBytes = size_t{4} << 20;
// The reader's limit for the META chunk.
inline constexpr size_t kSessionMaxMetaBytes = size_t{1} << 20;

struct SessionFile {
  std::string name;               // the session's name (as the client gave it)
  uint32_t owner_uid = 0;         // uid that created the session
  std::string model_name;         // for messages
  std::string model_fingerprint;  // model::fingerprint_model(), "xxh3-64:<hex>"
  std::string cache_description;  // CacheLayout::describe() (for messages)
  std::vector<int32_t> tokens;    // token history, size == image.length, every id ≥ 0
  std::string metadata_json;      // free-form (sampling defaults, created time, ...)
  cache::SequenceImage image;     // image.layout_hash binds the file to its layout
};

// Writes `file` to `path` atomically (write_file_atomically). INVALID_ARGUMENT when the
// contents are inconsistent (tokens.size() != image.length, a negative token id, window_begin
// outside [0, length], a string field over kSessionMaxMetaBytes); IO_ERROR from the file
// system (e.g. "disk full"). image_chunk_bytes (1 .. kSessionImageChunkBytes) is for tests.
Status write_session_file(FileSystem& fs, const std::string& path, const SessionFile& file,
                          size_t image_chunk_bytes = kSessionImageChunkBytes);

// Reads and verifies a session file of at most max_bytes bytes.
//   NOT_FOUND / IO_ERROR      from the file system
//   RESOURCE_EXHAUSTED        the file is larger than max_bytes
//   FAILED_PRECONDITION       a format version or flags this build does not support
//   DATA_LOSS                 anything else: "PATH: chunk K (tokens) checksum mismatch",
//                             "PATH: truncated: ...", lying lengths, missing END, garbage after
//                             it, META fields missing or inconsistent
// It checks the file, not its binding: call check_session_binding before importing the image.
Result<SessionFile> read_session_file(FileSystem& fs, const std::string& path, uint64_t max_bytes);

// FAILED_PRECONDITION unless the file was saved by the model with `fingerprint` and a cache of
// the layout with `layout_hash` (cache::layout_hash), e.g. "session file PATH was saved by
// model X (fingerprint A), this model is B". `path` only names the file in messages (empty:
// the session's name is used).
Status check_session_binding(const SessionFile& file, const std::string& fingerprint,
                             uint64_t layout_hash, const std::string& path = "");

// Renames a corrupt file to "PATH.corrupt-<unix seconds>" (with "-2", "-3", ... when that
// exists), fsyncs the directory and returns the new path. The file is kept, never deleted.
Result<std::string> move_aside(FileSystem& fs, const std::string& path);

}  // namespace palu::daemon
