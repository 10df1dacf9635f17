// Status and Result<T>: the error currency of deltastream.
//
// Every fallible operation returns a Status (or a Result<T> carrying a value or a Status). Error
// codes are stable numbers: they are process exit codes of the CLIs and will be reported over the
// wire by agents, so a number is never reused or renumbered. Add new codes at the end of their
// block. No exceptions cross component boundaries.
//
// Thread-safety: Status and Result are values; distinct objects may be used from any thread.
#ifndef DELTASTREAM_COMMON_STATUS_H_
#define DELTASTREAM_COMMON_STATUS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace ds {

// VERY IMPORTANT: values are part of the external interface (exit codes, wire reports).
// Never change or reuse a number. Codes must stay below 256 (exit codes).
enum class ErrorCode : uint16_t {
  kOk = 0,
  // Generic (1-19).
  kInvalidArgument = 1,  // Bad usage or parameter.
  kIoError = 2,          // A read, write, fsync or rename failed.
  kNotFound = 3,         // A file or object does not exist.
  kNoSpace = 4,          // Disk full (ENOSPC / EDQUOT).
  kInternal = 5,         // A bug: an invariant did not hold.
  kResourceLimit = 6,    // A declared size exceeds the configured memory or size limits.
  kUnsupported = 7,      // A valid request this build cannot serve.
  // Patch format (20-49).
  kPatchBadMagic = 20,        // Not a deltastream patch (nor another known delta format).
  kPatchVersion = 21,         // Format major version this build cannot read.
  kPatchTruncated = 22,       // The patch ended before its last segment.
  kPatchChecksum = 23,        // A header or segment checksum does not match.
  kPatchMalformed = 24,       // A field is out of range or inconsistent.
  kPatchSegmentOrder = 25,    // Segments overlap, leave a gap, or exceed the new size.
  kPatchWrongBase = 26,       // The old file is not the one the patch was made against.
  kPatchResultMismatch = 27,  // The rebuilt file's size or SHA-256 differs from the header.
  kPatchUnknownMethod = 28,   // A segment method or transform this build does not know.
  kPatchDecompress = 29,      // A compressed stream failed to decode.
  kPatchTrailingData = 30,    // Bytes after the last segment.
  kPatchOutputMismatch = 31,  // A segment's rebuilt bytes fail their checksum.
  // Repository, metadata and network (50-99).
  kAlreadyExists = 50,     // The name/version exists with other content (HTTP 409).
  kUnauthenticated = 51,   // Missing or unknown credentials (HTTP 401).
  kPermissionDenied = 52,  // Credentials lack the needed scope (HTTP 403).
  kDigestMismatch = 53,    // Received bytes differ from the declared size or SHA-256.
  kBadSignature = 54,      // Signed metadata fails verification with the pinned key.
  kExpired = 55,           // Signed metadata is past its expiry (freeze attack defence).
  kRollback = 56,          // Metadata or version older than one already trusted.
  kTooLarge = 57,          // A request or body exceeds the configured limit (HTTP 413).
  kUnavailable = 58,       // Peer unreachable, timed out or overloaded; retry later (HTTP 503).
  kProtocol = 59,          // A peer sent a malformed or unexpected response.
  // Device agent.
  kHealthCheck = 70,  // The installed version failed its health check (it was rolled back).
  kDeferred = 71,     // The delta path failed and the fallback policy is "defer".
  kBusy = 72,         // Another agent holds the state directory.
};

// Short stable name of a code, e.g. "patch_checksum".
std::string_view ErrorCodeName(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  int exit_code() const { return static_cast<int>(code_); }
  const std::string& message() const { return message_; }
  // "patch_checksum (23): segment 3 payload checksum mismatch".
  std::string ToString() const;

  // Returns this status with |context| prepended to the message.
  Status WithContext(std::string_view context) const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

inline Status Error(ErrorCode code, std::string message) {
  return Status(code, std::move(message));
}

// Builds a Status from errno after a failed system call on |what| (kNoSpace for ENOSPC etc.).
Status ErrnoStatus(std::string_view what, int err);

// Holds either a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design.
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design.
    if (std::get<Status>(v_).ok()) v_ = Status(ErrorCode::kInternal, "Result built from OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  // REQUIRES: !ok() for a meaningful status; returns OK when a value is held.
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(v_); }

  // REQUIRES: ok().
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

}  // namespace ds

#define DS_CONCAT_INNER_(a, b) a##b
#define DS_CONCAT_(a, b) DS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if |expr| (a Status) is not OK.
#define DS_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::ds::Status ds_status_ = (expr);        \
    if (!ds_status_.ok()) return ds_status_; \
  } while (0)

// Evaluates |rexpr| (a Result<T>); on error returns its status, else moves the value into |lhs|.
#define DS_ASSIGN_OR_RETURN(lhs, rexpr) \
  DS_ASSIGN_OR_RETURN_IMPL_(DS_CONCAT_(ds_result_, __LINE__), lhs, rexpr)
#define DS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                              \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

#endif  // DELTASTREAM_COMMON_STATUS_H_
