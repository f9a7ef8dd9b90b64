// palud's Unix-socket server (daemon/server.h). Structure, after the Asio examples
// (local/stream_server, the coroutine chat server with a timer as a wake-up signal): one accept
// coroutine; per connection three coroutines on the connection's strand — reader (decode,
// handshake, dispatch), writer (the response queue) and watchdog (the connection's deadlines:
// a started frame, the handshake, idleness, a write that does not progress). Boost 1.74 has
// no cancel_after, so a deadline is a time point the watchdog's steady_timer waits for; when
// it passes the watchdog closes the socket, which ends the pending read or write.
#include "daemon/server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sdk/proto/framing.h"

namespace palu::daemon {

namespace asio = boost::asio;
namespace wire = palu::api;  // framing (api:: is the protobuf package, palu::api::v1)
using asio::local::stream_protocol;
using Clock = std::chrono::steady_clock;
using Strand = asio::strand<asio::io_context::executor_type>;
using Socket = asio::basic_stream_socket<stream_protocol, Strand>;
using Timer = asio::basic_waitable_timer<Clock, asio::wait_traits<Clock>, Strand>;

namespace {

constexpr size_t kReadChunkBytes = 64 * 1024;
constexpr size_t kMaxBuffersPerWrite = 64;
constexpr auto kStopWait = std::chrono::seconds(2);

std::string errno_text(int err) {
  return std::strerror(err);
}

std::string mode_text(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0%03o", static_cast<unsigned>(mode & 07777));
  return buf;
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// The socket's directory: created 0700 when missing; an existing one must be ours and not
// writable by others (who could otherwise replace the socket with their own).
Status prepare_directory(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT)
      return io_error("cannot stat socket directory " + dir + ": " + errno_text(errno));
    // Create the missing components, each 0700.
    for (size_t pos = 1; pos <= dir.size(); ++pos) {
      if (pos != dir.size() && dir[pos] != '/') continue;
      const std::string prefix = dir.substr(0, pos);
      if (::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
        return io_error("cannot create socket directory " + prefix + ": " + errno_text(errno));
      }
    }
    if (::chmod(dir.c_str(), 0700) != 0) {  // mkdir's mode is filtered by the umask
      return io_error("cannot chmod 0700 socket directory " + dir + ": " + errno_text(errno));
    }
    if (::stat(dir.c_str(), &st) != 0) {
      return io_error("cannot stat socket directory " + dir + ": " + errno_text(errno));
    }
  }
  if (!S_ISDIR(st.st_mode))
    return failed_precondition("socket directory " + dir + " is not a directory");
  if (st.st_uid != ::geteuid()) {
    return failed_precondition("socket directory " + dir + " is owned by uid " +
                               std::to_string(st.st_uid) + ", not by this user (uid " +
                               std::to_string(::geteuid()) +
                               "); use a directory of your own, e.g. $XDG_RUNTIME_DIR/palu");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return failed_precondition("socket directory " + dir + " is group/world-writable (mode " +
                               mode_text(st.st_mode) +
                               "): another user could replace the socket; use a private "
                               "directory (chmod 700 " +
                               dir + ")");
  }
  return Status::ok();
}

// A socket file left by a palud that died is replaced; one with a live listener is not.
Status remove_stale_socket(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::ok();
    return io_error("cannot stat " + path + ": " + errno_text(errno));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return failed_precondition(path + " exists and is not a socket; refusing to replace it");
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return io_error("socket(): " + errno_text(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  ::close(fd);
  if (rc == 0 || err == EAGAIN) return failed_precondition("another palud is listening on " + path);
  if (err != ECONNREFUSED)
    return io_error("cannot check the existing socket " + path + ": " + errno_text(err));
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return io_error("cannot remove the stale socket " + path + ": " + errno_text(errno));
  }
  return Status::ok();
}

std::string body_name(const api::Request& request) {
  if (request.body_case() == api::Request::BODY_NOT_SET) return "an empty request (no body)";
  const auto* field = request.GetReflection()->GetOneofFieldDescriptor(
      request, api::Request::descriptor()->FindOneofByName("body"));
  return field ? field->name() : "an unknown request";
}

struct Counters {
  std::atomic<uint64_t> accepted{0}, open{0}, refused{0}, frames_in{0}, frames_out{0},
      protocol_errors{0}, timeouts{0}, backlog_overflows{0};
};

class Connection;

}  // namespace

// ---------------------------------------------------------------------------------------------
struct Server::Impl {
  Impl(ServerOptions o, RequestHandler* h) : options(std::move(o)), handler(h) {}

