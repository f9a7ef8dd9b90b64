// Fuzz target: bytes from a client as the daemon reads them in binary mode. The first byte sets
// the size of the reads (1..256 bytes, so frames split at every point), the rest goes through a
// FrameDecoder (64 KiB limit) feed by feed, as daemon/server.cc does. Every complete frame's
// payload is parsed as a Request (every request type) and as a Response (the client side).
// Properties: a decoder never holds more than one incomplete frame of at most the limit; a
// request that parses converts to a JSON line and back to the same message; a response that
// parses renders as one line that parses back.
#include <google/protobuf/util/message_differencer.h>

#include <google/protobuf/stubs/logging.h>

#include <cstdint>

#include "sdk/proto/framing.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/request_seeds.h"

namespace {

constexpr uint32_t kLimit = 64u << 10;

void check_payload(const std::string& payload) {
  using google::protobuf::util::MessageDifferencer;
  palu::api::v1::Request request;
  if (request.ParseFromString(payload)) {
    const std::string line = palu::api::request_to_json_line(request);
    PALU_FUZZ_CHECK(!line.empty() && line.back() == '\n' && line.find('\n') == line.size() - 1, "one line");
    palu::api::v1::Request again;
    const palu::Status st = palu::api::parse_json_request(line, &again);
    if (!st.is_ok()) {
      std::fprintf(stderr, "line: %s\nerror: %s\n", line.c_str(), st.message().c_str());
    }
    PALU_FUZZ_CHECK(st.is_ok(), "a request's own JSON line parses");
    // Unknown fields do not survive JSON; compare what both sides know.
    request.DiscardUnknownFields();
    PALU_FUZZ_CHECK(MessageDifferencer::Equals(request, again), "binary → JSON → binary keeps the request");
  }
  palu::api::v1::Response response;
  if (response.ParseFromString(payload)) {
    const std::string line = palu::api::response_to_json_line(response);
    PALU_FUZZ_CHECK(!line.empty() && line.back() == '\n' && line.find('\n') == line.size() - 1, "one line");
    palu::api::v1::Response again;
    PALU_FUZZ_CHECK(palu::api::parse_json_response(line, &again).is_ok(), "a response's own JSON line parses");
  }
}

}  // namespace

// PALU_FUZZ_WRITE_SEED=DIR: one seed per request type (read size byte 0x0f, then the frame), and
// one with a handshake followed by three requests in a single read.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in a string field is a parse failure the targets expect; keep the log quiet.
  google::protobuf::SetLogHandler(nullptr);
  const char* dir = std::getenv("PALU_FUZZ_WRITE_SEED");
  if (dir == nullptr) return 0;
  std::string session("\xff");
  for (const auto& [name, request] : palu::fuzz::every_request_type()) {
    const std::string frame = palu::api::encode_frame(request);
    palu::fuzz::write_seed_file(std::string(dir) + "/" + name, "\x0f" + frame);
    if (name == "handshake" || name == "create_session" || name == "generate" || name == "close") session += frame;
  }
  palu::fuzz::write_seed_file(std::string(dir) + "/session_in_one_read", session);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = (size_t)data[0] + 1;
  std::string_view rest = palu::fuzz::as_view(data + 1, size - 1);
  palu::api::FrameDecoder decoder(kLimit);
  while (!rest.empty()) {
    const std::string_view piece = rest.substr(0, chunk);
    rest.remove_prefix(piece.size());
    const palu::Status st = decoder.feed(piece);
    while (auto frame = decoder.next()) {
      PALU_FUZZ_CHECK(frame->payload.size() <= kLimit, "frames respect the limit");
      check_payload(frame->payload);
    }
    if (!st.is_ok()) {
      PALU_FUZZ_CHECK(!st.message().empty() && palu::api::is_valid_utf8(st.message()), "printable error");
      PALU_FUZZ_CHECK(!decoder.feed("PALU").is_ok(), "errors are sticky");
      break;
    }
    PALU_FUZZ_CHECK(decoder.partial_bytes() <= palu::api::kFrameHeaderBytes + kLimit, "bounded buffering");
  }
  return 0;
}
