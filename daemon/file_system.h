// FileSystem: the seam between palud's durable state (session files, the disk tier) and the
// operating system, so that tests can inject the failures a real disk produces (LevelDB's
// fault_injection_test is the model).
//
//   FileSystem         the interface: exclusive create / write / fsync / close, rename, fsync
//                      of a directory, bounded whole-file reads and positioned reads, list,
//                      remove, mkdir, size, exists.
//   RealFileSystem     POSIX. EINTR is retried, short writes and reads are looped. Errors are
//                      IO_ERROR (NOT_FOUND for ENOENT) naming the operation, the path and
//                      strerror; ENOSPC and EDQUOT say "disk full" / "disk quota exceeded".
//   FaultyFileSystem   wraps another FileSystem for tests: fails the Nth write or fsync (or
//                      every one from the Nth on) with a chosen errno, runs out of space after
//                      B bytes, and drop_unsynced() puts the disk into the state a power cut
//                      could leave: files cut back to their last fsynced size, creations and
//                      renames not followed by an fsync of their directory undone.
//   write_file_atomically   temp file in the same directory + write + fsync + close + rename +
//                      fsync(directory): a reader (or a crash) sees the old or the new file,
//                      whole, never a mix.
//
// Ownership: a WritableFile / ReadableFile owns its descriptor and closes it when destroyed
// (errors of that implicit close are lost: call close() to see them). Thread-safety: a
// FileSystem object may be used from several threads at once (RealFileSystem holds no state;
// FaultyFileSystem takes a lock); one open file is used by one thread at a time. Errors are
// values: Status / Result with the path in the message.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backends/base/status.h"

namespace palu::daemon {

// A file open for writing (appends at the end).
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  virtual const std::string& path() const = 0;
  // Writes all of data (a short write is an error only when the OS gives up, e.g. ENOSPC).
  virtual Status append(std::string_view data) = 0;
  // fsync: data and size are durable when it returns OK.
  virtual Status sync() = 0;
  // Closes the descriptor; further calls fail with FAILED_PRECONDITION. Idempotent error:
  // closing twice is an error, not a crash.
  virtual Status close() = 0;
};

// A file open for positioned reads.
class ReadableFile {
 public:
  virtual ~ReadableFile() = default;
  virtual const std::string& path() const = 0;
  // Size when the file was opened.
  virtual uint64_t size() const = 0;
  // Reads up to out.size() bytes at offset; returns how many were read (fewer only at the end
  // of the file).
  virtual Result<size_t> read_at(uint64_t offset, std::span<uint8_t> out) = 0;
};

enum class CreateMode {
  kExclusive,  // O_CREAT | O_EXCL: fails if the path exists (temp files)
  kTruncate,   // O_CREAT | O_TRUNC: replaces the contents of an existing file
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // Opens `path` for writing with permission bits `mode` (before the umask) for a new file.
  virtual Result<std::unique_ptr<WritableFile>> create_file(const std::string& path,
                                                            CreateMode create_mode,
                                                            mode_t mode = 0600) = 0;
  virtual Result<std::unique_ptr<ReadableFile>> open_file(const std::string& path) = 0;
  // The whole file; RESOURCE_EXHAUSTED naming the path, its size and the limit when it holds
  // more than max_bytes.
  virtual Result<std::string> read_file(const std::string& path, uint64_t max_bytes) = 0;
  // rename(2): atomically replaces `to`. Durable only after sync_dir of to's directory.
  virtual Status rename(const std::string& from, const std::string& to) = 0;
  // fsync of a directory: makes creations, renames and removals in it durable.
  virtual Status sync_dir(const std::string& dir) = 0;
  // Names in dir (no "." / ".."), sorted.
  virtual Result<std::vector<std::string>> list_dir(const std::string& dir) = 0;
  // unlink(2) of a file; NOT_FOUND when it does not exist.
  virtual Status remove(const std::string& path) = 0;
  // mkdir(2) of one directory with permission bits `mode` (before the umask). An existing
  // directory is OK and keeps its mode (callers that need a mode check it); an existing
  // non-directory is an error.
  virtual Status make_dir(const std::string& path, mode_t mode) = 0;
  virtual Result<uint64_t> file_size(const std::string& path) = 0;
  // False when the path does not exist (ENOENT / ENOTDIR); an error for anything else (EACCES).
  virtual Result<bool> exists(const std::string& path) = 0;
};

class RealFileSystem final : public FileSystem {
 public:
  Result<std::unique_ptr<WritableFile>> create_file(const std::string& path, CreateMode create_mode,
                                                    mode_t mode = 0600) override;
  Result<std::unique_ptr<ReadableFile>> open_file(const std::string& path) override;
  Result<std::string> read_file(const std::string& path, uint64_t max_bytes) override;
  Status rename(const std::string& from, const std::string& to) override;
  Status sync_dir(const std::string& dir) override;
  Result<std::vector<std::string>> list_dir(const std::string& dir) override;
  Status remove(const std::string& path) override;
  Status make_dir(const std::string& path, mode_t mode) override;
  Result<uint64_t> file_size(const std::string& path) override;
  Result<bool> exists(const std::string& path) override;
};

