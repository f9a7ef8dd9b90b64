#include "daemon/file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

namespace palu::daemon {
namespace {

std::string join(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

// A descriptor that closes itself.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// open(2) with EINTR retried.
int open_retry(const char* path, int flags, mode_t mode) {
  int fd;
  do {
    fd = ::open(path, flags, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

int fsync_retry(int fd) {
  int rc;
  do {
    rc = ::fsync(fd);
  } while (rc != 0 && errno == EINTR);
  return rc;
}

// pread until n bytes, the end of the file, or an error. Returns bytes read or -errno.
int64_t pread_full(int fd, uint8_t* out, size_t n, uint64_t offset) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd, out + done, n - done, (off_t)(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -(int64_t)errno;
    }
    if (r == 0) break;
    done += (size_t)r;
  }
  return (int64_t)done;
}

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  const std::string& path() const override { return path_; }

  Status append(std::string_view data) override {
    if (fd_ < 0) return failed_precondition("write " + path_ + ": the file is closed");
    const char* p = data.data();
    size_t left = data.size();
    while (left > 0) {
      const ssize_t w = ::write(fd_, p, left);
      if (w < 0) {
        if (errno == EINTR) continue;
        return errno_status("write", path_, errno);
      }
      if (w == 0) return errno_status("write", path_, EIO);  // no progress: never loop forever
      p += w;
      left -= (size_t)w;
    }
    return Status::ok();
  }

  Status sync() override {
    if (fd_ < 0) return failed_precondition("fsync " + path_ + ": the file is closed");
    if (fsync_retry(fd_) != 0) return errno_status("fsync", path_, errno);
    return Status::ok();
  }

  Status close() override {
    if (fd_ < 0) return failed_precondition("close " + path_ + ": the file is already closed");
    const int fd = fd_;
    fd_ = -1;
    // Not retried on EINTR: Linux has released the descriptor either way.
    if (::close(fd) != 0 && errno != EINTR) return errno_status("close", path_, errno);
    return Status::ok();
  }

 private:
  std::string path_;
  int fd_;
};

class PosixReadableFile final : public ReadableFile {
 public:
  PosixReadableFile(std::string path, int fd, uint64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}
  ~PosixReadableFile() override { ::close(fd_); }
  const std::string& path() const override { return path_; }
  uint64_t size() const override { return size_; }
  Result<size_t> read_at(uint64_t offset, std::span<uint8_t> out) override {
    const int64_t r = pread_full(fd_, out.data(), out.size(), offset);
    if (r < 0) return errno_status("read", path_, (int)-r);
    return (size_t)r;
  }

 private:
  std::string path_;
  int fd_;
  uint64_t size_;
};

std::string hex16(uint64_t v) {
  static const char* kHex = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[(size_t)i] = kHex[v & 15];
  return s;
}

constexpr std::string_view kTempInfix = ".tmp.";

}  // namespace

Status errno_status(std::string_view op, const std::string& path, int error) {
  std::string what = std::strerror(error);
  if (error == ENOSPC) what = "disk full (" + what + ")";
#ifdef EDQUOT
  if (error == EDQUOT) what = "disk quota exceeded (" + what + ")";
#endif
  std::string m = std::string(op) + " " + path + ": " + what;
  return error == ENOENT ? not_found(std::move(m)) : io_error(std::move(m));
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// ---- RealFileSystem ---------------------------------------------------------------------------

Result<std::unique_ptr<WritableFile>> RealFileSystem::create_file(const std::string& path,
                                                                  CreateMode create_mode,
                                                                  mode_t mode) {
  const int flags =
      O_WRONLY | O_CREAT | O_CLOEXEC | (create_mode == CreateMode::kExclusive ? O_EXCL : O_TRUNC);
  const int fd = open_retry(path.c_str(), flags, mode);
  if (fd < 0) return errno_status("create", path, errno);
  return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd));
}

Result<std::unique_ptr<ReadableFile>> RealFileSystem::open_file(const std::string& path) {
  const int fd = open_retry(path.c_str(), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) return errno_status("open", path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return errno_status("stat", path, e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return io_error("open " + path + ": not a regular file");
  }
  return std::unique_ptr<ReadableFile>(new PosixReadableFile(path, fd, (uint64_t)st.st_size));
}

Result<std::string> RealFileSystem::read_file(const std::string& path, uint64_t max_bytes) {
  PALU_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, open_file(path));
  const auto too_big = [&](uint64_t size) {
    return resource_exhausted("read " + path + ": the file is " + std::to_string(size) +
                              " bytes, more than the limit of " + std::to_string(max_bytes) +
                              " bytes");
  };
  if (f->size() > max_bytes) return too_big(f->size());
  std::string data;
  try {
    data.resize((size_t)f->size());
  } catch (const std::bad_alloc&) {
    return resource_exhausted("read " + path + ": cannot allocate " + std::to_string(f->size()) +
                              " bytes");
  }
  PALU_ASSIGN_OR_RETURN(size_t n,
                        f->read_at(0, {reinterpret_cast<uint8_t*>(data.data()), data.size()}));
  data.resize(n);  // the file shrank since open
  // The file may have grown since open: one more byte says so.
  uint8_t extra;
  PALU_ASSIGN_OR_RETURN(size_t more, f->read_at(n, {&extra, 1}));
  if (more != 0) {
    if (n + 1 > max_bytes) return too_big(n + 1);
    return io_error("read " + path + ": the file changed size while being read");
  }
  return data;
}

Status RealFileSystem::rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    return errno_status("rename", from + " -> " + to, errno);
  return Status::ok();
}

