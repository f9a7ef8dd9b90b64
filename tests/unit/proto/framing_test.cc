// sdk/proto/framing: binary frames and JSON lines, including a table of corrupt inputs.
#include "sdk/proto/framing.h"

#include <gtest/gtest.h>

#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // the counting operator new below

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

// The largest single allocation made while g_track_allocations is set: proves that a header
// announcing 4 GiB makes the decoder allocate nothing of that size.
namespace {
std::atomic<bool> g_track_allocations{false};
std::atomic<size_t> g_largest_allocation{0};
}  // namespace

void* operator new(size_t n) {
  if (g_track_allocations.load(std::memory_order_relaxed)) {
    size_t prev = g_largest_allocation.load(std::memory_order_relaxed);
    while (n > prev && !g_largest_allocation.compare_exchange_weak(prev, n)) {
    }
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, size_t) noexcept {
  std::free(p);
}

namespace palu::api {
namespace {

v1::Request handshake_request(uint64_t id = 1) {
  v1::Request r;
  r.set_id(id);
  r.mutable_handshake()->set_protocol_version(kProtocolVersion);
  r.mutable_handshake()->set_client_name("framing-test");
  return r;
}

v1::Request generate_request(uint64_t id, const std::string& prompt) {
  v1::Request r;
  r.set_id(id);
  r.mutable_generate()->mutable_session()->set_name("s1");
  r.mutable_generate()->set_prompt(prompt);
  r.mutable_generate()->set_max_tokens(17);
  r.mutable_generate()->mutable_sampling()->set_temperature(0.5f);
  return r;
}

std::string header(uint32_t version, uint32_t length, const char* magic = "PALU") {
  std::string h(magic, 4);
  for (uint32_t v : {version, length}) {
    for (int i = 0; i < 4; ++i) h.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  return h;
}

std::vector<FrameDecoder::Frame> drain(FrameDecoder& d) {
  std::vector<FrameDecoder::Frame> out;
  while (auto f = d.next()) out.push_back(std::move(*f));
  return out;
}

std::vector<std::string> drain(LineDecoder& d) {
  std::vector<std::string> out;
  while (auto l = d.next()) out.push_back(std::move(*l));
  return out;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// ---------------------------------------------------------------------------------------------
TEST(FramingTest, HeaderLayoutIsMagicVersionLengthLittleEndian) {
  const v1::Request r = handshake_request(7);
  const std::string frame = encode_frame(r);
  ASSERT_EQ(frame.size(), kFrameHeaderBytes + r.ByteSizeLong());
  EXPECT_EQ(frame.substr(0, 4), "PALU");
  EXPECT_EQ(frame.substr(0, 12), header(kProtocolVersion, static_cast<uint32_t>(r.ByteSizeLong())));
  EXPECT_EQ(encode_frame_header(0x01020304u, 0x0a0b0c0du),
            std::string("PALU\x0d\x0c\x0b\x0a\x04\x03\x02\x01", 12));
}

TEST(FramingTest, RoundTripOneFrame) {
  const v1::Request r = generate_request(42, "Once upon a time");
  FrameDecoder d(1024);
  ASSERT_TRUE(d.feed(encode_frame(r)).is_ok());
  auto frames = drain(d);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].protocol_version, kProtocolVersion);
  v1::Request back;
  ASSERT_TRUE(back.ParseFromString(frames[0].payload));
  EXPECT_EQ(back.SerializeAsString(), r.SerializeAsString());
  EXPECT_FALSE(d.in_frame());
}

TEST(FramingTest, RoundTripManyFramesInOneFeedAndByteByByte) {
  std::string stream;
  std::vector<v1::Request> sent;
  for (int i = 0; i < 20; ++i) {
    sent.push_back(generate_request(i, std::string(static_cast<size_t>(i) * 13, 'x')));
    stream += encode_frame(sent.back());
  }
  v1::Response empty;  // a zero-length payload is a valid frame
  stream += encode_frame(empty);

  FrameDecoder whole(4096);
  ASSERT_TRUE(whole.feed(stream).is_ok());
  auto frames = drain(whole);
  ASSERT_EQ(frames.size(), sent.size() + 1);
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(frames[i].payload, sent[i].SerializeAsString()) << i;
  }
  EXPECT_TRUE(frames.back().payload.empty());

  FrameDecoder bytewise(4096);
  size_t got = 0;
  for (char c : stream) {
    ASSERT_TRUE(bytewise.feed(std::string_view(&c, 1)).is_ok());
    got += drain(bytewise).size();
  }
  EXPECT_EQ(got, sent.size() + 1);
  EXPECT_FALSE(bytewise.in_frame());
}

TEST(FramingTest, EveryTruncationPointWaitsThenCompletes) {
  const std::string frame = encode_frame(generate_request(3, "truncate me"));
  for (size_t cut = 0; cut < frame.size(); ++cut) {
    FrameDecoder d(1024);
    ASSERT_TRUE(d.feed(std::string_view(frame).substr(0, cut)).is_ok()) << cut;
    EXPECT_FALSE(d.next().has_value()) << "a frame cut at byte " << cut << " was returned";
    EXPECT_EQ(d.in_frame(), cut > 0) << cut;
    EXPECT_EQ(d.partial_bytes(), cut);
    EXPECT_EQ(d.partial_needed_bytes(), cut < kFrameHeaderBytes ? kFrameHeaderBytes : frame.size());
    ASSERT_TRUE(d.feed(std::string_view(frame).substr(cut)).is_ok()) << cut;
    auto frames = drain(d);
    ASSERT_EQ(frames.size(), 1u) << cut;
    EXPECT_EQ(frames[0].payload, frame.substr(kFrameHeaderBytes));
  }
}

TEST(FramingTest, EverySplitPointOfTwoFrames) {
  const std::string a = encode_frame(generate_request(1, "first"));
  const std::string b = encode_frame(handshake_request(2));
  const std::string both = a + b;
  for (size_t cut = 0; cut <= both.size(); ++cut) {
    FrameDecoder d(1024);
    ASSERT_TRUE(d.feed(std::string_view(both).substr(0, cut)).is_ok());
    ASSERT_TRUE(d.feed(std::string_view(both).substr(cut)).is_ok());
    auto frames = drain(d);
    ASSERT_EQ(frames.size(), 2u) << cut;
    EXPECT_EQ(frames[0].payload, a.substr(12));
    EXPECT_EQ(frames[1].payload, b.substr(12));
  }
}

TEST(FramingTest, BadMagicIsReportedOnTheFirstByteWithTheBytesSeen) {
  FrameDecoder d;
  Status s = d.feed("G");
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(s.message(), "bad frame magic")) << s.message();
  EXPECT_TRUE(contains(s.message(), "got \"G\"")) << s.message();

  FrameDecoder http;
  s = http.feed("GET / HTTP/1.1\r\n");
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "got \"GET / HT...\"")) << s.message();

  FrameDecoder late;  // "PAL" is fine so far; the 4th byte is wrong
  ASSERT_TRUE(late.feed("PAL").is_ok());
  s = late.feed(std::string("X\x01\x00\x00\x00", 5));
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "PALX\\x01")) << s.message();
}