// The Status for a failed system call: NOT_FOUND for ENOENT, else IO_ERROR;
// "<op> <path>: <strerror>" with "disk full (...)" for ENOSPC and "disk quota exceeded (...)"
// for EDQUOT. Shared by RealFileSystem and FaultyFileSystem so injected errors read like real
// ones.
Status errno_status(std::string_view op, const std::string& path, int error);

// The directory of a path ("." for a bare name, "/" for "/x").
std::string parent_dir(const std::string& path);

// Test seam: a FileSystem that forwards to `base` and fails on command. Counts are of calls
// made through this object: writes = WritableFile::append calls, syncs = WritableFile::sync
// and sync_dir calls.
//
// drop_unsynced() simulates a power cut for the files and directories touched through this
// object since it was made (files it did not create or rename are taken as durable):
//   1. every file created here is cut back to the size it had at its last successful sync
//      (0 if never synced);
//   2. renames done here since the last successful sync_dir of the target's directory are
//      undone, newest first: the file goes back to its old name and a file the rename
//      replaced gets its old contents back;
//   3. files created here since the last successful sync_dir of their directory are removed.
// Removals are taken as durable at once. Call it with no file of this object open.
class FaultyFileSystem final : public FileSystem {
 public:
  explicit FaultyFileSystem(FileSystem& base) : base_(base) {}

  // The nth write (1 = the next one) from now fails with `error`; with and_after, every
  // write from the nth on fails. nth = 0 turns the fault off.
  void fail_write(int64_t nth, int error = 5 /* EIO */, bool and_after = false);
  // The same for fsyncs (of files and of directories).
  void fail_sync(int64_t nth, int error = 5 /* EIO */, bool and_after = false);
  // After `bytes` more bytes are written, every write fails with ENOSPC ("disk full"); the
  // write that crosses the limit writes the part that fits first, like a real full disk.
  void disk_full_after(uint64_t bytes);
  void clear_faults();

  int64_t writes() const;
  int64_t syncs() const;
  uint64_t bytes_written() const;

  Status drop_unsynced();

  Result<std::unique_ptr<WritableFile>> create_file(const std::string& path, CreateMode create_mode,
                                                    mode_t mode = 0600) override;
  Result<std::unique_ptr<ReadableFile>> open_file(const std::string& path) override;
  Result<std::string> read_file(const std::string& path, uint64_t max_bytes) override;
  Status rename(const std::string& from, const std::string& to) override;
  Status sync_dir(const std::string& dir) override;
  Result<std::vector<std::string>> list_dir(const std::string& dir) override;
  Status remove(const std::string& path) override;
  Status make_dir(const std::string& path, mode_t mode) override;
  Result<uint64_t> file_size(const std::string& path) override;
  Result<bool> exists(const std::string& path) override;

 private:
  class File;
  friend class File;
  struct Fault {
    int64_t at = 0;  // fail when the counter reaches this (0: off)
    bool and_after = false;
    int error = 0;
  };
  struct FileState {
    uint64_t written = 0;  // size through this object
    uint64_t synced = 0;   // size at the last successful sync
  };
  struct PendingOp {
    enum class Kind { kCreate, kRename } kind = Kind::kCreate;
    std::string path;                         // create: the file; rename: the new name
    std::string from;                         // rename: the old name
    std::optional<std::string> replaced;      // rename: contents of the replaced file
    std::optional<FileState> replaced_state;  // rename: its tracking state, if any
  };

  // Called by File with the lock not held.
  Status on_append(const std::string& path, WritableFile& base_file, std::string_view data);
  Status on_sync(const std::string& path, WritableFile& base_file);
  // Returns the injected errno of the next operation counted by `counter`, or 0.
  int next_fault(int64_t& counter, const Fault& f);

  FileSystem& base_;
  mutable std::mutex mu_;
  Fault write_fault_, sync_fault_;
  std::optional<uint64_t> disk_left_;  // bytes until "disk full"
  int64_t writes_ = 0, syncs_ = 0;
  uint64_t bytes_written_ = 0;
  std::map<std::string, FileState> files_;  // by current path
  std::vector<PendingOp> pending_;          // oldest first
};

// Writes `data` to `path` so that the old contents or the new ones survive any failure or
// crash: a temp file "<path>.tmp.<random>" in the same directory (exclusive create, mode
// 0600), write, fsync, close, rename over path, fsync of the directory. On a failure before
// the rename the temp file is removed and `path` is untouched; a failure of the final
// directory fsync is reported (IO_ERROR) with the new file already in place (whole and
// synced, but its name may not survive a crash).
Status write_file_atomically(FileSystem& fs, const std::string& path, std::string_view data);
// The same with the contents produced by `write` (streamed: no copy of the whole file).
Status write_file_atomically(FileSystem& fs, const std::string& path,
                             const std::function<Status(WritableFile&)>& write);

// True for names write_file_atomically uses for its temp files ("x.tmp.<16 hex digits>").
bool is_atomic_temp_name(std::string_view name);
// Removes such temp files in dir (left by a crash mid-save). Only the owner of the directory
// calls it, at start-up, when no save is running. Returns how many were removed.
Result<int> remove_stale_temps(FileSystem& fs, const std::string& dir);

}  // namespace palu::daemon
