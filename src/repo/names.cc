// Name rules (Semantic Versioning precedence is device-side: src/stream/semver.cc).
#include <string>
#include <string_view>
#include <vector>

#include "repo/repo.h"

namespace ds::repo {
namespace {

constexpr size_t kMaxNameLength = 128;

bool IsAlnum(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// First character alphanumeric (so no ".", "..", "-flag" or hidden files), the rest from
// |extra| or alphanumeric. Slashes, backslashes, NUL and every other byte are rejected.
Status ValidateName(std::string_view what, std::string_view name, std::string_view extra) {
  if (name.empty()) return Error(ErrorCode::kInvalidArgument, std::string(what) + " is empty");
  if (name.size() > kMaxNameLength) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string(what) + " is longer than " + std::to_string(kMaxNameLength));
  }
  if (!IsAlnum(name[0])) {
    return Error(ErrorCode::kInvalidArgument,
                 std::string(what) + " must start with a letter or digit");
  }
  for (char c : name) {
    if (!IsAlnum(c) && extra.find(c) == std::string_view::npos) {
      return Error(
          ErrorCode::kInvalidArgument,
          std::string(what) + " holds a character outside [A-Za-z0-9" + std::string(extra) + "]");
    }
  }
  return Status::Ok();
}

}  // namespace

Status Repository::ValidateArtifactName(std::string_view name) {
  return ValidateName("artifact name", name, "._-");
}

Status Repository::ValidateVersion(std::string_view version) {
  return ValidateName("version", version, ".+_-");
}

const char* DeltaStatusName(DeltaStatus s) {
  switch (s) {
    case DeltaStatus::kQueued:
      return "queued";
    case DeltaStatus::kRunning:
      return "running";
    case DeltaStatus::kReady:
      return "ready";
    case DeltaStatus::kNotWorth:
      return "not_worth";
    case DeltaStatus::kFailed:
      return "failed";
  }
  return "unknown";
}

}  // namespace ds::repo
