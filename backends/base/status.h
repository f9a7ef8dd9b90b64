// palu::Status and palu::Result<T>: expected failures as values.
//
// Every function that can fail on input (files, requests, flags) returns a Status or a
// Result<T>. The message names what was wrong: the file or field, the expected and the
// found value. Exceptions are never used for expected failures; assert() checks our own
// invariants only.
//
// Thread-safety: values; no shared state.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace palu {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,     // a caller-supplied value is wrong (flag, request field)
  kNotFound = 2,            // a file, tensor or session does not exist
  kDataLoss = 3,            // a file is corrupt or truncated
  kUnimplemented = 4,       // valid input we do not support (e.g. a quantized GGUF type)
  kResourceExhausted = 5,   // out of a budget (memory, cache blocks)
  kFailedPrecondition = 6,  // the system is not in a state to do this
  kInternal = 7,            // a bug: an invariant did not hold
  kIoError = 8,             // the OS refused (open, read, mmap, write)
  kCancelled = 9,
  kOutOfRange = 10,         // e.g. a position past the context length
  kPermissionDenied = 11,   // e.g. another user's session
  kAlreadyExists = 12,      // e.g. a session name in use
};

// Static name of a code, e.g. "INVALID_ARGUMENT".
const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }

  bool is_ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "CODE_NAME: message"
  std::string to_string() const;

  // Prefix the message with context, e.g. the file name: "model.safetensors: <message>".
  Status with_context(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status data_loss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
inline Status resource_exhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status failed_precondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status io_error(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status out_of_range(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status permission_denied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
inline Status already_exists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }

// Result<T>: a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(implicit)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(implicit)
    assert(!std::get<Status>(v_).is_ok() && "Result constructed from an OK status");
  }

  bool is_ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return is_ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace palu

#define PALU_CONCAT_INNER_(a, b) a##b
#define PALU_CONCAT_(a, b) PALU_CONCAT_INNER_(a, b)

// Return the status from the enclosing function if it is not OK.
#define PALU_RETURN_IF_ERROR(expr)                \
  do {                                            \
    ::palu::Status palu_status_ = (expr);         \
    if (!palu_status_.is_ok()) return palu_status_; \
  } while (0)

// PALU_ASSIGN_OR_RETURN(auto x, make_x()): declare x from a Result or return its status.
#define PALU_ASSIGN_OR_RETURN(decl, expr) \
  PALU_ASSIGN_OR_RETURN_IMPL_(PALU_CONCAT_(palu_result_, __LINE__), decl, expr)
#define PALU_ASSIGN_OR_RETURN_IMPL_(tmp, decl, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.is_ok()) return tmp.status();             \
  decl = std::move(tmp).value()
