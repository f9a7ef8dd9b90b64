// daemon/server: a real Unix socket in a temp dir, a fake RequestHandler, binary and JSON-lines
// clients, and the bad-input cases of issue 9 (oversized and truncated frames, slow-loris,
// malformed protobuf / JSON, clients that stop reading, floods of clients, stop()).
//
// Every client read in this file has a timeout; no test waits more than a few seconds even
// when the server misbehaves.
#include "daemon/server.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "sdk/proto/framing.h"

namespace palu::daemon {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr uint32_t kEndlessStream =
    1000000;  // Generate.max_tokens that makes the fake stream forever
constexpr int kReadTimeoutMs = 3000;

int ms_since(Clock::time_point t) {
  return static_cast<int>(std::chrono::duration_cast<milliseconds>(Clock::now() - t).count());
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// ---------------------------------------------------------------------------------------------
// ListModels → an empty list; Generate → 3 chunks (or an endless stream for kEndlessStream, until
// send() fails); Stats → throws; Tokenize → no answer (kept in flight); others → UNIMPLEMENTED.
class FakeHandler : public RequestHandler {
 public:
  ~FakeHandler() override { stop_streams(); }

  void handle(const api::Request& request, const PeerInfo& peer,
              std::shared_ptr<ResponseSink> sink) override {
    {
      std::lock_guard lock(mu_);
      handled_++;
      last_peer_ = peer;
    }
    switch (request.body_case()) {
      case api::Request::kListModels: {
        api::Response r = make_response(request.id(), api::OK, "");
        r.mutable_models();
        sink->send(r);
        break;
      }
      case api::Request::kGenerate:
        if (request.generate().max_tokens() == kEndlessStream) {
          std::lock_guard lock(mu_);
          streams_.emplace_back([this, id = request.id(), sink] { stream_forever(id, sink); });
        } else {
          for (int i = 0; i < 3; ++i) {
            api::Response r = make_response(request.id(), api::OK, "");
            r.set_final(i == 2);
            r.mutable_chunk()->add_token_ids(100 + i);
            r.mutable_chunk()->set_text("tok" + std::to_string(i) + " ");
            if (i == 2) r.mutable_chunk()->set_stop_reason("max_tokens");
            sink->send(r);
          }
        }
        break;
      case api::Request::kStats:
        throw std::runtime_error("boom");
      case api::Request::kTokenize: {
        std::lock_guard lock(mu_);
        held_.push_back(sink);
        break;
      }
      default:
        sink->send(make_response(request.id(), api::UNIMPLEMENTED, "not in the fake"));
    }
  }

  void connection_closed(const PeerInfo& peer) override {
    std::lock_guard lock(mu_);
    closed_ids_.push_back(peer.connection_id);
    cv_.notify_all();
  }

  // Waits until at least n connections were reported closed.
  bool wait_closed(size_t n, int timeout_ms = kReadTimeoutMs) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, milliseconds(timeout_ms), [&] { return closed_ids_.size() >= n; });
  }
  bool wait_stream_refused(int timeout_ms = kReadTimeoutMs) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, milliseconds(timeout_ms), [&] { return stream_refused_; });
  }
  size_t closed_count() {
    std::lock_guard lock(mu_);
    return closed_ids_.size();
  }
  int handled() {
    std::lock_guard lock(mu_);
    return handled_;
  }
  PeerInfo last_peer() {
    std::lock_guard lock(mu_);
    return last_peer_;
  }
  std::vector<std::shared_ptr<ResponseSink>> held() {
    std::lock_guard lock(mu_);
    return held_;
  }
  int stream_sent() const { return stream_sent_.load(); }

  void stop_streams() {
    stop_ = true;
    std::vector<std::thread> streams;
    {
      std::lock_guard lock(mu_);
      streams.swap(streams_);
    }
    for (auto& t : streams) t.join();
  }

 private:
  void stream_forever(uint64_t id, std::shared_ptr<ResponseSink> sink) {
    const auto start = Clock::now();
    while (!stop_ && ms_since(start) < 10000) {
      api::Response r = make_response(id, api::OK, "");
      r.set_final(false);
      r.mutable_chunk()->set_text(std::string(1024, 'x'));
      if (!sink->send(r)) {
        std::lock_guard lock(mu_);
        stream_refused_ = true;
        stream_refused_sink_closed_ = sink->closed();
        cv_.notify_all();
        return;
      }
      stream_sent_++;
    }
  }

 public:
  bool stream_refused_sink_closed() {
    std::lock_guard lock(mu_);
    return stream_refused_sink_closed_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int handled_ = 0;
  PeerInfo last_peer_;
  std::vector<uint64_t> closed_ids_;
  std::vector<std::shared_ptr<ResponseSink>> held_;
  std::vector<std::thread> streams_;
  std::atomic<bool> stop_{false};
  std::atomic<int> stream_sent_{0};
  bool stream_refused_ = false;
  bool stream_refused_sink_closed_ = false;
};