TEST(FramingTest, ErrorsAreStickyAndReleaseTheBuffer) {
  FrameDecoder d(100);
  ASSERT_FALSE(d.feed(header(1, 101)).is_ok());
  EXPECT_FALSE(d.in_frame());
  const Status again = d.feed(encode_frame(handshake_request()));
  ASSERT_FALSE(again.is_ok());
  EXPECT_EQ(again.message(), d.status().message());
  EXPECT_FALSE(d.next().has_value());
}

TEST(FramingTest, FramesBeforeADefectAreStillDelivered) {
  FrameDecoder d(1024);
  const std::string good = encode_frame(handshake_request(5));
  const Status s = d.feed(good + "NOPE");
  ASSERT_FALSE(s.is_ok());
  auto frames = drain(d);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].payload, good.substr(12));
}

TEST(FramingTest, LengthAtTheLimitIsAcceptedOneOverIsRefused) {
  FrameDecoder at(64);
  ASSERT_TRUE(at.feed(header(1, 64) + std::string(64, '\0')).is_ok());
  EXPECT_EQ(drain(at).size(), 1u);

  FrameDecoder over(64);
  const Status s = over.feed(header(1, 65));
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "frame payload length 65 bytes is over the limit of 64 bytes"))
      << s.message();
}

TEST(FramingTest, FourGiBLengthIsRefusedWithoutAllocating) {
  FrameDecoder d;  // 16 MiB default limit
  g_largest_allocation = 0;
  g_track_allocations = true;
  const Status s = d.feed(header(1, 0xffffffffu) + "payload follows...");
  g_track_allocations = false;
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "4294967295")) << s.message();
  EXPECT_TRUE(contains(s.message(), std::to_string(kDefaultMaxFrameBytes))) << s.message();
  EXPECT_LT(g_largest_allocation.load(), 4096u) << "the decoder allocated for an over-limit length";

  // A large but allowed length reserves only after the check, and never more than the limit.
  FrameDecoder big(1u << 20);
  g_largest_allocation = 0;
  g_track_allocations = true;
  ASSERT_TRUE(big.feed(header(1, 1u << 20)).is_ok());
  g_track_allocations = false;
  EXPECT_LE(g_largest_allocation.load(), (1u << 20) + kFrameHeaderBytes + 64);
}

