// The filesystem seam: RealFileSystem against a temporary directory (errors name the path and
// the OS reason, "disk full" from /dev/full), FaultyFileSystem's injected failures and its
// power-cut simulation (drop_unsynced), and write_file_atomically under every injected
// failure: the old file stays whole, no temp file is left.
#include "daemon/file_system.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "tests/common/status_assert.h"

namespace palu::daemon {
namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A fresh directory under the test temp dir, removed (with its files) at the end.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "palu_fs_XXXXXX";
    char* d = ::mkdtemp(tmpl.data());
    EXPECT_NE(d, nullptr) << std::strerror(errno);
    path_ = tmpl;
  }
  ~TempDir() {
    RealFileSystem fs;
    auto names = fs.list_dir(path_);
    if (names.is_ok()) {
      for (const auto& n : *names) {
        const std::string p = path_ + "/" + n;
        if (::unlink(p.c_str()) != 0) ::rmdir(p.c_str());
      }
    }
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

Status write_plain(FileSystem& fs, const std::string& path, std::string_view data,
                   bool sync = true) {
  auto f = fs.create_file(path, CreateMode::kTruncate);
  if (!f.is_ok()) return f.status();
  PALU_RETURN_IF_ERROR((*f)->append(data));
  if (sync) PALU_RETURN_IF_ERROR((*f)->sync());
  return (*f)->close();
}

std::string read_all(FileSystem& fs, const std::string& path) {
  auto r = fs.read_file(path, 1 << 20);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return r.is_ok() ? *r : std::string();
}

int temp_files(FileSystem& fs, const std::string& dir) {
  int n = 0;
  const auto names = fs.list_dir(dir);
  EXPECT_TRUE(names.is_ok()) << names.status().to_string();
  if (!names.is_ok()) return -1;
  for (const auto& name : *names) n += is_atomic_temp_name(name);
  return n;
}

// ---- RealFileSystem ---------------------------------------------------------------------------

TEST(RealFileSystemTest, CreateWriteReadListRemove) {
  TempDir dir;
  RealFileSystem fs;
  const std::string a = dir.file("a");
  {
    auto f = fs.create_file(a, CreateMode::kExclusive);
    ASSERT_TRUE(f.is_ok()) << f.status().to_string();
    EXPECT_EQ((*f)->path(), a);
    ASSERT_OK((*f)->append("hello "));
    ASSERT_OK((*f)->append(""));
    ASSERT_OK((*f)->append("world"));
    ASSERT_OK((*f)->sync());
    ASSERT_OK((*f)->close());
    const Status again = (*f)->close();
    EXPECT_EQ(again.code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ((*f)->append("x").code(), StatusCode::kFailedPrecondition);
  }
  struct stat st {};
  ASSERT_EQ(::stat(a.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0077, 0u) << "new files are private (0600)";
  EXPECT_EQ(read_all(fs, a), "hello world");
  EXPECT_EQ(*fs.file_size(a), 11u);
  EXPECT_TRUE(*fs.exists(a));
  EXPECT_FALSE(*fs.exists(dir.file("nope")));
  EXPECT_FALSE(*fs.exists(dir.file("nope/deeper")));

  // Exclusive create of an existing file fails naming it; truncate replaces it.
  auto dup = fs.create_file(a, CreateMode::kExclusive);
  ASSERT_FALSE(dup.is_ok());
  EXPECT_EQ(dup.status().code(), StatusCode::kIoError);
  EXPECT_TRUE(contains(dup.status().message(), a)) << dup.status().to_string();
  EXPECT_TRUE(contains(dup.status().message(), std::strerror(EEXIST)));
  ASSERT_OK(write_plain(fs, a, "new"));
  EXPECT_EQ(read_all(fs, a), "new");

  // Positioned reads, short at the end.
  {
    auto r = fs.open_file(a);
    ASSERT_TRUE(r.is_ok());
    EXPECT_EQ((*r)->size(), 3u);
    uint8_t buf[8];
    EXPECT_EQ(*(*r)->read_at(1, {buf, 8}), 2u);
    EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), 2), "ew");
    EXPECT_EQ(*(*r)->read_at(3, {buf, 8}), 0u);
  }

  ASSERT_OK(write_plain(fs, dir.file("c"), ""));
  ASSERT_OK(write_plain(fs, dir.file("b"), "b"));
  auto names = fs.list_dir(dir.path());
  ASSERT_TRUE(names.is_ok());
  EXPECT_EQ(*names, (std::vector<std::string>{"a", "b", "c"}));

  ASSERT_OK(fs.rename(dir.file("b"), dir.file("a")));
  EXPECT_EQ(read_all(fs, a), "b");
  ASSERT_OK(fs.sync_dir(dir.path()));
  ASSERT_OK(fs.remove(a));
  const Status gone = fs.remove(a);
  EXPECT_EQ(gone.code(), StatusCode::kNotFound);
  EXPECT_TRUE(contains(gone.message(), "remove " + a + ": ")) << gone.to_string();
  EXPECT_EQ(*fs.list_dir(dir.path()), (std::vector<std::string>{"c"}));
}