  ServerOptions options;
  RequestHandler* handler;
  asio::io_context io;
  stream_protocol::acceptor acceptor{io};
  dev_t socket_dev = 0;  // the file we bound: unlinked at stop only if still ours
  ino_t socket_ino = 0;
  Counters counters;
  std::atomic<uint64_t> next_connection_id{1};
  std::atomic<bool> stopping{false};

  std::mutex connections_mu;
  std::unordered_map<uint64_t, std::weak_ptr<Connection>> connections;

  std::mutex run_mu;
  std::condition_variable run_cv;
  int running = 0;  // threads inside io.run()
  std::vector<std::thread> threads;

  static thread_local const Impl* current_io;  // set on this server's I/O threads

  void log(const std::string& line) const {
    if (!options.log) return;
    try {
      options.log(line);
    } catch (...) {
    }
  }
  asio::awaitable<void> accept_loop();
  void run_io();  // `running` already counted for this thread
  void wait_stopped();
  void unlink_socket_file();
};

thread_local const Server::Impl* Server::Impl::current_io = nullptr;

namespace {

// ---------------------------------------------------------------------------------------------
class ConnectionSink final : public ResponseSink {
 public:
  explicit ConnectionSink(std::weak_ptr<Connection> connection)
      : connection_(std::move(connection)) {}
  bool send(const api::Response& response) override;
  bool closed() const override;

 private:
  std::weak_ptr<Connection> connection_;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Server::Impl* server, Strand strand, Socket socket, PeerInfo peer)
      : server_(server),
        opt_(server->options),
        strand_(strand),
        socket_(std::move(socket)),
        deadline_timer_(strand),
        write_signal_(strand),
        peer_(peer),
        frames_(opt_.max_frame_bytes),
        lines_(opt_.max_frame_bytes),
        connected_at_(Clock::now()) {}

  void start() {
    sink_ = std::make_shared<ConnectionSink>(weak_from_this());
    auto on_exit = [self = shared_from_this()](std::exception_ptr e) {
      if (!e) return;
      // Coroutines catch their own exceptions; this is the last line of defence.
      asio::post(self->strand_,
                 [self] { self->close("internal error in a connection coroutine"); });
    };
    asio::co_spawn(strand_, read_loop(shared_from_this()), on_exit);
    asio::co_spawn(strand_, write_loop(shared_from_this()), on_exit);
    asio::co_spawn(strand_, watchdog(shared_from_this()), on_exit);
  }

  uint64_t id() const { return peer_.connection_id; }
  bool closed() const { return closed_.load(); }

  // Any thread: the daemon is stopping.
  void request_close() {
    closed_ = true;
    asio::post(strand_, [self = shared_from_this()] { self->close("daemon stopping"); });
  }

  // Any thread (ResponseSink::send).
  bool send_from_any_thread(const api::Response& response) {
    if (closed_.load()) return false;
    std::string bytes = encode(response);
    const size_t n = bytes.size();
    const size_t before = backlog_bytes_.fetch_add(n);
    if (before > 0 && before + n > opt_.max_backlog_bytes) {
      backlog_bytes_.fetch_sub(n);
      if (!closed_.exchange(true)) {
        server_->counters.backlog_overflows++;
        asio::post(strand_, [self = shared_from_this(), before] {
          self->close("the client stopped reading: " + std::to_string(before) +
                      " bytes of responses unsent, limit " +
                      std::to_string(self->opt_.max_backlog_bytes));
        });
      }
      return false;
    }
    asio::post(strand_, [self = shared_from_this(), bytes = std::move(bytes), id = response.id(),
                         final = response.final()]() mutable {
      self->enqueue(std::move(bytes), id, final);
    });
    return true;
  }