// ---------------------------------------------------------------------------------------------
// A blocking client with a timeout on every read.
class Client {
 public:
  explicit Client(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    connected_ = ::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }
  int fd() const { return fd_; }

  bool send_raw(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  bool send_frame(const api::Request& r, uint32_t version = palu::api::kProtocolVersion) {
    return send_raw(palu::api::encode_frame(r, version));
  }
  bool send_json(const std::string& line) { return send_raw(line + "\n"); }
  void shutdown_write() { ::shutdown(fd_, SHUT_WR); }

  std::optional<api::Response> read_frame(int timeout_ms = kReadTimeoutMs) {
    const auto start = Clock::now();
    for (;;) {
      if (auto f = frames_.next()) {
        api::Response r;
        if (!r.ParseFromString(f->payload)) return std::nullopt;
        return r;
      }
      std::string bytes;
      if (!read_some(timeout_ms - ms_since(start), &bytes)) return std::nullopt;
      if (!frames_.feed(bytes).is_ok()) return std::nullopt;
    }
  }
  std::optional<api::Response> read_json(int timeout_ms = kReadTimeoutMs,
                                         std::string* raw = nullptr) {
    const auto start = Clock::now();
    for (;;) {
      if (auto line = lines_.next()) {
        if (raw) *raw = *line;
        api::Response r;
        if (!palu::api::parse_json_response(*line, &r).is_ok()) return std::nullopt;
        return r;
      }
      std::string bytes;
      if (!read_some(timeout_ms - ms_since(start), &bytes)) return std::nullopt;
      if (!lines_.feed(bytes).is_ok()) return std::nullopt;
    }
  }
  // True when the server closed the connection (EOF or reset) within the timeout; data still
  // arriving is discarded.
  bool wait_closed(int timeout_ms = kReadTimeoutMs) {
    const auto start = Clock::now();
    for (;;) {
      if (eof_) return true;
      std::string bytes;
      if (!read_some(timeout_ms - ms_since(start), &bytes)) return eof_;
    }
  }

  void handshake_binary(uint64_t id = 1) {
    api::Request r;
    r.set_id(id);
    r.mutable_handshake()->set_protocol_version(palu::api::kProtocolVersion);
    r.mutable_handshake()->set_client_name("server_test");
    ASSERT_TRUE(send_frame(r));
    auto reply = read_frame();
    ASSERT_TRUE(reply.has_value());
    ASSERT_EQ(reply->code(), api::OK) << reply->message();
    ASSERT_TRUE(reply->has_handshake());
  }
  void handshake_json(uint64_t id = 1) {
    ASSERT_TRUE(
        send_json(R"({"id":)" + std::to_string(id) + R"(,"handshake":{"protocol_version":1}})"));
    auto reply = read_json();
    ASSERT_TRUE(reply.has_value());
    ASSERT_EQ(reply->code(), api::OK) << reply->message();
    ASSERT_TRUE(reply->has_handshake());
  }

 private:
  // One recv with a poll timeout. False on timeout, EOF or error (eof_ set for the latter two).
  bool read_some(int timeout_ms, std::string* out) {
    if (eof_ || timeout_ms <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return false;
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) {
      eof_ = true;  // 0: EOF; < 0: ECONNRESET (the server closed with our bytes unread)
      return false;
    }
    out->assign(buf, static_cast<size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  bool eof_ = false;
  palu::api::FrameDecoder frames_{64u << 20};
  palu::api::LineDecoder lines_{64u << 20};
};

api::Request list_models(uint64_t id) {
  api::Request r;
  r.set_id(id);
  r.mutable_list_models();
  return r;
}
api::Request generate(uint64_t id, uint32_t max_tokens = 3) {
  api::Request r;
  r.set_id(id);
  r.mutable_generate()->mutable_session()->set_name("s1");
  r.mutable_generate()->set_max_tokens(max_tokens);
  return r;
}

// ---------------------------------------------------------------------------------------------
class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/palu-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    socket_path_ = dir_ + "/palud.sock";
  }
  void TearDown() override {
    handler_.stop_streams();  // no sink is used once the server goes
    server_.reset();
    std::error_code ec;
    std::filesystem::permissions(dir_, std::filesystem::perms::owner_all, ec);
    std::filesystem::remove_all(dir_, ec);
  }

  ServerOptions options() const {
    ServerOptions o;
    o.socket_path = socket_path_;
    o.daemon_version = "test-1.2.3";
    o.frame_timeout_ms = 2000;
    return o;
  }
  void start(const ServerOptions& o) {
    auto created = Server::create(o, &handler_);
    ASSERT_TRUE(created.is_ok()) << created.status().message();
    server_ = std::move(created).value();
    server_->start_in_thread();
  }
  void start() { start(options()); }

  std::string dir_;
  std::string socket_path_;
  FakeHandler handler_;
  std::unique_ptr<Server> server_;
};

// ---- handshake ------------------------------------------------------------------------------
TEST_F(ServerTest, HandshakeReportsVersionsAndFrameLimit) {
  ServerOptions o = options();
  o.max_frame_bytes = 12345;
  start(o);
  Client c(socket_path_);
  ASSERT_TRUE(c.connected());
  api::Request r;
  r.set_id(77);
  r.mutable_handshake()->set_protocol_version(palu::api::kProtocolVersion);
  ASSERT_TRUE(c.send_frame(r));
  auto reply = c.read_frame();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->id(), 77u);
  EXPECT_EQ(reply->code(), api::OK);
  EXPECT_TRUE(reply->final());
  EXPECT_EQ(reply->handshake().protocol_version(), palu::api::kProtocolVersion);
  EXPECT_EQ(reply->handshake().daemon_version(), "test-1.2.3");
  EXPECT_EQ(reply->handshake().max_frame_bytes(), 12345u);
  EXPECT_EQ(handler_.handled(), 0);  // the server answers the handshake itself
}