TEST(RealFileSystemTest, ErrorsNameThePathAndTheReason) {
  TempDir dir;
  RealFileSystem fs;
  const std::string missing = dir.file("missing");
  auto r = fs.read_file(missing, 100);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(r.status().message(), "open " + missing + ": " + std::strerror(ENOENT));
  EXPECT_EQ(fs.file_size(missing).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(fs.open_file(missing).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(fs.list_dir(missing).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(fs.sync_dir(missing).is_ok());
  EXPECT_EQ(fs.rename(missing, dir.file("x")).code(), StatusCode::kNotFound);
  EXPECT_FALSE(fs.create_file(dir.file("no/such/dir"), CreateMode::kExclusive).is_ok());
  // Reading a directory as a file.
  EXPECT_FALSE(fs.read_file(dir.path(), 100).is_ok());

  // A file over the limit is refused, naming its size and the limit.
  ASSERT_OK(write_plain(fs, dir.file("big"), std::string(101, 'x')));
  auto big = fs.read_file(dir.file("big"), 100);
  EXPECT_EQ(big.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(contains(big.status().message(), dir.file("big"))) << big.status().to_string();
  EXPECT_TRUE(contains(big.status().message(), "101 bytes, more than the limit of 100"));
  EXPECT_EQ(read_all(fs, dir.file("big")).size(), 101u);
}

TEST(RealFileSystemTest, ErrnoStatus) {
  const Status full = errno_status("write", "/x/y", ENOSPC);
  EXPECT_EQ(full.code(), StatusCode::kIoError);
  EXPECT_EQ(full.message(), std::string("write /x/y: disk full (") + std::strerror(ENOSPC) + ")");
  EXPECT_EQ(errno_status("open", "/x", ENOENT).code(), StatusCode::kNotFound);
  const Status eio = errno_status("fsync", "/x", EIO);
  EXPECT_EQ(eio.code(), StatusCode::kIoError);
  EXPECT_EQ(eio.message(), std::string("fsync /x: ") + std::strerror(EIO));
  EXPECT_TRUE(contains(errno_status("write", "/x", EDQUOT).message(), "disk quota exceeded"));
}

TEST(RealFileSystemTest, DiskFullFromDevFull) {
  RealFileSystem fs;
  if (!*fs.exists("/dev/full")) GTEST_SKIP() << "no /dev/full on this machine";
  auto f = fs.create_file("/dev/full", CreateMode::kTruncate);
  if (!f.is_ok()) GTEST_SKIP() << "cannot open /dev/full: " << f.status().to_string();
  const Status st = (*f)->append("data");
  EXPECT_EQ(st.code(), StatusCode::kIoError);
  EXPECT_TRUE(contains(st.message(), "write /dev/full: disk full")) << st.to_string();
}

TEST(RealFileSystemTest, MakeDir) {
  TempDir dir;
  RealFileSystem fs;
  const std::string d = dir.file("sub");
  ASSERT_OK(fs.make_dir(d, 0700));
  struct stat st {};
  ASSERT_EQ(::stat(d.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_OK(fs.make_dir(d, 0700));  // existing directory: OK
  ASSERT_OK(write_plain(fs, dir.file("f"), "x"));
  const Status not_dir = fs.make_dir(dir.file("f"), 0700);
  EXPECT_EQ(not_dir.code(), StatusCode::kIoError);
  EXPECT_TRUE(contains(not_dir.message(), "not a directory")) << not_dir.to_string();
  EXPECT_EQ(fs.make_dir(dir.file("a/b"), 0700).code(), StatusCode::kNotFound);
  ::rmdir(d.c_str());
}

TEST(FileSystemTest, ParentDir) {
  EXPECT_EQ(parent_dir("a"), ".");
  EXPECT_EQ(parent_dir("/a"), "/");
  EXPECT_EQ(parent_dir("/a/b"), "/a");
  EXPECT_EQ(parent_dir("a/b/c"), "a/b");
}

// ---- write_file_atomically ----------------------------------------------------------------------

TEST(AtomicWriteTest, CreatesAndReplacesLeavingNoTemp) {
  TempDir dir;
  RealFileSystem fs;
  const std::string p = dir.file("state");
  ASSERT_OK(write_file_atomically(fs, p, "one"));
  EXPECT_EQ(read_all(fs, p), "one");
  ASSERT_OK(write_file_atomically(fs, p, "two, longer"));
  EXPECT_EQ(read_all(fs, p), "two, longer");
  ASSERT_OK(write_file_atomically(fs, p, ""));
  EXPECT_EQ(read_all(fs, p), "");
  EXPECT_EQ(*fs.list_dir(dir.path()), std::vector<std::string>{"state"});
  // A failing writer: the old file stays, the temp goes, the error says what was saved.
  const Status st = write_file_atomically(fs, p, [](WritableFile& f) -> Status {
    PALU_RETURN_IF_ERROR(f.append("partial"));
    return data_loss("the producer failed");
  });
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_EQ(st.message(), "saving " + p + ": the producer failed");
  EXPECT_EQ(read_all(fs, p), "");
  EXPECT_EQ(*fs.list_dir(dir.path()), std::vector<std::string>{"state"});
  // A missing directory.
  EXPECT_EQ(write_file_atomically(fs, dir.file("no/state"), "x").code(), StatusCode::kNotFound);
}

// Every write and every fsync of a save, failed in turn: the save reports it, the old contents
// stay (or, when only the final directory fsync failed, the new contents are in place, whole),
// and no temp file is left.
TEST(AtomicWriteTest, EveryInjectedFailureKeepsAWholeFile) {
  TempDir dir;
  RealFileSystem real;
  FaultyFileSystem fs(real);
  const std::string p = dir.file("state");
  const std::string old_data = "old contents", new_data(5000, 'n');
  ASSERT_OK(write_file_atomically(fs, p, old_data));
  const int64_t w0 = fs.writes(), s0 = fs.syncs();
  ASSERT_OK(write_file_atomically(fs, p, new_data));
  const int64_t save_writes = fs.writes() - w0, save_syncs = fs.syncs() - s0;
  EXPECT_EQ(save_writes, 1);
  EXPECT_EQ(save_syncs, 2);  // the file, then its directory

  for (int kind = 0; kind < 2; ++kind) {
    const int64_t count = kind == 0 ? save_writes : save_syncs;
    for (int64_t n = 1; n <= count; ++n) {
      SCOPED_TRACE((kind == 0 ? "write " : "fsync ") + std::to_string(n));
      ASSERT_OK(write_file_atomically(fs, p, old_data));
      if (kind == 0)
        fs.fail_write(n, EIO);
      else
        fs.fail_sync(n, EIO);
      const Status st = write_file_atomically(fs, p, new_data);
      fs.clear_faults();
      EXPECT_EQ(st.code(), StatusCode::kIoError) << st.to_string();
      EXPECT_TRUE(contains(st.message(), "saving " + p)) << st.to_string();
      EXPECT_TRUE(contains(st.message(), std::strerror(EIO))) << st.to_string();
      const bool dir_sync = kind == 1 && n == count;
      EXPECT_EQ(read_all(fs, p), dir_sync ? new_data : old_data);
      EXPECT_EQ(temp_files(fs, dir.path()), 0);
      // A power cut now: the state is the old one whatever failed (the new file's name was
      // never made durable).
      ASSERT_OK(fs.drop_unsynced());
      EXPECT_EQ(read_all(fs, p), old_data);
      EXPECT_EQ(temp_files(fs, dir.path()), 0);
    }
  }
}

TEST(AtomicWriteTest, DiskFullKeepsTheOldFile) {
  TempDir dir;
  RealFileSystem real;
  FaultyFileSystem fs(real);
  const std::string p = dir.file("state");
  ASSERT_OK(write_file_atomically(fs, p, "old"));
  fs.disk_full_after(100);
  const Status st = write_file_atomically(fs, p, std::string(1000, 'x'));
  EXPECT_EQ(st.code(), StatusCode::kIoError);
  EXPECT_TRUE(contains(st.message(), "disk full")) << st.to_string();
  EXPECT_EQ(read_all(fs, p), "old");
  EXPECT_EQ(temp_files(fs, dir.path()), 0);
  // Still full: small writes fail too, until the space comes back.
  EXPECT_FALSE(write_file_atomically(fs, p, "x").is_ok());
  fs.clear_faults();
  ASSERT_OK(write_file_atomically(fs, p, "new"));
  EXPECT_EQ(read_all(fs, p), "new");
}

// ---- FaultyFileSystem ---------------------------------------------------------------------------

TEST(FaultyFileSystemTest, FailsTheNthOperationAndAfter) {
  TempDir dir;
  RealFileSystem real;
  FaultyFileSystem fs(real);
  auto f = fs.create_file(dir.file("f"), CreateMode::kExclusive);
  ASSERT_TRUE(f.is_ok());
  fs.fail_write(2, ENOSPC);
  ASSERT_OK((*f)->append("a"));
  const Status second = (*f)->append("b");
  EXPECT_EQ(second.code(), StatusCode::kIoError);
  EXPECT_EQ(second.message(),
            "write " + dir.file("f") + ": disk full (" + std::strerror(ENOSPC) + ")");
  ASSERT_OK((*f)->append("c"));  // only the 2nd
  fs.fail_write(2, EIO, /*and_after=*/true);
  ASSERT_OK((*f)->append("d"));
  EXPECT_FALSE((*f)->append("e").is_ok());
  EXPECT_FALSE((*f)->append("f").is_ok());
  fs.fail_write(0);
  ASSERT_OK((*f)->append("g"));
  fs.fail_sync(1, EROFS);
  const Status sync = (*f)->sync();
  EXPECT_EQ(sync.code(), StatusCode::kIoError);
  EXPECT_TRUE(contains(sync.message(), std::strerror(EROFS))) << sync.to_string();
  ASSERT_OK(fs.sync_dir(dir.path()));  // the 2nd fsync: no fault left
  ASSERT_OK((*f)->sync());
  ASSERT_OK((*f)->close());
  EXPECT_EQ(read_all(fs, dir.file("f")), "acdg");
  EXPECT_EQ(fs.writes(), 7);
  EXPECT_EQ(fs.syncs(), 3);
  EXPECT_EQ(fs.bytes_written(), 4u);

  // Disk full after B bytes: the write that crosses writes what fits, then reports.
  auto g = fs.create_file(dir.file("g"), CreateMode::kExclusive);
  ASSERT_TRUE(g.is_ok());
  fs.disk_full_after(5);
  ASSERT_OK((*g)->append("abc"));
  const Status full = (*g)->append("defg");
  EXPECT_TRUE(contains(full.message(), "disk full")) << full.to_string();
  EXPECT_FALSE((*g)->append("h").is_ok());
  ASSERT_OK((*g)->close());
  EXPECT_EQ(read_all(fs, dir.file("g")), "abcde");
}

TEST(FaultyFileSystemTest, DropUnsyncedCutsFilesBackToTheirLastSync) {
  TempDir dir;
  RealFileSystem real;
  FaultyFileSystem fs(real);
  // Synced and its directory synced: survives, minus what was written after the sync.
  {
    auto f = fs.create_file(dir.file("durable"), CreateMode::kExclusive);
    ASSERT_TRUE(f.is_ok());
    ASSERT_OK((*f)->append("abc"));
    ASSERT_OK((*f)->sync());
    ASSERT_OK((*f)->append("def"));
    ASSERT_OK((*f)->close());
  }
  ASSERT_OK(fs.sync_dir(dir.path()));
  // Written, never synced, directory synced: survives empty.
  {
    auto f = fs.create_file(dir.file("empty"), CreateMode::kExclusive);
    ASSERT_TRUE(f.is_ok());
    ASSERT_OK((*f)->append("lost"));
    ASSERT_OK((*f)->close());
  }
  ASSERT_OK(fs.sync_dir(dir.path()));
  // Synced but its directory never synced: the file's name is lost.
  {
    auto f = fs.create_file(dir.file("nameless"), CreateMode::kExclusive);
    ASSERT_TRUE(f.is_ok());
    ASSERT_OK((*f)->append("x"));
    ASSERT_OK((*f)->sync());
    ASSERT_OK((*f)->close());
  }
  // A file written before the FaultyFileSystem existed is durable.
  ASSERT_OK(write_plain(real, dir.file("before"), "before"));

  ASSERT_OK(fs.drop_unsynced());
  EXPECT_EQ(read_all(fs, dir.file("durable")), "abc");
  EXPECT_EQ(read_all(fs, dir.file("empty")), "");
  EXPECT_FALSE(*fs.exists(dir.file("nameless")));
  EXPECT_EQ(read_all(fs, dir.file("before")), "before");
  // Idempotent.
  ASSERT_OK(fs.drop_unsynced());
  EXPECT_EQ(read_all(fs, dir.file("durable")), "abc");
}

TEST(FaultyFileSystemTest, DropUnsyncedUndoesRenamesOfUnsyncedDirectories) {
  TempDir dir;
  RealFileSystem real;
  ASSERT_OK(write_plain(real, dir.file("target"), "old"));
  FaultyFileSystem fs(real);
  // Rename without a directory fsync: undone, the replaced file's contents come back.
  ASSERT_OK(write_plain(fs, dir.file("new"), "new"));  // synced file
  ASSERT_OK(fs.rename(dir.file("new"), dir.file("target")));
  EXPECT_EQ(read_all(fs, dir.file("target")), "new");
  ASSERT_OK(fs.drop_unsynced());
  EXPECT_EQ(read_all(fs, dir.file("target")), "old");
  EXPECT_FALSE(*fs.exists(dir.file("new")));  // its creation was not durable either

  // With the directory synced after the rename: it stays.
  ASSERT_OK(write_plain(fs, dir.file("new"), "new"));
  ASSERT_OK(fs.rename(dir.file("new"), dir.file("target")));
  ASSERT_OK(fs.sync_dir(dir.path()));
  ASSERT_OK(fs.drop_unsynced());
  EXPECT_EQ(read_all(fs, dir.file("target")), "new");
  EXPECT_EQ(*fs.list_dir(dir.path()), std::vector<std::string>{"target"});

  // A whole atomic write is durable; one whose data was never synced is not there.
  ASSERT_OK(write_file_atomically(fs, dir.file("target"), "atomic"));
  ASSERT_OK(fs.drop_unsynced());
  EXPECT_EQ(read_all(fs, dir.file("target")), "atomic");
}

TEST(FileSystemTest, StaleTemps) {
  EXPECT_TRUE(is_atomic_temp_name("s.session.tmp.0123456789abcdef"));
  EXPECT_FALSE(is_atomic_temp_name(".tmp.0123456789abcdef"));
  EXPECT_FALSE(is_atomic_temp_name("s.tmp.0123456789abcdeg"));
  EXPECT_FALSE(is_atomic_temp_name("s.tmp.0123456789ABCDEF"));
  EXPECT_FALSE(is_atomic_temp_name("s.session"));
  TempDir dir;
  RealFileSystem fs;
  ASSERT_OK(write_plain(fs, dir.file("keep"), "k"));
  ASSERT_OK(write_plain(fs, dir.file("keep.tmp.0123456789abcdef"), "t"));
  ASSERT_OK(write_plain(fs, dir.file("x.tmp.fedcba9876543210"), "t"));
  auto n = remove_stale_temps(fs, dir.path());
  ASSERT_TRUE(n.is_ok());
  EXPECT_EQ(*n, 2);
  EXPECT_EQ(*fs.list_dir(dir.path()), std::vector<std::string>{"keep"});
}

}  // namespace
}  // namespace palu::daemon