 private:
  enum class Mode { kUnknown, kBinary, kJson };

  // ---- encoding (any thread; mode_ is fixed before the first request is dispatched) -------
  std::string encode(const api::Response& response) const {
    if (!wire::is_valid_utf8(response.message())) {
      api::Response copy = response;
      copy.set_message(wire::escape_bytes(response.message(), 4096));
      return encode(copy);
    }
    const bool json = mode_.load() == Mode::kJson;
    std::string bytes = json ? wire::response_to_json_line(response) : wire::encode_frame(response);
    const size_t payload =
        json ? bytes.size() - 1 : bytes.size() - std::min(bytes.size(), wire::kFrameHeaderBytes);
    if (bytes.empty() || payload > opt_.max_frame_bytes) {
      // The client's decoder would refuse it; tell it what happened instead.
      api::Response error =
          make_response(response.id(), api::INTERNAL,
                        "the response (" + std::to_string(response.ByteSizeLong()) +
                            " bytes serialized) is over the frame limit of " +
                            std::to_string(opt_.max_frame_bytes) + " bytes");
      error.set_final(response.final());
      return json ? wire::response_to_json_line(error) : wire::encode_frame(error);
    }
    return bytes;
  }

  // ---- on the strand from here on ----------------------------------------------------------
  void enqueue(std::string bytes, uint64_t id, bool final) {
    if (shut_) {
      backlog_bytes_.fetch_sub(bytes.size());
      return;
    }
    queue_.push_back(std::move(bytes));
    if (final && id != 0) {
      auto it = outstanding_.find(id);
      if (it != outstanding_.end() && --it->second == 0) outstanding_.erase(it);
    }
    write_signal_.cancel();
  }

  // A response made by the server itself (handshake, protocol errors).
  void send_local(const api::Response& response) {
    std::string bytes = encode(response);
    backlog_bytes_.fetch_add(bytes.size());
    enqueue(std::move(bytes), 0, false);
  }

  // One error response, then the connection is closed once it is written.
  void protocol_error(const api::Response& response, const std::string& what) {
    server_->counters.protocol_errors++;
    server_->log("connection " + std::to_string(id()) + " (uid " + std::to_string(peer_.uid) +
                 ", pid " + std::to_string(peer_.pid) + "): " + what + "; closing");
    send_local(response);
    close_after_flush_ = true;
    stop_reading_ = true;
    write_signal_.cancel();
  }
  void protocol_error(uint64_t id, api::Code code, const std::string& message) {
    protocol_error(make_response(id, code, message), message);
  }

  void close(const std::string& reason) {
    if (shut_) return;
    shut_ = true;
    closed_ = true;
    boost::system::error_code ec;
    socket_.shutdown(stream_protocol::socket::shutdown_both, ec);
    socket_.close(ec);
    deadline_timer_.cancel();
    write_signal_.cancel();
    {
      std::lock_guard lock(server_->connections_mu);
      server_->connections.erase(id());
    }
    server_->counters.open--;
    server_->log("connection " + std::to_string(id()) + " closed: " + reason);
    try {
      server_->handler->connection_closed(peer_);
    } catch (const std::exception& e) {
      server_->log(std::string("connection_closed threw: ") + e.what());
    } catch (...) {
      server_->log("connection_closed threw");
    }
  }

  bool in_partial() const {
    return mode_.load() == Mode::kJson ? lines_.in_line() : frames_.in_frame();
  }

  // The read deadline for the current state; the watchdog is woken when it moved earlier.
  void update_read_deadline() {
    const auto now = Clock::now();
    Clock::time_point d = Clock::time_point::max();
    if (stop_reading_ || shut_) {
      d = Clock::time_point::max();
    } else if (in_partial()) {
      d = frame_started_ + std::chrono::milliseconds(opt_.frame_timeout_ms);
    } else if (!handshaken_) {
      d = connected_at_ + std::chrono::milliseconds(opt_.frame_timeout_ms);
    } else if (opt_.idle_timeout_ms > 0 && outstanding_.empty() && queue_.empty() && !writing_) {
      d = std::max(last_activity_, now) + std::chrono::milliseconds(opt_.idle_timeout_ms);
    }
    read_deadline_ = d;
    rearm();
  }
  void rearm() {
    if (std::min(read_deadline_, write_deadline_) < deadline_timer_.expiry())
      deadline_timer_.cancel();
  }