Status RealFileSystem::sync_dir(const std::string& dir) {
  const int fd = open_retry(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) return errno_status("open directory", dir, errno);
  Fd guard(fd);
  if (fsync_retry(fd) != 0) return errno_status("fsync directory", dir, errno);
  return Status::ok();
}

Result<std::vector<std::string>> RealFileSystem::list_dir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return errno_status("list", dir, errno);
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    const dirent* e = ::readdir(d);
    if (e == nullptr) {
      const int err = errno;
      ::closedir(d);
      if (err != 0) return errno_status("list", dir, err);
      break;
    }
    const std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    names.emplace_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

Status RealFileSystem::remove(const std::string& path) {
  if (::unlink(path.c_str()) != 0) return errno_status("remove", path, errno);
  return Status::ok();
}

Status RealFileSystem::make_dir(const std::string& path, mode_t mode) {
  if (::mkdir(path.c_str(), mode) == 0) return Status::ok();
  const int err = errno;
  if (err == EEXIST) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return Status::ok();
    return io_error("mkdir " + path + ": exists and is not a directory");
  }
  return errno_status("mkdir", path, err);
}

Result<uint64_t> RealFileSystem::file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return errno_status("stat", path, errno);
  return (uint64_t)st.st_size;
}

Result<bool> RealFileSystem::exists(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT || errno == ENOTDIR) return false;
  return errno_status("stat", path, errno);
}

// ---- FaultyFileSystem -------------------------------------------------------------------------

class FaultyFileSystem::File final : public WritableFile {
 public:
  File(FaultyFileSystem& fs, std::unique_ptr<WritableFile> base)
      : fs_(fs), base_(std::move(base)) {}
  const std::string& path() const override { return base_->path(); }
  Status append(std::string_view data) override { return fs_.on_append(path(), *base_, data); }
  Status sync() override { return fs_.on_sync(path(), *base_); }
  Status close() override { return base_->close(); }

 private:
  FaultyFileSystem& fs_;
  std::unique_ptr<WritableFile> base_;
};

void FaultyFileSystem::fail_write(int64_t nth, int error, bool and_after) {
  std::lock_guard<std::mutex> lock(mu_);
  write_fault_ = nth > 0 ? Fault{writes_ + nth, and_after, error} : Fault{};
}

void FaultyFileSystem::fail_sync(int64_t nth, int error, bool and_after) {
  std::lock_guard<std::mutex> lock(mu_);
  sync_fault_ = nth > 0 ? Fault{syncs_ + nth, and_after, error} : Fault{};
}

void FaultyFileSystem::disk_full_after(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  disk_left_ = bytes;
}

void FaultyFileSystem::clear_faults() {
  std::lock_guard<std::mutex> lock(mu_);
  write_fault_ = sync_fault_ = Fault{};
  disk_left_.reset();
}

int64_t FaultyFileSystem::writes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return writes_;
}

int64_t FaultyFileSystem::syncs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return syncs_;
}

uint64_t FaultyFileSystem::bytes_written() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_written_;
}

int FaultyFileSystem::next_fault(int64_t& counter, const Fault& f) {
  ++counter;
  if (f.at > 0 && (counter == f.at || (f.and_after && counter > f.at))) return f.error;
  return 0;
}

