#include "sdk/proto/framing.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

namespace palu::api {
namespace {

void put_u32_le(std::string* out, uint32_t v) {
  const char b[4] = {static_cast<char>(v & 0xff), static_cast<char>((v >> 8) & 0xff),
                     static_cast<char>((v >> 16) & 0xff), static_cast<char>((v >> 24) & 0xff)};
  out->append(b, 4);
}

uint32_t get_u32_le(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | (static_cast<uint32_t>(u[1]) << 8) |
         (static_cast<uint32_t>(u[2]) << 16) | (static_cast<uint32_t>(u[3]) << 24);
}

Status bad_magic(std::string_view seen) {
  return invalid_argument("bad frame magic: expected \"PALU\", got \"" + escape_bytes(seen, 8) +
                          "\" (binary frames start with \"PALU\"; JSON-lines clients send '{' "
                          "first)");
}

// A line without its terminator: "\n" and a "\r" before it dropped.
std::string_view strip_eol(std::string_view line) {
  if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

Status parse_json(std::string_view line, google::protobuf::Message* message, const char* what) {
  line = strip_eol(line);
  if (line.find('\n') != std::string_view::npos) {
    return invalid_argument(std::string("JSON ") + what +
                            ": a line holds one message (found a newline inside)");
  }
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;  // a typo in a field name is an error, not a no-op
  message->Clear();
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(line.data(), line.size()), message, options);
  if (!status.ok()) {
    const auto text = status.message();
    return invalid_argument(std::string("JSON ") + what + ": " +
                            escape_bytes(std::string_view(text.data(), text.size()), 300));
  }
  return Status::ok();
}

std::string to_json_line(const google::protobuf::Message& message, bool* ok) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string out;
  *ok = google::protobuf::util::MessageToJsonString(message, &out, options).ok();
  out.push_back('\n');
  return out;
}

}  // namespace

std::string escape_bytes(std::string_view bytes, size_t max_bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  const size_t n = std::min(bytes.size(), max_bytes);
  out.reserve(n + 8);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
      out.push_back(static_cast<char>(c));
    } else if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (bytes.size() > n) out += "...";
  return out;
}

bool is_valid_utf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    size_t len;
    unsigned cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    static constexpr unsigned kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

std::string encode_frame_header(uint32_t payload_bytes, uint32_t protocol_version) {
  std::string out(kFrameMagic, sizeof(kFrameMagic));
  put_u32_le(&out, protocol_version);
  put_u32_le(&out, payload_bytes);
  return out;
}

std::string encode_frame(const google::protobuf::Message& message, uint32_t protocol_version) {
  const size_t n = message.ByteSizeLong();
  if (n > std::numeric_limits<uint32_t>::max() - kFrameHeaderBytes) return {};
  std::string out = encode_frame_header(static_cast<uint32_t>(n), protocol_version);
  out.resize(kFrameHeaderBytes + n);
  if (n > 0 && !message.SerializeToArray(out.data() + kFrameHeaderBytes, static_cast<int>(n))) {
    return {};
  }
  return out;
}

Result<FrameHeader> parse_frame_header(std::string_view bytes, uint32_t max_frame_bytes) {
  if (bytes.size() < kFrameHeaderBytes) {
    return invalid_argument("truncated frame header: " + std::to_string(bytes.size()) + " of " +
                            std::to_string(kFrameHeaderBytes) + " bytes");
  }
  if (std::memcmp(bytes.data(), kFrameMagic, sizeof(kFrameMagic)) != 0) {
    return bad_magic(bytes.substr(0, 8));
  }
  FrameHeader h;
  h.protocol_version = get_u32_le(bytes.data() + 4);
  h.payload_bytes = get_u32_le(bytes.data() + 8);
  if (h.payload_bytes > max_frame_bytes) {
    return invalid_argument("frame payload length " + std::to_string(h.payload_bytes) +
                            " bytes is over the limit of " + std::to_string(max_frame_bytes) +
                            " bytes");
  }
  return h;
}

// ---------------------------------------------------------------------------------------------
FrameDecoder::FrameDecoder(uint32_t max_frame_bytes) : max_frame_bytes_(max_frame_bytes) {}

size_t FrameDecoder::partial_needed_bytes() const {
  return header_ ? kFrameHeaderBytes + header_->payload_bytes : kFrameHeaderBytes;
}

