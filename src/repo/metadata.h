// Signed release metadata (internal to src/repo): Ed25519 keys and the signing side of the
// envelope that stream::VerifyMetadata (src/stream/release.h) checks. The format is in
// docs/SECURITY.md; in short:
//   signed    = {"_type":"deltastream-release","spec_version":1,"artifact","counter",
//                "signed_at","expires","latest","versions":[...],"deltas":[...]}
//               (each version and delta entry carries "chunk_map_sha256", docs/PROTOCOL.md)
//   canonical = nlohmann::json dump() of |signed| without indentation (keys sorted)
//   signature = Ed25519 over "deltastream-metadata-v1\n" + canonical
//   envelope  = {"signed":{...},"signatures":[{"keyid":hex SHA-256 of the public key,"sig":hex}]}
//
// Thread-safety: the functions are thread-safe; SigningKey is an immutable value once loaded.
#ifndef DELTASTREAM_REPO_METADATA_H_
#define DELTASTREAM_REPO_METADATA_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "stream/release.h"

namespace ds::repo {

struct SigningKey {
  std::array<uint8_t, 64> secret{};
  std::array<uint8_t, 32> pub{};
  std::string public_hex;
  std::string key_id;  // Hex SHA-256 of the public key bytes.
};

// Loads the hex secret key at |path|; when the file does not exist, creates it (0600, parent
// directory 0700 when missing) and the public key beside it (<path minus .key>.pub).
Result<SigningKey> LoadOrCreateSigningKey(const std::string& path);

// The signed content is the device-side Release (src/stream/release.h).
using MetadataVersion = stream::ReleaseVersion;
using MetadataDelta = stream::ReleaseDelta;
using MetadataContent = stream::Release;

// Returns the envelope text (compact JSON) signed with |key|.
Result<std::string> SignMetadata(const MetadataContent& content, const SigningKey& key);

}  // namespace ds::repo

#endif  // DELTASTREAM_REPO_METADATA_H_
