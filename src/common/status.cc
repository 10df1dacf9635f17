#include "common/status.h"

#include <cerrno>
#include <cstring>

namespace ds {

std::string_view ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk:
      return "ok";
    case ErrorCode::kInvalidArgument:
      return "invalid_argument";
    case ErrorCode::kIoError:
      return "io_error";
    case ErrorCode::kNotFound:
      return "not_found";
    case ErrorCode::kNoSpace:
      return "no_space";
    case ErrorCode::kInternal:
      return "internal";
    case ErrorCode::kResourceLimit:
      return "resource_limit";
    case ErrorCode::kUnsupported:
      return "unsupported";
    case ErrorCode::kPatchBadMagic:
      return "patch_bad_magic";
    case ErrorCode::kPatchVersion:
      return "patch_version";
    case ErrorCode::kPatchTruncated:
      return "patch_truncated";
    case ErrorCode::kPatchChecksum:
      return "patch_checksum";
    case ErrorCode::kPatchMalformed:
      return "patch_malformed";
    case ErrorCode::kPatchSegmentOrder:
      return "patch_segment_order";
    case ErrorCode::kPatchWrongBase:
      return "patch_wrong_base";
    case ErrorCode::kPatchResultMismatch:
      return "patch_result_mismatch";
    case ErrorCode::kPatchUnknownMethod:
      return "patch_unknown_method";
    case ErrorCode::kPatchDecompress:
      return "patch_decompress";
    case ErrorCode::kPatchTrailingData:
      return "patch_trailing_data";
    case ErrorCode::kAlreadyExists:
      return "already_exists";
    case ErrorCode::kUnauthenticated:
      return "unauthenticated";
    case ErrorCode::kPermissionDenied:
      return "permission_denied";
    case ErrorCode::kDigestMismatch:
      return "digest_mismatch";
    case ErrorCode::kBadSignature:
      return "bad_signature";
    case ErrorCode::kExpired:
      return "expired";
    case ErrorCode::kRollback:
      return "rollback";
    case ErrorCode::kTooLarge:
      return "too_large";
    case ErrorCode::kUnavailable:
      return "unavailable";
    case ErrorCode::kProtocol:
      return "protocol";
    case ErrorCode::kPatchOutputMismatch:
      return "patch_output_mismatch";
    case ErrorCode::kHealthCheck:
      return "health_check";
    case ErrorCode::kDeferred:
      return "deferred";
    case ErrorCode::kBusy:
      return "busy";
  }
  return "unknown";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string s(ErrorCodeName(code_));
  s += " (" + std::to_string(static_cast<int>(code_)) + ")";
  if (!message_.empty()) s += ": " + message_;
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  return Status(code_, std::string(context) + ": " + message_);
}

Status ErrnoStatus(std::string_view what, int err) {
  ErrorCode code = ErrorCode::kIoError;
  if (err == ENOSPC || err == EDQUOT) code = ErrorCode::kNoSpace;
  if (err == ENOENT) code = ErrorCode::kNotFound;
  return Status(code, std::string(what) + ": " + std::strerror(err));
}

}  // namespace ds