TEST(FramingTest, HeaderVersionIsReportedNotChecked) {
  FrameDecoder d;
  ASSERT_TRUE(d.feed(encode_frame(handshake_request(), 77)).is_ok());
  auto frames = drain(d);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].protocol_version, 77u);
  const auto h = parse_frame_header(encode_frame_header(5, 3), 10);
  ASSERT_TRUE(h.is_ok());
  EXPECT_EQ(h->protocol_version, 3u);
  EXPECT_EQ(h->payload_bytes, 5u);
  EXPECT_FALSE(parse_frame_header("PALU", 10).is_ok());  // shorter than a header
}

// Payloads that frame correctly but are not a Request.
TEST(FramingTest, GarbagePayloadsDoNotParseAsARequest) {
  struct Case {
    const char* name;
    std::string payload;
  };
  const std::vector<Case> cases = {
      {"varint that never ends", std::string(11, '\xff')},
      {"length-delimited field longer than the payload", std::string("\x52\x05"
                                                                     "ab",
                                                                     4)},
      {"wire type 7", std::string("\x0f", 1)},
      {"field number 0", std::string("\x00\x01", 2)},
      {"string field that is not UTF-8",
       std::string("\x52\x04\x12\x02\xc3\x28", 6)},  // handshake.client_name = C3 28
      {"end-group without start", std::string("\x0c", 1)},
  };
  for (const auto& c : cases) {
    FrameDecoder d;
    ASSERT_TRUE(d.feed(header(1, static_cast<uint32_t>(c.payload.size())) + c.payload).is_ok())
        << c.name;
    auto frames = drain(d);
    ASSERT_EQ(frames.size(), 1u) << c.name;
    v1::Request r;
    EXPECT_FALSE(r.ParseFromString(frames[0].payload)) << c.name;
  }
}

// The table of handcrafted corrupt streams, each naming its defect.
TEST(FramingTest, CorruptFrameTable) {
  struct Case {
    const char* name;
    std::string bytes;
    uint32_t limit;
    const char* error;  // a part of the expected message; nullptr: no error, waits for more
  };
  const std::string good = encode_frame(handshake_request());
  const std::vector<Case> cases = {
      {"empty input", "", 1024, nullptr},
      {"lower-case magic", header(1, 0, "palu"), 1024, "got \"palu"},
      {"magic off by one byte", "XPALU" + header(1, 0).substr(4), 1024, "got \"XPALU"},
      {"JSON sent to the binary decoder", "{\"id\":1}", 1024, "JSON-lines clients"},
      {"HTTP request", "GET / HTTP/1.0\r\n\r\n", 1024, "GET / HT"},
      {"NUL bytes", std::string(12, '\0'), 1024, "\\x00\\x00"},
      {"length 2^32-1", header(1, 0xffffffffu), 1024, "4294967295 bytes is over the limit"},
      {"length 2^31", header(1, 0x80000000u), 1024, "2147483648 bytes is over the limit"},
      {"length one over a small limit", header(1, 17), 16, "17 bytes is over the limit of 16"},
      {"zero limit refuses any payload", header(1, 1), 0, "over the limit of 0 bytes"},
      {"header only, payload missing", header(1, 10), 1024, nullptr},
      {"truncated header", good.substr(0, 7), 1024, nullptr},
      {"truncated payload", good.substr(0, good.size() - 1), 1024, nullptr},
      {"good frame then bad magic", good + "PALX", 1024, "got \"PALX"},
      {"good frame then over-limit", good + header(1, 5000), 1024, "5000 bytes is over the limit"},
  };
  for (const auto& c : cases) {
    FrameDecoder d(c.limit);
    const Status s = d.feed(c.bytes);
    if (c.error == nullptr) {
      EXPECT_TRUE(s.is_ok()) << c.name << ": " << s.message();
    } else {
      ASSERT_FALSE(s.is_ok()) << c.name;
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.name;
      EXPECT_TRUE(contains(s.message(), c.error)) << c.name << ": " << s.message();
      EXPECT_FALSE(d.in_frame()) << c.name;
    }
  }
}

