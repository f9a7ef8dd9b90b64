// palud's Unix-socket server: connections, framing, handshake, peers, deadlines, backlogs.
//
// The server owns the listening socket and every connection; it decodes requests (binary frames
// or JSON lines, sdk/proto/framing.h), answers the handshake itself and hands every later
// request to a RequestHandler (daemon/request_handler.h) with the peer's identity and a
// ResponseSink for that connection. It knows nothing about models or sessions.
//
// Usage:
//   palu::daemon::ServerOptions options;
//   options.socket_path = "/run/user/1000/palu/palud.sock";
//   options.daemon_version = "0.1.0";
//   auto server = palu::daemon::Server::create(options, &engine);   // binds and listens
//   if (!server.is_ok()) { print(server.status().message()); return 1; }
//   (*server)->run();              // blocks until stop() (e.g. from a SIGTERM watcher)
//
// Per connection (docs/api.md): the first byte picks the encoding ('{' = JSON lines, else
// binary frames); the first request must be a Handshake; a malformed frame, line, protobuf or
// JSON gets one INVALID_ARGUMENT response (id 0 when unknown) and the connection is closed; a
// frame (or line) must complete within frame_timeout_ms once started; responses a client does
// not read are kept up to max_backlog_bytes, beyond which the connection is closed.
//
// Ownership: the handler is borrowed and must outlive the Server. Sinks given to the handler
// hold the connection weakly; after stop() every sink reports closed() and send() returns
// false. The handler must stop calling sinks before the Server is destroyed.
//
// Thread-safety: stop(), socket_path() and stats() may be called from any thread, including a
// handler callback. run() / start_in_thread() once. RequestHandler::handle and
// connection_closed are called on the I/O threads (io_threads of them; calls for one
// connection never overlap and come in order).
//
// Errors: create() returns a Status naming the path and what is wrong with it (directory not
// private, another palud listening, path too long, ...). Nothing thrown escapes the server:
// exceptions from the handler become an INTERNAL response to that request.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "backends/base/status.h"
#include "daemon/request_handler.h"

namespace palu::daemon {

struct ServerOptions {
  std::string socket_path;               // e.g. $XDG_RUNTIME_DIR/palu/palud.sock (< 108 bytes)
  uint32_t max_frame_bytes = 16u << 20;  // one frame's payload / one JSON line, both ways
  int frame_timeout_ms = 10000;          // a started frame/line must complete in this (slow-loris);
                                         // also the limit for one write to a client to progress
  int idle_timeout_ms = 0;               // 0 = none; else close a connection with nothing to do
                                         // (no partial frame, no request in flight) for this long
  size_t max_backlog_bytes = 8u << 20;   // unsent responses per connection; over it: close
  int max_connections = 256;             // further connections are closed at once (refused)
  std::string daemon_version;            // reported in the HandshakeReply
  int io_threads = 1;
  mode_t socket_mode = 0600;  // the socket file's mode (0666 to share it with other uids)
  // Optional: one line per notable event (protocol errors, timeouts, refusals). May be called
  // from any I/O thread concurrently; must not block.
  std::function<void(std::string_view line)> log;
};

struct ServerStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_open = 0;
  uint64_t connections_refused = 0;  // over max_connections
  uint64_t frames_in = 0;            // requests decoded (frames or lines)
  uint64_t frames_out = 0;           // responses written
  uint64_t protocol_errors = 0;      // malformed / over-limit / before-handshake / version mismatch
  uint64_t timeouts = 0;             // connections closed by a frame, idle or write deadline
  uint64_t backlog_overflows = 0;    // connections closed because the client stopped reading
};

class Server {
 public:
  // Prepares the socket directory (created 0700 when missing; refused when group/world-
  // writable or owned by another uid), replaces a stale socket file (nobody listening), binds,
  // sets the socket's mode to 0600 and listens. Connections queue until run().
  static Result<std::unique_ptr<Server>> create(ServerOptions options, RequestHandler* handler);

  ~Server();  // stop(), then waits for the I/O threads
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Serves on the calling thread (plus io_threads - 1 more) until stop().
  void run();
  // Serves on io_threads background threads; returns at once.
  void start_in_thread();
  // Closes the listening socket and every connection (each gets connection_closed), unlinks
  // the socket file. Thread-safe, idempotent. From outside the I/O threads it also waits
  // (bounded, ~2 s) until the connections are closed and the background threads have ended.
  void stop();

  std::string socket_path() const;
  ServerStats stats() const;

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace palu::daemon