Status FrameDecoder::feed(std::string_view bytes) {
  if (!status_.is_ok()) return status_;
  while (!bytes.empty()) {
    if (!header_) {
      // The header, byte by byte as it comes: the magic is judged on its first byte already,
      // so a client speaking something else (HTTP, JSON without '{' first) is told at once.
      const size_t take = std::min(kFrameHeaderBytes - partial_.size(), bytes.size());
      partial_.append(bytes.data(), take);
      const size_t magic_seen = std::min(partial_.size(), sizeof(kFrameMagic));
      if (std::memcmp(partial_.data(), kFrameMagic, magic_seen) != 0) {
        // Show up to 8 bytes of what was sent, including bytes after the header's part.
        std::string seen = partial_;
        if (seen.size() < 8) seen.append(bytes.substr(take, 8 - seen.size()));
        status_ = bad_magic(seen);
        partial_.clear();
        partial_.shrink_to_fit();
        return status_;
      }
      bytes.remove_prefix(take);
      if (partial_.size() < kFrameHeaderBytes) break;
      auto header = parse_frame_header(partial_, max_frame_bytes_);
      if (!header.is_ok()) {
        status_ = header.status();
        partial_.clear();
        partial_.shrink_to_fit();
        return status_;
      }
      header_ = *header;
      // Only now, with the length checked against the limit, is room made for the payload.
      partial_.reserve(kFrameHeaderBytes + header_->payload_bytes);
    }
    const size_t total = kFrameHeaderBytes + header_->payload_bytes;
    const size_t take = std::min(total - partial_.size(), bytes.size());
    partial_.append(bytes.data(), take);
    bytes.remove_prefix(take);
    if (partial_.size() == total) {
      Frame frame;
      frame.protocol_version = header_->protocol_version;
      frame.payload = std::move(partial_);
      frame.payload.erase(0, kFrameHeaderBytes);
      ready_.push_back(std::move(frame));
      partial_ = std::string();
      header_.reset();
    }
  }
  return Status::ok();
}

std::optional<FrameDecoder::Frame> FrameDecoder::next() {
  if (ready_.empty()) return std::nullopt;
  Frame f = std::move(ready_.front());
  ready_.pop_front();
  return f;
}

// ---------------------------------------------------------------------------------------------
LineDecoder::LineDecoder(uint32_t max_line_bytes) : max_line_bytes_(max_line_bytes) {}

Status LineDecoder::feed(std::string_view bytes) {
  if (!status_.is_ok()) return status_;
  while (!bytes.empty()) {
    const size_t nl = bytes.find('\n');
    const size_t body = nl == std::string_view::npos ? bytes.size() : nl;
    if (partial_.size() + body > max_line_bytes_) {
      status_ = invalid_argument(
          nl == std::string_view::npos
              ? "JSON line longer than the limit of " + std::to_string(max_line_bytes_) +
                    " bytes (no newline in the first " + std::to_string(partial_.size() + body) +
                    " bytes)"
              : "JSON line of " + std::to_string(partial_.size() + body) +
                    " bytes is over the limit of " + std::to_string(max_line_bytes_) + " bytes");
      partial_.clear();
      partial_.shrink_to_fit();
      ready_.clear();
      return status_;
    }
    partial_.append(bytes.data(), body);
    if (nl == std::string_view::npos) break;
    bytes.remove_prefix(nl + 1);
    if (!partial_.empty() && partial_.back() == '\r') partial_.pop_back();
    if (!is_blank(partial_)) ready_.push_back(std::move(partial_));
    partial_ = std::string();
  }
  return Status::ok();
}

std::optional<std::string> LineDecoder::next() {
  if (ready_.empty()) return std::nullopt;
  std::string line = std::move(ready_.front());
  ready_.pop_front();
  return line;
}

// ---------------------------------------------------------------------------------------------
Status parse_json_request(std::string_view line, v1::Request* request) {
  return parse_json(line, request, "request");
}

Status parse_json_response(std::string_view line, v1::Response* response) {
  return parse_json(line, response, "response");
}

std::string response_to_json_line(const v1::Response& response) {
  bool ok = false;
  std::string line = to_json_line(response, &ok);
  if (ok) return line;
  // Only a string field that is not UTF-8 makes printing fail; answer with what is known.
  v1::Response fallback;
  fallback.set_id(response.id());
  fallback.set_code(v1::INTERNAL);
  fallback.set_message("the response (code " + v1::Code_Name(response.code()) +
                       ") could not be printed as JSON (a string field is not UTF-8); message: " +
                       escape_bytes(response.message(), 200));
  fallback.set_final(response.final());
  return to_json_line(fallback, &ok);
}

std::string request_to_json_line(const v1::Request& request) {
  bool ok = false;
  return to_json_line(request, &ok);
}

}  // namespace palu::api