TEST(FramingTest, EscapeBytesIsPrintable) {
  EXPECT_EQ(escape_bytes("ab\"\\\x01\xff", 16), "ab\\\"\\\\\\x01\\xff");
  EXPECT_EQ(escape_bytes("abcdefghij", 4), "abcd...");
}

TEST(FramingTest, Utf8Validation) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("r\xc3\xa9sum\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xc3\x28"));          // bad continuation
  EXPECT_FALSE(is_valid_utf8("\xc3"));              // truncated
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xff"));
}

// ---------------------------------------------------------------------------------------------
TEST(LineDecoderTest, SplitsLinesAcrossFeedsDropsCrAndSkipsBlankLines) {
  LineDecoder d(100);
  ASSERT_TRUE(d.feed("{\"a\":1}\r\n\n   \n{\"b\"").is_ok());
  EXPECT_TRUE(d.in_line());
  ASSERT_TRUE(d.feed(":2}").is_ok());
  ASSERT_TRUE(d.feed("\n").is_ok());
  auto lines = drain(d);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "{\"a\":1}");
  EXPECT_EQ(lines[1], "{\"b\":2}");
  EXPECT_FALSE(d.in_line());
}

TEST(LineDecoderTest, EveryTruncationPoint) {
  const std::string line = request_to_json_line(generate_request(9, "hello"));
  for (size_t cut = 0; cut < line.size(); ++cut) {
    LineDecoder d(1024);
    ASSERT_TRUE(d.feed(std::string_view(line).substr(0, cut)).is_ok());
    EXPECT_FALSE(d.next().has_value()) << cut;
    ASSERT_TRUE(d.feed(std::string_view(line).substr(cut)).is_ok());
    auto lines = drain(d);
    ASSERT_EQ(lines.size(), 1u) << cut;
    v1::Request r;
    EXPECT_TRUE(parse_json_request(lines[0], &r).is_ok());
    EXPECT_EQ(r.generate().prompt(), "hello");
  }
}

TEST(LineDecoderTest, LineAtTheLimitIsAcceptedLongerIsRefused) {
  LineDecoder at(10);
  ASSERT_TRUE(at.feed(std::string(10, 'x') + "\n").is_ok());
  EXPECT_EQ(drain(at).size(), 1u);

  LineDecoder over(10);
  Status s = over.feed(std::string(11, 'x') + "\n");
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "JSON line of 11 bytes is over the limit of 10 bytes"))
      << s.message();

  // No newline at all: refused as soon as the limit is passed, without buffering more.
  LineDecoder endless(1000);
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(endless.feed(std::string(100, 'y')).is_ok());
  s = endless.feed(std::string(200, 'y'));
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "longer than the limit of 1000 bytes")) << s.message();
  EXPECT_FALSE(endless.in_line());
  EXPECT_FALSE(endless.feed("\n").is_ok());  // sticky
}

// ---------------------------------------------------------------------------------------------
TEST(JsonLinesTest, ParsesProtoAndCamelCaseNamesAndStringOrNumberIds) {
  v1::Request r;
  ASSERT_TRUE(
      parse_json_request(R"({"id":1,"handshake":{"protocol_version":1,"client_name":"socat"}})", &r)
          .is_ok());
  EXPECT_EQ(r.id(), 1u);
  EXPECT_EQ(r.handshake().protocol_version(), 1u);
  EXPECT_EQ(r.handshake().client_name(), "socat");

  ASSERT_TRUE(parse_json_request(
                  "{\"id\":\"18446744073709551615\",\"handshake\":{\"protocolVersion\":1}}\n", &r)
                  .is_ok());
  EXPECT_EQ(r.id(), 18446744073709551615ull);
  EXPECT_EQ(r.handshake().protocol_version(), 1u);
  EXPECT_TRUE(r.handshake().client_name().empty());  // cleared, not merged

  ASSERT_TRUE(parse_json_request(R"({"id":2,"list_models":{}})", &r).is_ok());
  EXPECT_EQ(r.body_case(), v1::Request::kListModels);
}