Status FaultyFileSystem::on_append(const std::string& path, WritableFile& base_file,
                                   std::string_view data) {
  std::lock_guard<std::mutex> lock(mu_);
  if (const int err = next_fault(writes_, write_fault_)) return errno_status("write", path, err);
  bool full = false;
  if (disk_left_ && data.size() > *disk_left_) {
    data = data.substr(0, (size_t)*disk_left_);
    full = true;
  }
  Status st = data.empty() ? Status::ok() : base_file.append(data);
  if (st.is_ok()) {
    bytes_written_ += data.size();
    if (disk_left_) *disk_left_ -= data.size();
    if (auto it = files_.find(path); it != files_.end()) it->second.written += data.size();
  }
  if (full && st.is_ok()) return errno_status("write", path, ENOSPC);
  return st;
}

Status FaultyFileSystem::on_sync(const std::string& path, WritableFile& base_file) {
  std::lock_guard<std::mutex> lock(mu_);
  if (const int err = next_fault(syncs_, sync_fault_)) return errno_status("fsync", path, err);
  PALU_RETURN_IF_ERROR(base_file.sync());
  if (auto it = files_.find(path); it != files_.end()) it->second.synced = it->second.written;
  return Status::ok();
}

Result<std::unique_ptr<WritableFile>> FaultyFileSystem::create_file(const std::string& path,
                                                                    CreateMode create_mode,
                                                                    mode_t mode) {
  std::lock_guard<std::mutex> lock(mu_);
  PALU_ASSIGN_OR_RETURN(bool existed, base_.exists(path));
  PALU_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f,
                        base_.create_file(path, create_mode, mode));
  files_[path] = FileState{};
  if (!existed) pending_.push_back(PendingOp{PendingOp::Kind::kCreate, path, {}, {}, {}});
  return std::unique_ptr<WritableFile>(new File(*this, std::move(f)));
}

Result<std::unique_ptr<ReadableFile>> FaultyFileSystem::open_file(const std::string& path) {
  return base_.open_file(path);
}

Result<std::string> FaultyFileSystem::read_file(const std::string& path, uint64_t max_bytes) {
  return base_.read_file(path, max_bytes);
}

Status FaultyFileSystem::rename(const std::string& from, const std::string& to) {
  std::lock_guard<std::mutex> lock(mu_);
  PendingOp op{PendingOp::Kind::kRename, to, from, {}, {}};
  PALU_ASSIGN_OR_RETURN(bool replaces, base_.exists(to));
  if (replaces) {
    // Test-sized files: keep the replaced contents to put back if the rename is undone.
    PALU_ASSIGN_OR_RETURN(std::string old, base_.read_file(to, uint64_t{1} << 32));
    op.replaced = std::move(old);
    if (auto it = files_.find(to); it != files_.end()) op.replaced_state = it->second;
  }
  PALU_RETURN_IF_ERROR(base_.rename(from, to));
  files_.erase(to);
  if (auto it = files_.find(from); it != files_.end()) {
    files_[to] = it->second;
    files_.erase(from);
  }
  pending_.push_back(std::move(op));
  return Status::ok();
}

Status FaultyFileSystem::sync_dir(const std::string& dir) {
  std::lock_guard<std::mutex> lock(mu_);
  if (const int err = next_fault(syncs_, sync_fault_))
    return errno_status("fsync directory", dir, err);
  PALU_RETURN_IF_ERROR(base_.sync_dir(dir));
  std::erase_if(pending_, [&](const PendingOp& op) { return parent_dir(op.path) == dir; });
  return Status::ok();
}

Result<std::vector<std::string>> FaultyFileSystem::list_dir(const std::string& dir) {
  return base_.list_dir(dir);
}

Status FaultyFileSystem::remove(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  PALU_RETURN_IF_ERROR(base_.remove(path));
  files_.erase(path);
  return Status::ok();
}

Status FaultyFileSystem::make_dir(const std::string& path, mode_t mode) {
  return base_.make_dir(path, mode);
}

Result<uint64_t> FaultyFileSystem::file_size(const std::string& path) {
  return base_.file_size(path);
}

Result<bool> FaultyFileSystem::exists(const std::string& path) {
  return base_.exists(path);
}

namespace {

// Replaces the contents of path with data (through the base file system: no faults).
Status overwrite(FileSystem& fs, const std::string& path, std::string_view data) {
  PALU_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f,
                        fs.create_file(path, CreateMode::kTruncate));
  PALU_RETURN_IF_ERROR(f->append(data));
  PALU_RETURN_IF_ERROR(f->sync());
  return f->close();
}

}  // namespace

