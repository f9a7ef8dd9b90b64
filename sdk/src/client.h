// The C SDK's connection: a blocking binary-frame client of palud with a deadline on every
// wait (sdk/include/palu/palu.h is the API; sdk/src/palu.cc turns its calls into requests).
//
// One thread uses a Connection at a time, except interrupt(), which any thread may call.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "sdk/proto/framing.h"
#include "sdk/proto/palu.pb.h"

namespace palu::sdk {

namespace v1 = palu::api::v1;

// The SDK's own status codes (palu.h's PALU_ECONNECT …) and palud's, negated.
inline constexpr int kOk = 0;
inline constexpr int kConnect = -100;
inline constexpr int kClosed = -101;
inline constexpr int kTimeout = -102;
inline constexpr int kNoMemory = -103;
inline constexpr int kProtocol = -104;
inline constexpr int kBadArgument = -105;
inline constexpr int kCancelled = -7;
inline constexpr int kPrecondition = -6;

// The socket palud listens on by default: $PALU_SOCKET, $XDG_RUNTIME_DIR/palu/palud.sock,
// /tmp/palu-<uid>/palu/palud.sock (daemon/config.cc's rule).
std::string default_socket_path();

// A failure: the status and the message for palu_client_last_error().
struct Failure {
  int status = kOk;
  std::string message;
};

class Connection {
 public:
  Connection() = default;
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Connects and shakes hands within connect_timeout_ms.
  Failure open(const std::string& socket_path, const std::string& client_name, int connect_timeout_ms,
               uint32_t protocol_version);
  void set_request_timeout_ms(int ms) { request_timeout_ms_ = ms; }

  // Sends a request (its id is assigned here and returned).
  Failure send(v1::Request& request, uint64_t* id);
  // The next response for `id` (others are dropped: answers to cancels, leftovers). Waits at
  // most the request timeout; polls the interrupt flag every 50 ms when `interruptible`
  // (then *interrupted is set as soon as it is seen, and the wait goes on).
  Failure read_for(uint64_t id, v1::Response* response, bool interruptible = false, bool* interrupted = nullptr);
  // send + read_for the final response; a response whose code is not OK becomes the failure.
  Failure call(v1::Request& request, v1::Response* response);

  void interrupt() { interrupt_.store(true, std::memory_order_relaxed); }
  void clear_interrupt() { interrupt_.store(false, std::memory_order_relaxed); }

  bool broken() const { return fd_ < 0; }
  const std::string& socket_path() const { return socket_path_; }
  const std::string& daemon_version() const { return daemon_version_; }
  uint32_t daemon_protocol() const { return daemon_protocol_; }

 private:
  Failure write_all(const std::string& bytes);
  Failure lost(const std::string& what);
  void close_fd();

  int fd_ = -1;
  std::string socket_path_;
  std::string daemon_version_;
  uint32_t daemon_protocol_ = 0;
  uint64_t next_id_ = 1;
  int request_timeout_ms_ = 0;
  palu::api::FrameDecoder decoder_;
  std::atomic<bool> interrupt_{false};
};

// palud's Code → the C status (negated), with the message.
Failure from_response(const v1::Response& response);

}  // namespace palu::sdk