TEST_F(ServerTest, HandshakeVersionMismatchNamesBothVersionsAndCloses) {
  start();
  {
    Client c(socket_path_);
    api::Request r;
    r.set_id(5);
    r.mutable_handshake()->set_protocol_version(2);
    ASSERT_TRUE(c.send_frame(r, 2));  // a version-2 client: its frame header says 2 too
    auto reply = c.read_frame();
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(reply->code(), api::VERSION_MISMATCH);
    EXPECT_EQ(reply->id(), 5u);
    EXPECT_TRUE(contains(reply->message(), "client speaks version 2")) << reply->message();
    EXPECT_TRUE(contains(reply->message(), "speaks version 1")) << reply->message();
    EXPECT_EQ(reply->handshake().protocol_version(), 1u);
    EXPECT_TRUE(c.wait_closed());
  }
  {
    Client c(socket_path_);  // JSON-lines client asking for version 0
    ASSERT_TRUE(c.send_json(R"({"id":6,"handshake":{"protocol_version":0}})"));
    auto reply = c.read_json();
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(reply->code(), api::VERSION_MISMATCH);
    EXPECT_TRUE(contains(reply->message(), "client speaks version 0")) << reply->message();
    EXPECT_TRUE(c.wait_closed());
  }
  EXPECT_EQ(handler_.handled(), 0);
  EXPECT_GE(server_->stats().protocol_errors, 2u);
}

TEST_F(ServerTest, RequestBeforeHandshakeIsRefusedAndClosed) {
  start();
  Client c(socket_path_);
  ASSERT_TRUE(c.send_frame(list_models(9)));
  auto reply = c.read_frame();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code(), api::FAILED_PRECONDITION);
  EXPECT_EQ(reply->id(), 9u);
  EXPECT_TRUE(contains(reply->message(), "first request must be a handshake")) << reply->message();
  EXPECT_TRUE(contains(reply->message(), "list_models")) << reply->message();
  EXPECT_TRUE(c.wait_closed());
  EXPECT_EQ(handler_.handled(), 0);
}

TEST_F(ServerTest, NoHandshakeWithinTheTimeoutCloses) {
  ServerOptions o = options();
  o.frame_timeout_ms = 150;
  start(o);
  Client c(socket_path_);
  const auto t0 = Clock::now();
  EXPECT_TRUE(c.wait_closed());
  EXPECT_GE(ms_since(t0), 100);
  EXPECT_TRUE(handler_.wait_closed(1));
}

