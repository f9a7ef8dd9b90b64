// The palud wire framing (docs/api.md): binary frames and JSON lines, as bytes.
//
// Both ends use this file: the daemon (daemon/server.cc) and the C SDK client. It knows
// nothing about sockets; it turns messages into bytes and bytes into payloads.
//
//   binary frame   offset  size  field
//                  0       4     magic "PALU" (0x50 0x41 0x4C 0x55)
//                  4       4     protocol version, uint32 little-endian (kProtocolVersion)
//                  8       4     payload length N, uint32 little-endian, N <= the frame limit
//                  12      N     one serialized palu.api.v1.Request or Response
//
//   JSON lines     one Request / Response per line in protobuf's JSON mapping, '\n'-terminated.
//
// Usage (reading side):
//   palu::api::FrameDecoder decoder(max_frame_bytes);
//   palu::Status s = decoder.feed(std::string_view(buf, n));   // bytes as they arrive
//   while (auto frame = decoder.next()) handle(frame->payload);  // frames before a defect
//   if (!s.is_ok()) reply_error_and_close(s.message());
//
// Limits: a frame's declared length and a line's length are checked against the decoder's
// limit before any memory is reserved for them; a decoder never buffers more than one
// incomplete frame (or line) plus the complete ones not yet pulled with next().
//
// Errors: values (palu::Status, code kInvalidArgument) whose message names the defect (the
// bytes seen for a bad magic, the length and the limit, the protobuf JSON parser's complaint).
// A decoder that reported an error stays failed: every later feed() returns the same status.
// Messages are printable ASCII (input bytes are escaped), safe to put in a Response.
//
// Thread-safety: free functions are thread-safe; a decoder is one connection's, not shared.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

#include "backends/base/status.h"
#include "sdk/proto/palu.pb.h"

namespace palu::api {

// The protocol this build speaks (the handshake's and every frame header's version).
inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr char kFrameMagic[4] = {'P', 'A', 'L', 'U'};
inline constexpr size_t kFrameHeaderBytes = 12;
// The daemon's default limit for one frame's payload or one JSON line.
inline constexpr uint32_t kDefaultMaxFrameBytes = 16u << 20;

struct FrameHeader {
  uint32_t protocol_version = 0;
  uint32_t payload_bytes = 0;
};

// The 12 header bytes for a payload of `payload_bytes`.
std::string encode_frame_header(uint32_t payload_bytes,
                                uint32_t protocol_version = kProtocolVersion);

// Header + the serialized message. A message whose serialization does not fit in a uint32
// length (>= 4 GiB) cannot be framed: the result is then empty (callers check limits first).
std::string encode_frame(const google::protobuf::Message& message,
                         uint32_t protocol_version = kProtocolVersion);

// Checks the first kFrameHeaderBytes of `bytes` (which must hold at least that many): the
// magic, and payload length <= max_frame_bytes. The version is reported, not checked (the
// handshake decides what to do with a different one).
Result<FrameHeader> parse_frame_header(std::string_view bytes, uint32_t max_frame_bytes);

// Printable rendering of untrusted bytes for error messages: printable ASCII as is, the rest
// as \xHH, at most `max_bytes` input bytes then "...".
std::string escape_bytes(std::string_view bytes, size_t max_bytes = 16);

// True when `text` is well-formed UTF-8 (what proto3 string fields must hold: a Response whose
// message is not would fail to parse at the client).
bool is_valid_utf8(std::string_view text);

// Incremental decoder for binary frames.
class FrameDecoder {
 public:
  struct Frame {
    uint32_t protocol_version = 0;  // from the header
    std::string payload;            // the serialized message
  };

  explicit FrameDecoder(uint32_t max_frame_bytes = kDefaultMaxFrameBytes);

  // Appends bytes and splits off every complete frame. The magic is checked as soon as its
  // first bytes arrive, the length as soon as the header is complete. Returns the first
  // defect (then sticky); frames completed before the defect remain available from next().
  Status feed(std::string_view bytes);
  // The next complete frame, oldest first.
  std::optional<Frame> next();

  // Bytes of an incomplete frame are buffered (a frame has started and not ended).
  bool in_frame() const { return !partial_.empty(); }
  // Bytes of the incomplete frame buffered so far.
  size_t partial_bytes() const { return partial_.size(); }
  // Bytes the incomplete frame needs in total (header + payload), or kFrameHeaderBytes while
  // the header itself is incomplete.
  size_t partial_needed_bytes() const;
  const Status& status() const { return status_; }
  uint32_t max_frame_bytes() const { return max_frame_bytes_; }

 private:
  uint32_t max_frame_bytes_;
  Status status_;
  std::string partial_;                // the incomplete frame's bytes (header included)
  std::optional<FrameHeader> header_;  // parsed once partial_ holds the whole header
  std::deque<Frame> ready_;
};

// Incremental decoder for JSON lines ('\n'-terminated; a trailing '\r' is dropped; blank lines
// are skipped). A line longer than max_line_bytes is an error as soon as that many bytes have
// arrived without a newline.
class LineDecoder {
 public:
  explicit LineDecoder(uint32_t max_line_bytes = kDefaultMaxFrameBytes);

  Status feed(std::string_view bytes);
  std::optional<std::string> next();

  bool in_line() const { return !partial_.empty(); }
  size_t partial_bytes() const { return partial_.size(); }
  const Status& status() const { return status_; }
  uint32_t max_line_bytes() const { return max_line_bytes_; }

 private:
  uint32_t max_line_bytes_;
  Status status_;
  std::string partial_;
  std::deque<std::string> ready_;
};

// One JSON line (without or with its '\n') → Request, protobuf's JSON mapping (field names
// in proto or lowerCamel form; unknown fields refused; 64-bit ints as numbers or strings).
Status parse_json_request(std::string_view line, v1::Request* request);
// The same for responses (the client side).
Status parse_json_response(std::string_view line, v1::Response* response);

// One line, '\n'-terminated: proto field names, every primitive field printed (so "code":"OK"
// and "final":true always appear), enums by name, 64-bit ints as strings (the JSON mapping).
std::string response_to_json_line(const v1::Response& response);
// The same for requests (the client side; tests).
std::string request_to_json_line(const v1::Request& request);

}  // namespace palu::api
