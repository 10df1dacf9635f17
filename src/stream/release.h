// Signed release metadata, device side: verifying the envelope the master signs and reading the
// signed content. The master's signing half is in src/repo/metadata.h. The format is in
// docs/SECURITY.md; in short:
//   signed    = {"_type":"deltastream-release","spec_version":1,"artifact","counter",
//                "signed_at","expires","latest","versions":[...],"deltas":[...]}
//   canonical = nlohmann::json dump() of |signed| without indentation (keys sorted)
//   signature = Ed25519 over "deltastream-metadata-v1\n" + canonical
//   envelope  = {"signed":{...},"signatures":[{"keyid":hex SHA-256 of the public key,"sig":hex}]}
//
// Thread-safety: the functions are thread-safe; the structs are values.
#ifndef DELTASTREAM_STREAM_RELEASE_H_
#define DELTASTREAM_STREAM_RELEASE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::stream {

inline constexpr std::string_view kMetadataType = "deltastream-release";
inline constexpr int kMetadataSpecVersion = 1;

struct ReleaseVersion {
  std::string version, sha256;
  uint64_t length = 0, seq = 0;
  std::string chunk_map_sha256;  // Signed when not empty (docs/PROTOCOL.md).
};
struct ReleaseDelta {
  int64_t id = 0;
  std::string from, to, base_sha256, result_sha256, format, sha256;
  uint64_t length = 0;
  std::string chunk_map_sha256;  // Signed when not empty (docs/PROTOCOL.md).
};
struct Release {
  std::string artifact;
  uint64_t counter = 0;
  int64_t signed_at = 0, expires = 0;
  std::string latest;
  std::vector<ReleaseVersion> versions;  // Ascending version order.
  std::vector<ReleaseDelta> deltas;      // Ready deltas only.

  // nullptr when absent.
  const ReleaseVersion* FindVersion(std::string_view version) const;
  const ReleaseVersion* FindVersionBySha256(std::string_view sha256) const;
  // The signed delta from |base_sha256| to |to|, or nullptr.
  const ReleaseDelta* FindDelta(std::string_view base_sha256, std::string_view to) const;
};

// The bytes a signature covers: the domain prefix followed by |canonical|.
Bytes MetadataSignedBytes(std::string_view canonical);
// Hex SHA-256 of a raw public key: the "keyid" of a signature.
std::string KeyIdOf(ByteView public_key);

// Verifies a metadata envelope against a pinned hex public key and returns the "signed" object's
// canonical JSON text. Checks the signature (kBadSignature), the expiry against |now|
// (kExpired), and that its version counter is >= |min_counter| (kRollback). kProtocol for a
// malformed envelope, kInvalidArgument for a malformed pinned key.
Result<std::string> VerifyMetadata(std::string_view envelope, std::string_view public_key_hex,
                                   int64_t now, uint64_t min_counter);

// Reads the canonical signed object into a Release: kProtocol when a field is missing or
// mistyped, a hash is not 64 lower-case hex digits, or an entry is inconsistent.
Result<Release> ParseRelease(std::string_view canonical);

// VerifyMetadata, then ParseRelease.
Result<Release> VerifyRelease(std::string_view envelope, std::string_view public_key_hex,
                              int64_t now, uint64_t min_counter);

// Semantic Versioning 2.0.0 precedence: <0, 0, >0; nullopt when either is not semver.
std::optional<int> CompareSemver(std::string_view a, std::string_view b);

}  // namespace ds::stream

#endif  // DELTASTREAM_STREAM_RELEASE_H_