// ---- binary and JSON-lines clients ------------------------------------------------------------
TEST_F(ServerTest, BinaryClientListModelsAndStreamedGenerate) {
  start();
  Client c(socket_path_);
  c.handshake_binary();
  ASSERT_TRUE(c.send_frame(list_models(2)));
  auto models = c.read_frame();
  ASSERT_TRUE(models.has_value());
  EXPECT_EQ(models->id(), 2u);
  EXPECT_EQ(models->code(), api::OK);
  EXPECT_TRUE(models->has_models());
  EXPECT_EQ(models->models().models_size(), 0);

  ASSERT_TRUE(c.send_frame(generate(3)));
  for (int i = 0; i < 3; ++i) {
    auto chunk = c.read_frame();
    ASSERT_TRUE(chunk.has_value()) << i;
    EXPECT_EQ(chunk->id(), 3u);
    EXPECT_EQ(chunk->final(), i == 2);
    ASSERT_EQ(chunk->chunk().token_ids_size(), 1);
    EXPECT_EQ(chunk->chunk().token_ids(0), 100 + i);
  }
  // The connection is still good.
  ASSERT_TRUE(c.send_frame(list_models(4)));
  auto again = c.read_frame();
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->id(), 4u);

  const PeerInfo peer = handler_.last_peer();
  EXPECT_EQ(peer.uid, ::getuid());
  EXPECT_EQ(peer.gid, ::getgid());
  EXPECT_EQ(peer.pid, ::getpid());
  EXPECT_GT(peer.connection_id, 0u);
  // frames_out counts after the write completes, which may be just after the client read it.
  for (int i = 0; i < 200 && server_->stats().frames_out < 6; ++i)
    std::this_thread::sleep_for(milliseconds(5));
  const ServerStats s = server_->stats();
  EXPECT_EQ(s.frames_in, 4u);
  EXPECT_EQ(s.frames_out, 6u);
  EXPECT_EQ(s.connections_open, 1u);
}

TEST_F(ServerTest, JsonLinesClientSession) {
  start();
  Client c(socket_path_);
  ASSERT_TRUE(c.send_json(R"({"id":1,"handshake":{"protocol_version":1,"client_name":"socat"}})"));
  std::string raw;
  auto hs = c.read_json(kReadTimeoutMs, &raw);
  ASSERT_TRUE(hs.has_value()) << raw;
  EXPECT_TRUE(contains(raw, R"("code":"OK")")) << raw;
  EXPECT_TRUE(contains(raw, R"("final":true)")) << raw;
  EXPECT_TRUE(contains(raw, R"("daemon_version":"test-1.2.3")")) << raw;

  ASSERT_TRUE(c.send_json(R"({"id":2,"list_models":{}})"));
  auto models = c.read_json(kReadTimeoutMs, &raw);
  ASSERT_TRUE(models.has_value());
  EXPECT_EQ(raw, R"({"id":"2","code":"OK","message":"","final":true,"models":{"models":[]}})");

  ASSERT_TRUE(c.send_json(R"({"id":"3","generate":{"session":{"name":"s1"},"max_tokens":3}})"));
  for (int i = 0; i < 3; ++i) {
    auto chunk = c.read_json();
    ASSERT_TRUE(chunk.has_value());
    EXPECT_EQ(chunk->id(), 3u);
    EXPECT_EQ(chunk->final(), i == 2);
  }
  // Blank lines and CRLF are fine.
  ASSERT_TRUE(c.send_raw("\r\n\n{\"id\":4,\"list_models\":{}}\r\n"));
  auto again = c.read_json();
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->id(), 4u);
}

TEST_F(ServerTest, JsonClientMayStartWithABlankLine) {
  start();
  Client c(socket_path_);
  ASSERT_TRUE(c.send_raw("\n"));
  c.handshake_json();
}

TEST_F(ServerTest, HalfClosedJsonClientStillGetsItsAnswers) {
  start();
  Client c(socket_path_);
  // The way `printf ... | nc -U` talks: everything, then EOF; the last line lacks its '\n'.
  ASSERT_TRUE(c.send_raw(R"({"id":1,"handshake":{"protocol_version":1}})"
                         "\n"
                         R"({"id":2,"generate":{"max_tokens":3}})"
                         "\n"
                         R"({"id":3,"list_models":{}})"));
  c.shutdown_write();
  std::vector<uint64_t> ids;
  while (auto r = c.read_json()) ids.push_back(r->id());
  EXPECT_EQ(ids, (std::vector<uint64_t>{1, 2, 2, 2, 3}));
  EXPECT_TRUE(c.wait_closed());
}

