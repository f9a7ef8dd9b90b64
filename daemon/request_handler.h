// The seam between the socket server (daemon/server.h: connections, framing, peers) and the
// engine (daemon/engine.h: models, sessions, scheduling). The server decodes requests and
// hands each to a RequestHandler together with the peer's identity and a ResponseSink for
// that connection; the handler answers through the sink, from any thread, any number of
// times for a stream (the last response with final = true).
//
// Thread-safety: ResponseSink::send and closed() may be called from any thread. handle() is
// called on the server's I/O threads and must not block (the engine queues the work).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>

#include "sdk/proto/palu.pb.h"

namespace palu::daemon {

namespace api = palu::api::v1;

// Who is on the other end of a connection (SO_PEERCRED).
struct PeerInfo {
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  uint64_t connection_id = 0;  // unique per daemon run
};

class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  // Queues a response for the connection. Returns false (and drops it) when the connection is
  // closed or its unsent backlog exceeds the limit — the client stopped reading; the server
  // then closes the connection and the handler should cancel what it streams.
  virtual bool send(const api::Response& response) = 0;
  // True once the connection is closed (by the peer, a deadline, or an overflowing backlog).
  virtual bool closed() const = 0;
};

class RequestHandler {
 public:
  virtual ~RequestHandler() = default;
  // A decoded, handshaken request. Never blocks.
  virtual void handle(const api::Request& request, const PeerInfo& peer,
                      std::shared_ptr<ResponseSink> sink) = 0;
  // The connection closed: cancel its streams (generations) and forget its sink.
  virtual void connection_closed(const PeerInfo& peer) = 0;
};

// Response helpers.
inline api::Response make_response(uint64_t id, api::Code code, const std::string& message) {
  api::Response r;
  r.set_id(id);
  r.set_code(code);
  r.set_message(message);
  r.set_final(true);
  return r;
}

}  // namespace palu::daemon
