// Fuzz target: bytes from a client as the daemon reads them in JSON-lines mode. The first byte
// sets the read size (1..256 bytes); the rest goes through a LineDecoder (64 KiB limit) and
// every line through parse_json_request (every request type, protobuf's JSON mapping) and
// parse_json_response (the client side). A request that parses must survive the binary path:
// encode_frame → FrameDecoder → ParseFromString gives the same message.
#include <google/protobuf/util/message_differencer.h>

#include <google/protobuf/stubs/logging.h>

#include <cstdint>

#include "sdk/proto/framing.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/request_seeds.h"

namespace {

constexpr uint32_t kLimit = 64u << 10;

void check_line(const std::string& line) {
  using google::protobuf::util::MessageDifferencer;
  palu::api::v1::Request request;
  const palu::Status st = palu::api::parse_json_request(line, &request);
  if (st.is_ok()) {
    const std::string frame = palu::api::encode_frame(request);
    PALU_FUZZ_CHECK(!frame.empty(), "a parsed request frames");
    palu::api::FrameDecoder decoder(1u << 30);
    PALU_FUZZ_CHECK(decoder.feed(frame).is_ok(), "its frame decodes");
    auto f = decoder.next();
    PALU_FUZZ_CHECK(f.has_value(), "one frame");
    palu::api::v1::Request again;
    PALU_FUZZ_CHECK(again.ParseFromString(f->payload), "its payload parses");
    PALU_FUZZ_CHECK(MessageDifferencer::Equals(request, again), "JSON → binary → parse keeps the request");
    (void)palu::api::request_to_json_line(request);
  } else {
    PALU_FUZZ_CHECK(!st.message().empty() && palu::api::is_valid_utf8(st.message()), "printable error");
  }
  palu::api::v1::Response response;
  if (palu::api::parse_json_response(line, &response).is_ok()) {
    (void)palu::api::response_to_json_line(response);
  }
}

}  // namespace

// PALU_FUZZ_WRITE_SEED=DIR: one seed per request type (read size byte 0x0f, then the JSON line
// as a client writes it), and a whole session in camelCase names with CRLF line ends.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in a string field is a parse failure the targets expect; keep the log quiet.
  google::protobuf::SetLogHandler(nullptr);
  const char* dir = std::getenv("PALU_FUZZ_WRITE_SEED");
  if (dir == nullptr) return 0;
  for (const auto& [name, request] : palu::fuzz::every_request_type()) {
    palu::fuzz::write_seed_file(std::string(dir) + "/" + name, "\x0f" + palu::api::request_to_json_line(request));
  }
  palu::fuzz::write_seed_file(
      std::string(dir) + "/camel_case_session",
      "\x40{\"id\":\"1\",\"handshake\":{\"protocolVersion\":1,\"clientName\":\"sh\"}}\r\n\n"
      "{\"id\":2,\"createSession\":{\"name\":\"a\",\"maxContext\":64}}\r\n"
      "{\"id\":3,\"generate\":{\"session\":{\"name\":\"a\"},\"promptIds\":[1,2],\"maxTokens\":4,"
      "\"sampling\":{\"temperature\":0.5,\"seed\":\"18446744073709551615\",\"hasSeed\":true}}}\n");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = (size_t)data[0] + 1;
  std::string_view rest = palu::fuzz::as_view(data + 1, size - 1);
  palu::api::LineDecoder decoder(kLimit);
  while (!rest.empty()) {
    const std::string_view piece = rest.substr(0, chunk);
    rest.remove_prefix(piece.size());
    const palu::Status st = decoder.feed(piece);
    while (auto line = decoder.next()) {
      PALU_FUZZ_CHECK(line->size() <= kLimit, "lines respect the limit");
      check_line(*line);
    }
    if (!st.is_ok()) break;
    PALU_FUZZ_CHECK(decoder.partial_bytes() <= kLimit, "bounded buffering");
  }
  return 0;
}