TEST_F(ServerTest, HandlerExceptionBecomesAnInternalResponse) {
  start();
  Client c(socket_path_);
  c.handshake_binary();
  api::Request r;
  r.set_id(11);
  r.mutable_stats();
  ASSERT_TRUE(c.send_frame(r));
  auto reply = c.read_frame();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->id(), 11u);
  EXPECT_EQ(reply->code(), api::INTERNAL);
  EXPECT_TRUE(contains(reply->message(), "boom")) << reply->message();
  ASSERT_TRUE(c.send_frame(list_models(12)));  // still connected
  auto next = c.read_frame();
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->id(), 12u);
}

TEST_F(ServerTest, RequestWithoutBodyIsAnErrorButKeepsTheConnection) {
  start();
  Client c(socket_path_);
  c.handshake_binary();
  api::Request empty;
  empty.set_id(21);
  ASSERT_TRUE(c.send_frame(empty));
  auto reply = c.read_frame();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->id(), 21u);
  EXPECT_EQ(reply->code(), api::INVALID_ARGUMENT);
  EXPECT_TRUE(contains(reply->message(), "no body")) << reply->message();
  ASSERT_TRUE(c.send_frame(list_models(22)));
  auto next = c.read_frame();
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->id(), 22u);
}

// ---- socket file and directory ----------------------------------------------------------------
TEST_F(ServerTest, SocketIsMode0600AndCreatedDirectoryIs0700) {
  ServerOptions o = options();
  o.socket_path = dir_ + "/run/palu/palud.sock";
  const mode_t old_umask = ::umask(0);  // the modes must not depend on the umask
  start(o);
  ::umask(old_umask);
  struct stat st;
  ASSERT_EQ(::stat((dir_ + "/run/palu").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(::stat((dir_ + "/run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(::lstat(o.socket_path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(server_->socket_path(), o.socket_path);
}

TEST_F(ServerTest, GroupOrWorldWritableDirectoryIsRefused) {
  for (mode_t mode : {0770, 0703, 01777}) {
    ASSERT_EQ(::chmod(dir_.c_str(), mode), 0);
    auto created = Server::create(options(), &handler_);
    ASSERT_FALSE(created.is_ok()) << std::oct << mode;
    EXPECT_TRUE(contains(created.status().message(), "group/world-writable"))
        << created.status().message();
    EXPECT_TRUE(contains(created.status().message(), dir_)) << created.status().message();
  }
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);  // readable by others is fine
  auto created = Server::create(options(), &handler_);
  EXPECT_TRUE(created.is_ok()) << created.status().message();
}

TEST_F(ServerTest, DirectoryOwnedByAnotherUidIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give the directory to another uid";
  ASSERT_EQ(::chown(dir_.c_str(), 4242, 4242), 0);
  auto created = Server::create(options(), &handler_);
  ASSERT_FALSE(created.is_ok());
  EXPECT_TRUE(contains(created.status().message(), "owned by uid 4242"))
      << created.status().message();
}

TEST_F(ServerTest, StaleSocketIsReplaced) {
  {
    // A socket file whose listener is gone (a palud that was killed).
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path_.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(fd, 1), 0);
    ::close(fd);
  }
  struct stat st;
  ASSERT_EQ(::lstat(socket_path_.c_str(), &st), 0);
  start();
  Client c(socket_path_);
  c.handshake_binary();
}

TEST_F(ServerTest, LiveSocketIsRefused) {
  start();
  FakeHandler other;
  auto second = Server::create(options(), &other);
  ASSERT_FALSE(second.is_ok());
  EXPECT_EQ(second.status().message(), "another palud is listening on " + socket_path_);
  Client c(socket_path_);  // the first one is untouched
  c.handshake_binary();
}

TEST_F(ServerTest, OtherFileAtTheSocketPathIsNotReplaced) {
  {
    std::FILE* f = std::fopen(socket_path_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
  }
  auto created = Server::create(options(), &handler_);
  ASSERT_FALSE(created.is_ok());
  EXPECT_TRUE(contains(created.status().message(), "is not a socket"))
      << created.status().message();
  EXPECT_TRUE(std::filesystem::exists(socket_path_));
}

TEST_F(ServerTest, TooLongSocketPathIsRefused) {
  ServerOptions o = options();
  o.socket_path = dir_ + "/" + std::string(120, 'x');
  auto created = Server::create(o, &handler_);
  ASSERT_FALSE(created.is_ok());
  EXPECT_TRUE(contains(created.status().message(), "limited to 107 bytes"))
      << created.status().message();
}

// ---- bad input -------------------------------------------------------------------------------
TEST_F(ServerTest, OversizedFrameIsRefusedAndClosedWhileAnotherConnectionKeepsWorking) {
  ServerOptions o = options();
  o.max_frame_bytes = 1024;
  start(o);
  Client bad(socket_path_), good(socket_path_);
  bad.handshake_binary();
  good.handshake_binary();
  // A 4 GiB length: refused from the header alone.
  ASSERT_TRUE(bad.send_raw(palu::api::encode_frame_header(0xffffffffu)));
  auto reply = bad.read_frame();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->id(), 0u);
  EXPECT_EQ(reply->code(), api::INVALID_ARGUMENT);
  EXPECT_TRUE(contains(reply->message(), "4294967295 bytes is over the limit of 1024 bytes"))
      << reply->message();
  EXPECT_TRUE(bad.wait_closed());

  ASSERT_TRUE(good.send_frame(list_models(2)));
  auto models = good.read_frame();
  ASSERT_TRUE(models.has_value());
  EXPECT_EQ(models->code(), api::OK);
  EXPECT_GE(server_->stats().protocol_errors, 1u);
}

TEST_F(ServerTest, OversizedJsonLineIsRefusedAndClosed) {
  ServerOptions o = options();
  o.max_frame_bytes = 1024;
  start(o);
  Client c(socket_path_);
  c.handshake_json();
  ASSERT_TRUE(c.send_raw(R"({"id":2,"generate":{"prompt":")" + std::string(4096, 'a')));
  auto reply = c.read_json();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code(), api::INVALID_ARGUMENT);
  EXPECT_TRUE(contains(reply->message(), "longer than the limit of 1024 bytes"))
      << reply->message();
  EXPECT_TRUE(c.wait_closed());
}

TEST_F(ServerTest, BadMagicIsRefusedAndClosed) {
  start();
  Client c(socket_path_);
  ASSERT_TRUE(c.send_raw("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto reply = c.read_frame();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code(), api::INVALID_ARGUMENT);
  EXPECT_TRUE(contains(reply->message(), "bad frame magic")) << reply->message();
  EXPECT_TRUE(contains(reply->message(), "GET / HT")) << reply->message();
  EXPECT_TRUE(c.wait_closed());
}

TEST_F(ServerTest, TruncatedFrameHitsTheFrameTimeout) {
  ServerOptions o = options();
  o.frame_timeout_ms = 200;
  start(o);
  Client c(socket_path_);
  c.handshake_binary();
  const std::string frame = palu::api::encode_frame(list_models(2));
  ASSERT_TRUE(c.send_raw(std::string_view(frame).substr(0, 5)));
  const auto t0 = Clock::now();
  auto reply = c.read_frame();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code(), api::INVALID_ARGUMENT);
  EXPECT_TRUE(contains(reply->message(), "not completed within 200 ms")) << reply->message();
  EXPECT_TRUE(contains(reply->message(), "5 of 12 bytes")) << reply->message();
  EXPECT_TRUE(c.wait_closed());
  EXPECT_GE(ms_since(t0), 150);
  EXPECT_GE(server_->stats().timeouts, 1u);
  EXPECT_TRUE(handler_.wait_closed(1));
}

TEST_F(ServerTest, SlowLorisDripFeedIsClosedAtTheFrameDeadline) {
  ServerOptions o = options();
  o.frame_timeout_ms = 200;
  start(o);
  Client c(socket_path_);
  c.handshake_json();
  // One byte every 20 ms: each read succeeds, but the line as a whole is late.
  const auto t0 = Clock::now();
  bool closed = false;
  ASSERT_TRUE(c.send_raw("{"));
  for (int i = 0; i < 100 && !closed && ms_since(t0) < 2000; ++i) {
    std::this_thread::sleep_for(milliseconds(20));
    pollfd p{c.fd(), POLLIN, 0};
    if (::poll(&p, 1, 0) > 0 || !c.send_raw(" ")) closed = true;  // the error response or EOF
  }
  EXPECT_TRUE(closed);
  EXPECT_LT(ms_since(t0), 1000) << "the deadline must count from the line's first byte";
  EXPECT_TRUE(c.wait_closed());
}

TEST_F(ServerTest, TruncatedFrameAtEndOfStreamIsReported) {
  start();
  Client c(socket_path_);
  c.handshake_binary();
  const std::string frame = palu::api::encode_frame(generate(2));
  ASSERT_TRUE(c.send_raw(std::string_view(frame).substr(0, frame.size() - 3)));
  c.shutdown_write();
  auto reply = c.read_frame();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code(), api::INVALID_ARGUMENT);
  EXPECT_TRUE(contains(reply->message(), "truncated frame")) << reply->message();
  EXPECT_TRUE(contains(reply->message(),
                       std::to_string(frame.size() - 3) + " of " + std::to_string(frame.size())))
      << reply->message();
  EXPECT_TRUE(c.wait_closed());
}

TEST_F(ServerTest, MalformedProtobufGetsInvalidArgumentAndCloses) {
  start();
  Client c(socket_path_);
  c.handshake_binary();
  const std::string garbage(
      "\x52\x05"
      "ab",
      4);  // a field longer than the payload
  ASSERT_TRUE(
      c.send_raw(palu::api::encode_frame_header(static_cast<uint32_t>(garbage.size())) + garbage));
  auto reply = c.read_frame();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->id(), 0u);
  EXPECT_EQ(reply->code(), api::INVALID_ARGUMENT);
  EXPECT_TRUE(contains(reply->message(), "not a valid palu.api.v1.Request")) << reply->message();
  EXPECT_TRUE(c.wait_closed());
  EXPECT_TRUE(handler_.wait_closed(1));
  Client next(socket_path_);  // the daemon is unaffected
  next.handshake_binary();
}

TEST_F(ServerTest, MalformedJsonGetsInvalidArgumentAndCloses) {
  start();
  struct Case {
    const char* name;
    const char* line;
    const char* error;
  };
  const Case cases[] = {
      {"unknown field", R"({"id":2,"lisst_models":{}})", "lisst_models"},
      {"wrong type", R"({"id":2,"generate":{"max_tokens":"many"}})", "JSON request"},
      {"not JSON", "{this is not json", "JSON request"},
  };
  for (const auto& k : cases) {
    Client c(socket_path_);
    c.handshake_json();
    ASSERT_TRUE(c.send_json(k.line));
    std::string raw;
    auto reply = c.read_json(kReadTimeoutMs, &raw);
    ASSERT_TRUE(reply.has_value()) << k.name;
    EXPECT_EQ(reply->id(), 0u) << k.name;
    EXPECT_EQ(reply->code(), api::INVALID_ARGUMENT) << k.name;
    EXPECT_TRUE(contains(raw, R"("code":"INVALID_ARGUMENT")")) << raw;
    EXPECT_TRUE(contains(reply->message(), k.error)) << k.name << ": " << reply->message();
    EXPECT_TRUE(c.wait_closed()) << k.name;
  }
  Client next(socket_path_);
  next.handshake_json();
}

// ---- backpressure, floods, stop -------------------------------------------------------------
TEST_F(ServerTest, ClientThatStopsReadingIsClosedAtTheBacklogLimit) {
  ServerOptions o = options();
  o.max_backlog_bytes = 64 * 1024;
  start(o);
  Client c(socket_path_);
  c.handshake_binary();
  ASSERT_TRUE(c.send_frame(generate(2, kEndlessStream)));
  // The client reads nothing more: the kernel's buffers fill, then the server's backlog.
  ASSERT_TRUE(handler_.wait_stream_refused(5000)) << "sent " << handler_.stream_sent() << " chunks";
  EXPECT_TRUE(handler_.stream_refused_sink_closed());
  EXPECT_TRUE(handler_.wait_closed(1));
  EXPECT_EQ(server_->stats().backlog_overflows, 1u);
  EXPECT_TRUE(c.wait_closed());
}

TEST_F(ServerTest, ManyConcurrentClients) {
  constexpr int kClients = 32;
  start();
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      Client c(socket_path_);
      if (!c.connected()) return;
      const bool json = t % 2 == 1;
      bool good = true;
      if (json) {
        good &= c.send_json(R"({"id":1,"handshake":{"protocol_version":1}})");
        good &= c.read_json().has_value();
        for (int round = 0; round < 5 && good; ++round) {
          good &= c.send_json(R"({"id":2,"list_models":{}})");
          auto r = c.read_json();
          good &= r.has_value() && r->id() == 2 && r->code() == api::OK;
          good &= c.send_json(R"({"id":3,"generate":{"max_tokens":3}})");
          for (int i = 0; i < 3 && good; ++i) {
            auto chunk = c.read_json();
            good &= chunk.has_value() && chunk->id() == 3 && chunk->final() == (i == 2);
          }
        }
      } else {
        api::Request hs;
        hs.set_id(1);
        hs.mutable_handshake()->set_protocol_version(1);
        good &= c.send_frame(hs);
        good &= c.read_frame().has_value();
        for (int round = 0; round < 5 && good; ++round) {
          good &= c.send_frame(list_models(2));
          auto r = c.read_frame();
          good &= r.has_value() && r->id() == 2 && r->code() == api::OK;
          good &= c.send_frame(generate(3));
          for (int i = 0; i < 3 && good; ++i) {
            auto chunk = c.read_frame();
            good &= chunk.has_value() && chunk->id() == 3 && chunk->final() == (i == 2);
          }
        }
      }
      if (good) ok++;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kClients);
  EXPECT_TRUE(handler_.wait_closed(kClients));
  const ServerStats s = server_->stats();
  EXPECT_EQ(s.connections_accepted, static_cast<uint64_t>(kClients));
  EXPECT_EQ(s.connections_open, 0u);
  EXPECT_EQ(s.frames_in, static_cast<uint64_t>(kClients) * 11);
  EXPECT_EQ(s.protocol_errors, 0u);
}

TEST_F(ServerTest, ManyClientsWithSeveralIoThreads) {
  ServerOptions o = options();
  o.io_threads = 4;
  start(o);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&] {
      Client c(socket_path_);
      api::Request hs;
      hs.set_id(1);
      hs.mutable_handshake()->set_protocol_version(1);
      bool good = c.send_frame(hs) && c.read_frame().has_value();
      for (int round = 0; round < 10 && good; ++round) {
        good &= c.send_frame(generate(round + 10));
        for (int i = 0; i < 3 && good; ++i) {
          auto chunk = c.read_frame();
          good &= chunk.has_value() && chunk->id() == static_cast<uint64_t>(round + 10);
        }
      }
      if (good) ok++;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 16);
}