  // ---- reader -----------------------------------------------------------------------------
  asio::awaitable<void> read_loop(std::shared_ptr<Connection> self) {
    std::vector<char> buf(kReadChunkBytes);
    try {
      while (!shut_ && !stop_reading_) {
        update_read_deadline();
        boost::system::error_code ec;
        const size_t n = co_await socket_.async_read_some(
            asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
        if (shut_) break;
        if (ec) {
          if (ec == asio::error::eof) {
            on_peer_eof();
          } else {
            close("read failed: " + ec.message());
          }
          break;
        }
        last_activity_ = Clock::now();
        if (!consume(std::string_view(buf.data(), n))) break;
      }
    } catch (const std::exception& e) {
      close(std::string("reader failed: ") + e.what());
    } catch (...) {
      close("reader failed");
    }
    read_deadline_ = Clock::time_point::max();
    (void)self;
  }

  // Decodes `bytes`, dispatches every complete request. False: stop reading.
  bool consume(std::string_view bytes) {
    if (mode_.load() == Mode::kUnknown) {
      // A frame starts with 'P'; '{' (or the blank line a socat user may type first) is JSON.
      const char c = bytes[0];
      const bool json = c == '{' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
      mode_ = json ? Mode::kJson : Mode::kBinary;
    }
    const bool was_partial = in_partial();
    size_t completed = 0;
    if (mode_.load() == Mode::kJson) {
      const Status st = lines_.feed(bytes);
      while (auto line = lines_.next()) {
        ++completed;
        if (shut_ || !dispatch_line(*line)) return false;
      }
      if (!st.is_ok()) {
        protocol_error(0, api::INVALID_ARGUMENT, "malformed request: " + st.message());
        return false;
      }
    } else {
      const Status st = frames_.feed(bytes);
      while (auto frame = frames_.next()) {
        ++completed;
        if (shut_ || !dispatch_frame(*frame)) return false;
      }
      if (!st.is_ok()) {
        protocol_error(0, api::INVALID_ARGUMENT, "malformed frame: " + st.message());
        return false;
      }
    }
    if (in_partial() && (!was_partial || completed > 0)) frame_started_ = Clock::now();
    return true;
  }

  void on_peer_eof() {
    // The client closed its side. A final JSON line may lack its '\n'; a binary frame cut
    // short is an error. Responses to requests in flight are still written (half-close), so
    // `printf '...' | nc -U` scripts get their answers.
    peer_eof_ = true;
    if (mode_.load() == Mode::kJson && lines_.in_line()) {
      if (!consume("\n")) return;
    } else if (mode_.load() == Mode::kBinary && frames_.in_frame()) {
      protocol_error(0, api::INVALID_ARGUMENT,
                     "truncated frame: the connection ended after " +
                         std::to_string(frames_.partial_bytes()) + " of " +
                         std::to_string(frames_.partial_needed_bytes()) + " bytes");
      return;
    }
    stop_reading_ = true;
    write_signal_.cancel();  // the writer closes once nothing is left to send
  }

  bool dispatch_frame(const wire::FrameDecoder::Frame& frame) {
    api::Request request;
    const bool parsed = request.ParseFromString(frame.payload);
    if (!handshaken_ && frame.protocol_version != wire::kProtocolVersion) {
      // Another protocol version may lay out its messages differently: report the mismatch,
      // whatever the payload is.
      const bool is_handshake = parsed && request.has_handshake();
      return version_mismatch(
          parsed ? request.id() : 0,
          is_handshake ? request.handshake().protocol_version() : frame.protocol_version);
    }
    if (!parsed) {
      protocol_error(0, api::INVALID_ARGUMENT,
                     "malformed request: the frame's payload (" +
                         std::to_string(frame.payload.size()) +
                         " bytes) is not a valid palu.api.v1.Request protobuf");
      return false;
    }
    if (frame.protocol_version != wire::kProtocolVersion) {
      protocol_error(
          request.id(), api::INVALID_ARGUMENT,
          "frame header says protocol version " + std::to_string(frame.protocol_version) +
              ", this connection speaks version " + std::to_string(wire::kProtocolVersion));
      return false;
    }
    return dispatch(request);
  }

  bool dispatch_line(const std::string& line) {
    api::Request request;
    const Status st = wire::parse_json_request(line, &request);
    if (!st.is_ok()) {
      protocol_error(0, api::INVALID_ARGUMENT, "malformed request: " + st.message());
      return false;
    }
    return dispatch(request);
  }

  bool version_mismatch(uint64_t request_id, uint32_t client_version) {
    api::Response r =
        make_response(request_id, api::VERSION_MISMATCH,
                      "protocol version mismatch: the client speaks version " +
                          std::to_string(client_version) + ", palud " + opt_.daemon_version +
                          " speaks version " + std::to_string(wire::kProtocolVersion));
    fill_handshake_reply(r.mutable_handshake());
    protocol_error(r, r.message());
    return false;
  }

  void fill_handshake_reply(api::HandshakeReply* reply) const {
    reply->set_protocol_version(wire::kProtocolVersion);
    reply->set_daemon_version(opt_.daemon_version);
    reply->set_max_frame_bytes(opt_.max_frame_bytes);
  }

  bool dispatch(const api::Request& request) {
    server_->counters.frames_in++;
    if (request.has_handshake()) {
      if (request.handshake().protocol_version() != wire::kProtocolVersion) {
        return version_mismatch(request.id(), request.handshake().protocol_version());
      }
      api::Response r = make_response(request.id(), api::OK, "");
      fill_handshake_reply(r.mutable_handshake());
      send_local(r);
      handshaken_ = true;
      return true;
    }
    if (!handshaken_) {
      protocol_error(request.id(), api::FAILED_PRECONDITION,
                     "the first request must be a handshake, got " + body_name(request) +
                         " (send {\"id\":1,\"handshake\":{\"protocol_version\":" +
                         std::to_string(wire::kProtocolVersion) + "}} or its binary frame first)");
      return false;
    }
    if (request.body_case() == api::Request::BODY_NOT_SET) {
      const bool unknown = !request.GetReflection()->GetUnknownFields(request).empty();
      send_local(make_response(
          request.id(), unknown ? api::UNIMPLEMENTED : api::INVALID_ARGUMENT,
          unknown
              ? "request " + std::to_string(request.id()) + " is of a type this palud does not know"
              : "request " + std::to_string(request.id()) + " has no body"));
      return true;
    }
    ++outstanding_[request.id()];
    try {
      server_->handler->handle(request, peer_, sink_);
    } catch (const std::exception& e) {
      forget_outstanding(request.id());
      send_local(make_response(request.id(), api::INTERNAL,
                               std::string("the request handler failed: ") + e.what()));
    } catch (...) {
      forget_outstanding(request.id());
      send_local(make_response(request.id(), api::INTERNAL, "the request handler failed"));
    }
    return true;
  }

  void forget_outstanding(uint64_t id) {
    auto it = outstanding_.find(id);
    if (it != outstanding_.end() && --it->second == 0) outstanding_.erase(it);
  }

  // ---- writer -----------------------------------------------------------------------------
  asio::awaitable<void> write_loop(std::shared_ptr<Connection> self) {
    try {
      std::vector<asio::const_buffer> buffers;
      while (!shut_) {
        if (queue_.empty()) {
          if (close_after_flush_) {
            close("protocol error");
            break;
          }
          if (peer_eof_ && outstanding_.empty()) {
            close("the client closed the connection");
            break;
          }
          write_signal_.expires_at(Clock::time_point::max());
          boost::system::error_code ec;
          co_await write_signal_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
          continue;
        }
        // Responses are only appended while this write is in flight: deque references stay valid.
        const size_t k = std::min(queue_.size(), kMaxBuffersPerWrite);
        buffers.clear();
        size_t bytes = 0;
        for (size_t i = 0; i < k; ++i) {
          buffers.push_back(asio::buffer(queue_[i]));
          bytes += queue_[i].size();
        }
        writing_ = true;
        write_deadline_ = Clock::now() + std::chrono::milliseconds(opt_.frame_timeout_ms);
        rearm();
        boost::system::error_code ec;
        co_await asio::async_write(socket_, buffers, asio::redirect_error(asio::use_awaitable, ec));
        writing_ = false;
        write_deadline_ = Clock::time_point::max();
        if (shut_) break;
        if (ec) {
          close("write failed: " + ec.message());
          break;
        }
        for (size_t i = 0; i < k; ++i) queue_.pop_front();
        backlog_bytes_.fetch_sub(bytes);
        server_->counters.frames_out += k;
        last_activity_ = Clock::now();
        if (!stop_reading_ && queue_.empty()) update_read_deadline();  // idleness starts now
      }
    } catch (const std::exception& e) {
      close(std::string("writer failed: ") + e.what());
    } catch (...) {
      close("writer failed");
    }
    (void)self;
  }

  // ---- watchdog ---------------------------------------------------------------------------
  asio::awaitable<void> watchdog(std::shared_ptr<Connection> self) {
    try {
      while (!shut_) {
        const auto deadline = std::min(read_deadline_, write_deadline_);
        if (deadline <= Clock::now()) {
          on_deadline();
          break;
        }
        deadline_timer_.expires_at(deadline);
        boost::system::error_code ec;
        co_await deadline_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
    } catch (const std::exception& e) {
      close(std::string("watchdog failed: ") + e.what());
    } catch (...) {
      close("watchdog failed");
    }
    (void)self;
  }

  void on_deadline() {
    server_->counters.timeouts++;
    const auto now = Clock::now();
    const std::string ms = std::to_string(opt_.frame_timeout_ms) + " ms";
    if (write_deadline_ <= now) {
      close("a write made no progress within " + ms + " (the client is not reading)");
      return;
    }
    std::string reason;
    if (in_partial()) {
      reason = mode_.load() == Mode::kJson
                   ? "a JSON line was not completed within " + ms + " (" +
                         std::to_string(lines_.partial_bytes()) + " bytes without a newline)"
                   : "a frame was not completed within " + ms + " (" +
                         std::to_string(frames_.partial_bytes()) + " of " +
                         std::to_string(frames_.partial_needed_bytes()) + " bytes received)";
    } else if (!handshaken_) {
      reason = "no handshake within " + ms + " of connecting";
    } else {
      close("idle for " + std::to_string(opt_.idle_timeout_ms) + " ms");
      return;
    }
    // Best effort, never blocking: tell the client why, when nothing else is being written.
    if (mode_.load() != Mode::kUnknown && !writing_ && queue_.empty()) {
      const std::string bytes = encode(make_response(0, api::INVALID_ARGUMENT, reason));
      [[maybe_unused]] const ssize_t sent =
          ::send(socket_.native_handle(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    close(reason);
  }

  Server::Impl* server_;
  const ServerOptions& opt_;
  Strand strand_;
  Socket socket_;
  Timer deadline_timer_;  // the watchdog's
  Timer write_signal_;    // wakes the writer (cancelled when there is something to do)
  PeerInfo peer_;
  std::shared_ptr<ConnectionSink> sink_;

  std::atomic<Mode> mode_{Mode::kUnknown};
  std::atomic<bool> closed_{false};       // sends fail from now on (any thread)
  std::atomic<size_t> backlog_bytes_{0};  // encoded, not yet written

  // Strand-only state.
  wire::FrameDecoder frames_;
  wire::LineDecoder lines_;
  bool shut_ = false;  // close() ran
  bool handshaken_ = false;
  bool stop_reading_ = false;
  bool close_after_flush_ = false;
  bool peer_eof_ = false;
  bool writing_ = false;
  std::deque<std::string> queue_;
  std::unordered_map<uint64_t, int> outstanding_;  // request id → requests without a final response
  Clock::time_point connected_at_;
  Clock::time_point frame_started_{};
  Clock::time_point last_activity_{};
  Clock::time_point read_deadline_ = Clock::time_point::max();
  Clock::time_point write_deadline_ = Clock::time_point::max();
};

bool ConnectionSink::send(const api::Response& response) {
  auto c = connection_.lock();
  return c && c->send_from_any_thread(response);
}

bool ConnectionSink::closed() const {
  auto c = connection_.lock();
  return !c || c->closed();
}

PeerInfo peer_of(int fd, uint64_t connection_id) {
  PeerInfo peer;
  peer.connection_id = connection_id;
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    peer.uid = cred.uid;
    peer.gid = cred.gid;
    peer.pid = cred.pid;
  } else {
    // Unknown identity: an impossible uid, so no session can match it.
    peer.uid = static_cast<uid_t>(-1);
    peer.gid = static_cast<gid_t>(-1);
  }
  return peer;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
asio::awaitable<void> Server::Impl::accept_loop() {
  for (;;) {
    boost::system::error_code ec;
    Strand strand = asio::make_strand(io);
    Socket socket =
        co_await acceptor.async_accept(strand, asio::redirect_error(asio::use_awaitable, ec));
    if (stopping.load()) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      log("accept failed: " + ec.message());
      // Out of descriptors (EMFILE) and the like: back off instead of spinning.
      asio::steady_timer pause(io, std::chrono::milliseconds(100));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    counters.accepted++;
    if (counters.open.load() >= static_cast<uint64_t>(options.max_connections)) {
      counters.refused++;
      log("connection refused: " + std::to_string(options.max_connections) + " connections open");
      socket.close(ec);
      continue;
    }
    const PeerInfo peer = peer_of(socket.native_handle(), next_connection_id++);
    auto connection = std::make_shared<Connection>(this, strand, std::move(socket), peer);
    {
      std::lock_guard lock(connections_mu);
      if (stopping.load()) co_return;  // stop() has taken its snapshot
      connections.emplace(peer.connection_id, connection);
      counters.open++;
    }
    connection->start();
  }
}

void Server::Impl::run_io() {
  current_io = this;
  for (;;) {
    try {
      io.run();
      break;
    } catch (const std::exception& e) {
      log(std::string("I/O thread caught: ") + e.what());
    } catch (...) {
      log("I/O thread caught an unknown exception");
    }
  }
  current_io = nullptr;
  std::lock_guard lock(run_mu);
  --running;
  run_cv.notify_all();
}

void Server::Impl::wait_stopped() {
  {
    std::unique_lock lock(run_mu);
    if (!run_cv.wait_for(lock, kStopWait, [&] { return running == 0; })) {
      io.stop();  // something did not wind down in time (a handler holding a thread?)
      run_cv.wait(lock, [&] { return running == 0; });
    }
  }
  for (auto& t : threads) {
    if (t.joinable()) t.join();
  }
  threads.clear();
}

void Server::Impl::unlink_socket_file() {
  struct stat st;
  const std::string& path = options.socket_path;
  if (::lstat(path.c_str(), &st) == 0 && st.st_dev == socket_dev && st.st_ino == socket_ino) {
    ::unlink(path.c_str());
  }
}

// ---------------------------------------------------------------------------------------------
Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  stop();
  if (Impl::current_io != impl_.get()) impl_->wait_stopped();
}

Result<std::unique_ptr<Server>> Server::create(ServerOptions options, RequestHandler* handler) {
  if (handler == nullptr) return invalid_argument("server: no request handler");
  const std::string path = options.socket_path;  // options moves into the server below
  if (path.empty()) return invalid_argument("server: socket_path is empty");
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return invalid_argument("socket path " + path + " is " + std::to_string(path.size()) +
                            " bytes; Unix socket paths are limited to " +
                            std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes");
  }
  if (options.max_frame_bytes < 64) {
    return invalid_argument("server: max_frame_bytes must be at least 64, got " +
                            std::to_string(options.max_frame_bytes));
  }
  if (options.frame_timeout_ms <= 0) {
    return invalid_argument("server: frame_timeout_ms must be positive, got " +
                            std::to_string(options.frame_timeout_ms));
  }
  if (options.idle_timeout_ms < 0) {
    return invalid_argument("server: idle_timeout_ms must be >= 0, got " +
                            std::to_string(options.idle_timeout_ms));
  }
  if (options.max_connections <= 0) {
    return invalid_argument("server: max_connections must be positive, got " +
                            std::to_string(options.max_connections));
  }
  if (options.io_threads <= 0 || options.io_threads > 256) {
    return invalid_argument("server: io_threads must be in 1..256, got " +
                            std::to_string(options.io_threads));
  }
  if (options.max_backlog_bytes == 0)
    return invalid_argument("server: max_backlog_bytes must be positive");

  PALU_RETURN_IF_ERROR(prepare_directory(parent_dir(path)));
  PALU_RETURN_IF_ERROR(remove_stale_socket(path));

  auto impl = std::make_unique<Impl>(std::move(options), handler);
  boost::system::error_code ec;
  impl->acceptor.open(stream_protocol(), ec);
  if (ec) return io_error("cannot create a Unix socket: " + ec.message());
  impl->acceptor.bind(stream_protocol::endpoint(path), ec);
  if (ec) return io_error("cannot bind " + path + ": " + ec.message());
  // The directory is private, so nobody can connect in the moment before the chmod.
  if (::chmod(path.c_str(), impl->options.socket_mode) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return io_error("cannot chmod the socket " + path + ": " + errno_text(err));
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    impl->socket_dev = st.st_dev;
    impl->socket_ino = st.st_ino;
  }
  impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    ::unlink(path.c_str());
    return io_error("cannot listen on " + path + ": " + ec.message());
  }
  Impl* raw = impl.get();
  asio::co_spawn(impl->io, raw->accept_loop(), [raw](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      raw->log(std::string("accept loop ended: ") + ex.what());
    } catch (...) {
      raw->log("accept loop ended");
    }
  });
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

void Server::run() {
  std::vector<std::thread> helpers;  // joined here, not by stop()
  {
    std::lock_guard lock(impl_->run_mu);
    impl_->running += impl_->options.io_threads;
  }
  for (int i = 1; i < impl_->options.io_threads; ++i) {
    helpers.emplace_back([impl = impl_.get()] { impl->run_io(); });
  }
  impl_->run_io();
  for (auto& t : helpers) t.join();
}

void Server::start_in_thread() {
  std::lock_guard lock(impl_->run_mu);
  impl_->running += impl_->options.io_threads;
  for (int i = 0; i < impl_->options.io_threads; ++i) {
    impl_->threads.emplace_back([impl = impl_.get()] { impl->run_io(); });
  }
}

void Server::stop() {
  Impl* impl = impl_.get();
  if (impl->stopping.exchange(true)) return;
  impl->unlink_socket_file();
  asio::post(impl->io, [impl] {
    boost::system::error_code ec;
    impl->acceptor.close(ec);
  });
  std::vector<std::shared_ptr<Connection>> open;
  {
    std::lock_guard lock(impl->connections_mu);
    for (auto& [id, weak] : impl->connections) {
      if (auto c = weak.lock()) open.push_back(std::move(c));
    }
  }
  for (auto& c : open) c->request_close();
  const size_t closed = open.size();
  open.clear();  // the connections end on their strands
  impl->log("stopping: " + std::to_string(closed) + " connections closed");
  if (Impl::current_io != impl) impl->wait_stopped();
}

std::string Server::socket_path() const {
  return impl_->options.socket_path;
}

ServerStats Server::stats() const {
  const Counters& c = impl_->counters;
  ServerStats s;
  s.connections_accepted = c.accepted.load();
  s.connections_open = c.open.load();
  s.connections_refused = c.refused.load();
  s.frames_in = c.frames_in.load();
  s.frames_out = c.frames_out.load();
  s.protocol_errors = c.protocol_errors.load();
  s.timeouts = c.timeouts.load();
  s.backlog_overflows = c.backlog_overflows.load();
  return s;
}

}  // namespace palu::daemon