Status FaultyFileSystem::drop_unsynced() {
  std::lock_guard<std::mutex> lock(mu_);
  const auto ctx = [](const Status& st) { return st.with_context("drop_unsynced"); };
  // 1. Cut files back to their synced size.
  for (auto& [path, st] : files_) {
    if (st.written == st.synced) continue;
    auto data = base_.read_file(path, uint64_t{1} << 32);
    if (data.status().code() == StatusCode::kNotFound) continue;
    if (!data.is_ok()) return ctx(data.status());
    std::string& d = data.value();
    if (d.size() > st.synced) d.resize((size_t)st.synced);
    PALU_RETURN_IF_ERROR(ctx(overwrite(base_, path, d)));
    st.written = st.synced;
  }
  // 2 and 3. Undo directory operations that no directory fsync made durable, newest first.
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    const PendingOp& op = *it;
    if (op.kind == PendingOp::Kind::kRename) {
      PALU_ASSIGN_OR_RETURN(bool present, base_.exists(op.path));
      if (present) {
        PALU_RETURN_IF_ERROR(ctx(base_.rename(op.path, op.from)));
        if (auto f = files_.find(op.path); f != files_.end()) {
          files_[op.from] = f->second;
          files_.erase(op.path);
        }
      }
      if (op.replaced) {
        PALU_RETURN_IF_ERROR(ctx(overwrite(base_, op.path, *op.replaced)));
        if (op.replaced_state) files_[op.path] = *op.replaced_state;
      }
    } else {
      const Status st = base_.remove(op.path);
      if (!st.is_ok() && st.code() != StatusCode::kNotFound) return ctx(st);
      files_.erase(op.path);
    }
  }
  pending_.clear();
  return Status::ok();
}

// ---- atomic replacement -----------------------------------------------------------------------

Status write_file_atomically(FileSystem& fs, const std::string& path, std::string_view data) {
  return write_file_atomically(fs, path, [&](WritableFile& f) { return f.append(data); });
}

Status write_file_atomically(FileSystem& fs, const std::string& path,
                             const std::function<Status(WritableFile&)>& write) {
  const std::string context = "saving " + path;
  std::random_device rd;
  const uint64_t r = ((uint64_t)rd() << 32) ^ (uint64_t)rd();
  const std::string tmp = path + std::string(kTempInfix) + hex16(r);
  auto created = fs.create_file(tmp, CreateMode::kExclusive, 0600);
  if (!created.is_ok()) return created.status().with_context(context);
  std::unique_ptr<WritableFile> f = std::move(created).value();
  bool open = true;
  // Any failure before the rename: drop the temp file, keep the old one. After a failed
  // fsync the page cache may hold data that never reaches the disk (PostgreSQL's lesson):
  // the temp file is never reused or re-synced.
  const auto abandon = [&](const Status& st) {
    if (open) (void)f->close();
    (void)fs.remove(tmp);
    return st.with_context(context);
  };
  Status st = write(*f);
  if (!st.is_ok()) return abandon(st);
  st = f->sync();
  if (!st.is_ok()) return abandon(st);
  open = false;
  st = f->close();
  if (!st.is_ok()) return abandon(st);
  st = fs.rename(tmp, path);
  if (!st.is_ok()) return abandon(st);
  st = fs.sync_dir(parent_dir(path));
  if (!st.is_ok()) {
    return st.with_context(context +
                           ": the new file is in place but its directory entry may "
                           "not survive a crash");
  }
  return Status::ok();
}

bool is_atomic_temp_name(std::string_view name) {
  if (name.size() < kTempInfix.size() + 16 + 1) return false;
  const std::string_view tail = name.substr(name.size() - 16);
  const std::string_view infix =
      name.substr(name.size() - 16 - kTempInfix.size(), kTempInfix.size());
  return infix == kTempInfix && std::all_of(tail.begin(), tail.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

Result<int> remove_stale_temps(FileSystem& fs, const std::string& dir) {
  PALU_ASSIGN_OR_RETURN(std::vector<std::string> names, fs.list_dir(dir));
  int removed = 0;
  for (const std::string& name : names) {
    if (!is_atomic_temp_name(name)) continue;
    const Status st = fs.remove(join(dir, name));
    if (!st.is_ok() && st.code() != StatusCode::kNotFound) return st;
    removed += st.is_ok();
  }
  return removed;
}

}  // namespace palu::daemon