TEST_F(ServerTest, ConnectionsOverTheLimitAreRefused) {
  ServerOptions o = options();
  o.max_connections = 2;
  start(o);
  Client a(socket_path_), b(socket_path_);
  a.handshake_binary();
  b.handshake_binary();
  Client c(socket_path_);
  EXPECT_TRUE(c.wait_closed());
  EXPECT_EQ(server_->stats().connections_refused, 1u);
  ASSERT_TRUE(a.send_frame(list_models(2)));
  EXPECT_TRUE(a.read_frame().has_value());
}

TEST_F(ServerTest, IdleTimeoutClosesAQuietConnection) {
  ServerOptions o = options();
  o.idle_timeout_ms = 150;
  start(o);
  Client c(socket_path_);
  c.handshake_binary();
  const auto t0 = Clock::now();
  EXPECT_TRUE(c.wait_closed());
  EXPECT_GE(ms_since(t0), 100);
  EXPECT_EQ(server_->stats().timeouts, 1u);
}

TEST_F(ServerTest, StopWhileClientsAreConnected) {
  start();
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 5; ++i) {
    clients.push_back(std::make_unique<Client>(socket_path_));
    clients.back()->handshake_binary();
  }
  api::Request tok;  // a request in flight, its sink held by the handler
  tok.set_id(8);
  tok.mutable_tokenize()->set_text("hi");
  ASSERT_TRUE(clients[0]->send_frame(tok));
  for (int i = 0; i < 100 && handler_.held().empty(); ++i)
    std::this_thread::sleep_for(milliseconds(5));
  ASSERT_EQ(handler_.held().size(), 1u);
  EXPECT_FALSE(handler_.held()[0]->closed());

  const auto t0 = Clock::now();
  server_->stop();
  server_->stop();  // idempotent
  EXPECT_LT(ms_since(t0), 1500);
  for (auto& c : clients) EXPECT_TRUE(c->wait_closed());
  EXPECT_TRUE(handler_.wait_closed(5));
  EXPECT_TRUE(handler_.held()[0]->closed());
  EXPECT_FALSE(handler_.held()[0]->send(make_response(8, api::OK, "late")));
  EXPECT_FALSE(std::filesystem::exists(socket_path_));
  EXPECT_EQ(server_->stats().connections_open, 0u);
  Client late(socket_path_);
  EXPECT_FALSE(late.connected());
}

TEST_F(ServerTest, RunBlocksUntilStopFromAnotherThread) {
  auto created = Server::create(options(), &handler_);
  ASSERT_TRUE(created.is_ok()) << created.status().message();
  server_ = std::move(created).value();
  std::thread runner([&] { server_->run(); });
  {
    Client c(socket_path_);
    c.handshake_binary();
  }
  server_->stop();
  runner.join();
  EXPECT_FALSE(std::filesystem::exists(socket_path_));
}

}  // namespace
}  // namespace palu::daemon
