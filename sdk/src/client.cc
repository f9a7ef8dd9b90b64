#include "sdk/src/client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>

namespace palu::sdk {
namespace {

using Clock = std::chrono::steady_clock;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : std::string();
}

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : (int)left;
}

}  // namespace

std::string default_socket_path() {
  if (std::string s = env("PALU_SOCKET"); !s.empty()) return s;
  std::string runtime = env("XDG_RUNTIME_DIR");
  if (runtime.empty()) runtime = "/tmp/palu-" + std::to_string(::getuid());
  return runtime + "/palu/palud.sock";
}

Failure from_response(const v1::Response& response) {
  if (response.code() == v1::OK) return {};
  Failure f;
  f.status = -static_cast<int>(response.code());
  f.message = response.message().empty() ? v1::Code_Name(response.code()) : response.message();
  return f;
}

Connection::~Connection() { close_fd(); }

void Connection::close_fd() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Failure Connection::lost(const std::string& what) {
  close_fd();
  return {kClosed, "the connection to palud at " + socket_path_ + " was lost: " + what};
}

Failure Connection::open(const std::string& socket_path, const std::string& client_name, int connect_timeout_ms,
                         uint32_t protocol_version) {
  socket_path_ = socket_path;
  sockaddr_un addr{};
  if (socket_path.empty() || socket_path.size() >= sizeof addr.sun_path) {
    return {kBadArgument, "socket path '" + socket_path + "' is " + std::to_string(socket_path.size()) +
                              " bytes; a Unix socket path has 1 to " + std::to_string(sizeof addr.sun_path - 1)};
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return {kConnect, std::string("cannot create a Unix socket: ") + std::strerror(errno)};
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    close_fd();
    std::string hint;
    if (e == ENOENT || e == ECONNREFUSED) hint = " (is palud running? start it with `palud`, or pass the socket it uses)";
    if (e == EACCES) hint = " (the socket belongs to another user, or its directory is not yours)";
    return {kConnect, "cannot connect to palud at " + socket_path + ": " + std::strerror(e) + hint};
  }
  // Handshake, within the connect timeout.
  v1::Request hello;
  hello.set_id(next_id_++);
  hello.mutable_handshake()->set_protocol_version(protocol_version);
  hello.mutable_handshake()->set_client_name(client_name);
  if (Failure f = write_all(palu::api::encode_frame(hello, protocol_version)); f.status != kOk) return f;
  const int saved_timeout = request_timeout_ms_;
  request_timeout_ms_ = connect_timeout_ms;
  v1::Response reply;
  Failure f = read_for(hello.id(), &reply);
  request_timeout_ms_ = saved_timeout;
  if (f.status == kTimeout) {
    close_fd();
    return {kTimeout, "palud at " + socket_path + " did not answer the handshake within " +
                          std::to_string(connect_timeout_ms) + " ms"};
  }
  if (f.status != kOk) return f;
  if (reply.has_handshake()) {
    daemon_version_ = reply.handshake().daemon_version();
    daemon_protocol_ = reply.handshake().protocol_version();
  }
  if (Failure r = from_response(reply); r.status != kOk) {
    close_fd();
    return r;
  }
  if (daemon_protocol_ != protocol_version) {
    close_fd();
    return {-9, "protocol version mismatch: this client speaks version " + std::to_string(protocol_version) +
                    ", palud " + daemon_version_ + " speaks version " + std::to_string(daemon_protocol_)};
  }
  if (reply.handshake().max_frame_bytes() > 0) decoder_ = palu::api::FrameDecoder(reply.handshake().max_frame_bytes());
  return {};
}

Failure Connection::write_all(const std::string& bytes) {
  if (fd_ < 0) return {kClosed, "not connected to palud (the connection was lost earlier; open a new client)"};
  size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return lost(std::string("send: ") + std::strerror(errno));
    off += static_cast<size_t>(n);
  }
  return {};
}

Failure Connection::send(v1::Request& request, uint64_t* id) {
  request.set_id(next_id_++);
  if (id) *id = request.id();
  const std::string frame = palu::api::encode_frame(request);
  if (frame.empty()) return {kBadArgument, "the request is too large to send (over 4 GiB)"};
  return write_all(frame);
}

Failure Connection::read_for(uint64_t id, v1::Response* response, bool interruptible, bool* interrupted) {
  const bool bounded = request_timeout_ms_ > 0;
  auto deadline = Clock::now() + std::chrono::milliseconds(bounded ? request_timeout_ms_ : 0);
  while (true) {
    while (auto frame = decoder_.next()) {
      if (!response->ParseFromString(frame->payload)) {
        close_fd();
        return {kProtocol, "palud sent a response that is not a valid palu.api.v1.Response (" +
                               std::to_string(frame->payload.size()) + " bytes)"};
      }
      if (response->id() == id || (response->id() == 0 && response->code() != v1::OK)) return {};
    }
    if (!decoder_.status().is_ok()) {
      close_fd();
      return {kProtocol, "palud sent bytes the SDK cannot read: " + decoder_.status().message()};
    }
    if (fd_ < 0) return {kClosed, "not connected to palud (the connection was lost earlier; open a new client)"};
    if (interruptible && interrupted && !*interrupted && interrupt_.load(std::memory_order_relaxed)) {
      *interrupted = true;
      return {};  // the caller sends the cancel and reads on
    }
    int wait = interruptible ? 50 : -1;
    if (bounded) {
      const int left = remaining_ms(deadline);
      if (left == 0) return {kTimeout, "no answer from palud within " + std::to_string(request_timeout_ms_) + " ms"};
      wait = wait < 0 ? left : std::min(wait, left);
    }
    pollfd p{fd_, POLLIN, 0};
    const int r = ::poll(&p, 1, wait);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return lost(std::string("poll: ") + std::strerror(errno));
    if (r == 0) continue;
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return lost("palud closed it (stopped or restarted?)");
    if (n < 0) return lost(std::string("recv: ") + std::strerror(errno));
    (void)decoder_.feed(std::string_view(buf, static_cast<size_t>(n)));
    if (bounded) deadline = Clock::now() + std::chrono::milliseconds(request_timeout_ms_);
  }
}

Failure Connection::call(v1::Request& request, v1::Response* response) {
  uint64_t id = 0;
  if (Failure f = send(request, &id); f.status != kOk) return f;
  while (true) {
    if (Failure f = read_for(id, response); f.status != kOk) return f;
    if (response->final() || response->code() != v1::OK) break;
  }
  return from_response(*response);
}

}  // namespace palu::sdk