TEST(JsonLinesTest, CorruptJsonTable) {
  struct Case {
    const char* name;
    std::string line;
  };
  const std::vector<Case> cases = {
      {"unknown top-level field", R"({"id":1,"hanshake":{}})"},
      {"unknown nested field", R"({"id":1,"handshake":{"protocol_version":1,"colour":"red"}})"},
      {"id is not a number", R"({"id":"abc","list_models":{}})"},
      {"negative id", R"({"id":-1,"list_models":{}})"},
      {"version is a string of letters", R"({"id":1,"handshake":{"protocol_version":"one"}})"},
      {"version is an object", R"({"id":1,"handshake":{"protocol_version":{}}})"},
      {"body is a number", R"({"id":1,"handshake":5})"},
      {"two bodies of the oneof", R"({"id":1,"handshake":{},"list_models":{}})"},
      {"unknown enum-free field in generate", R"({"id":1,"generate":{"max_token":5}})"},
      {"token id out of int32 range", R"({"id":1,"append":{"token_ids":[4294967296]}})"},
      {"not JSON", "hello"},
      {"unterminated object", R"({"id":1,"list_models":{})"},
      {"trailing garbage", R"({"id":1,"list_models":{}} x)"},
      {"array instead of object", "[1,2,3]"},
      {"invalid UTF-8 in a string", "{\"id\":1,\"handshake\":{\"client_name\":\"\xc3\x28\"}}"},
      {"two lines in one", "{\"id\":1,\"list_models\":{}}\n{\"id\":2}"},
  };
  for (const auto& c : cases) {
    v1::Request r;
    const Status s = parse_json_request(c.line, &r);
    ASSERT_FALSE(s.is_ok()) << c.name;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.name;
    EXPECT_TRUE(contains(s.message(), "JSON request")) << c.name << ": " << s.message();
    for (char ch : s.message()) {
      EXPECT_TRUE(ch >= 0x20 && ch < 0x7f) << c.name << ": unprintable byte in " << s.message();
    }
  }
  v1::Request r;
  const Status s = parse_json_request(R"({"id":1,"hanshake":{}})", &r);
  EXPECT_TRUE(contains(s.message(), "hanshake")) << s.message();
}

TEST(JsonLinesTest, HugeLineIsRefusedByTheDecoderBeforeParsing) {
  LineDecoder d(1 << 16);
  const std::string huge =
      "{\"id\":1,\"generate\":{\"prompt\":\"" + std::string(1 << 17, 'a') + "\"}}\n";
  const Status s = d.feed(huge);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "over the limit")) << s.message();
}

TEST(JsonLinesTest, ResponseLinePrintsCodeAndFinalAndIsOneLine) {
  v1::Response ok;
  ok.set_id(3);
  ok.set_final(true);
  ok.mutable_models();
  const std::string line = response_to_json_line(ok);
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  EXPECT_TRUE(contains(line, "\"code\":\"OK\"")) << line;
  EXPECT_TRUE(contains(line, "\"final\":true")) << line;
  EXPECT_TRUE(contains(line, "\"id\":\"3\"")) << line;
  EXPECT_TRUE(contains(line, "\"models\":{")) << line;

  v1::Response err;
  err.set_id(4);
  err.set_code(v1::INVALID_ARGUMENT);
  err.set_message("two\nlines and a \"quote\"");
  const std::string eline = response_to_json_line(err);
  EXPECT_EQ(eline.find('\n'), eline.size() - 1) << eline;
  v1::Response back;
  ASSERT_TRUE(parse_json_response(eline, &back).is_ok());
  EXPECT_EQ(back.SerializeAsString(), err.SerializeAsString());
  EXPECT_TRUE(contains(eline, "\"final\":false")) << eline;
}

TEST(JsonLinesTest, ResponseWithNonUtf8TextStillGivesOneValidLine) {
  v1::Response r;
  r.set_id(8);
  r.set_message(std::string("bad \xc3\x28 bytes", 11));
  const std::string line = response_to_json_line(r);
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  v1::Response back;
  ASSERT_TRUE(parse_json_response(line, &back).is_ok()) << line;
  EXPECT_EQ(back.id(), 8u);
}

TEST(JsonLinesTest, RequestRoundTripThroughJson) {
  const v1::Request r = generate_request(77, "résumé ✓");
  v1::Request back;
  ASSERT_TRUE(parse_json_request(request_to_json_line(r), &back).is_ok());
  EXPECT_EQ(back.SerializeAsString(), r.SerializeAsString());
}

}  // namespace
}  // namespace palu::api
