#include "repo/metadata.h"

#include <sodium.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "common/fs.h"
#include "common/hash.h"
#include "repo/repo.h"
#include "stream/release.h"

namespace ds::repo {
namespace {

using nlohmann::json;

using stream::KeyIdOf;
using stream::kMetadataType;
constexpr int kSpecVersion = stream::kMetadataSpecVersion;

Status InitSodium() {
  if (sodium_init() < 0) return Error(ErrorCode::kInternal, "libsodium failed to initialise");
  return Status::Ok();
}

std::string_view TrimSpace(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) {
    s.remove_suffix(1);
  }
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  return s;
}

std::string PublicPathFor(const std::string& secret_path) {
  constexpr std::string_view kSuffix = ".key";
  if (secret_path.size() > kSuffix.size() &&
      secret_path.compare(secret_path.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0) {
    return secret_path.substr(0, secret_path.size() - kSuffix.size()) + ".pub";
  }
  return secret_path + ".pub";
}

}  // namespace

Status GenerateKeyPair(const std::string& secret_path, const std::string& public_path) {
  DS_RETURN_IF_ERROR(InitSodium());
  std::array<uint8_t, crypto_sign_PUBLICKEYBYTES> pub;
  std::array<uint8_t, crypto_sign_SECRETKEYBYTES> secret;
  crypto_sign_keypair(pub.data(), secret.data());
  std::string secret_hex = ToHex(ByteView(secret.data(), secret.size())) + "\n";
  sodium_memzero(secret.data(), secret.size());
  Status s = WriteFileAtomic(secret_path, AsBytes(secret_hex), 0600);
  sodium_memzero(secret_hex.data(), secret_hex.size());
  DS_RETURN_IF_ERROR(s);
  const std::string pub_hex = ToHex(ByteView(pub.data(), pub.size())) + "\n";
  return WriteFileAtomic(public_path, AsBytes(pub_hex), 0644);
}

Result<SigningKey> LoadOrCreateSigningKey(const std::string& path) {
  DS_RETURN_IF_ERROR(InitSodium());
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) return ErrnoStatus("stat " + path, errno);
    const size_t slash = path.find_last_of('/');
    if (slash != std::string::npos && slash > 0) {
      const std::string dir = path.substr(0, slash);
      if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        return ErrnoStatus("mkdir " + dir, errno);
      }
    }
    DS_RETURN_IF_ERROR(GenerateKeyPair(path, PublicPathFor(path)));
  }
  DS_ASSIGN_OR_RETURN(Bytes text, ReadFile(path, 4096));
  SigningKey key;
  const std::string_view hex =
      TrimSpace(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
  const bool decoded = DecodeHex(hex, key.secret);
  sodium_memzero(text.data(), text.size());
  if (!decoded) {
    return Error(ErrorCode::kInvalidArgument, path + " does not hold a hex Ed25519 secret key");
  }
  // The secret key is seed || public key; rebuild from the seed to catch a damaged file.
  std::array<uint8_t, crypto_sign_SECRETKEYBYTES> check;
  crypto_sign_seed_keypair(key.pub.data(), check.data(), key.secret.data());
  const bool consistent = sodium_memcmp(check.data(), key.secret.data(), check.size()) == 0;
  sodium_memzero(check.data(), check.size());
  if (!consistent) {
    return Error(ErrorCode::kInvalidArgument, path + " holds an inconsistent Ed25519 key");
  }
  key.public_hex = ToHex(ByteView(key.pub.data(), key.pub.size()));
  key.key_id = KeyIdOf(key.pub);
  return key;
}

Result<std::string> SignMetadata(const MetadataContent& content, const SigningKey& key) {
  try {
    json versions = json::array();
    for (const MetadataVersion& v : content.versions) {
      json entry = {
          {"version", v.version}, {"length", v.length}, {"sha256", v.sha256}, {"seq", v.seq}};
      if (!v.chunk_map_sha256.empty()) entry["chunk_map_sha256"] = v.chunk_map_sha256;
      versions.push_back(std::move(entry));
    }
    json deltas = json::array();
    for (const MetadataDelta& d : content.deltas) {
      json entry = {{"id", d.id},
                    {"from", d.from},
                    {"to", d.to},
                    {"base_sha256", d.base_sha256},
                    {"result_sha256", d.result_sha256},
                    {"format", d.format},
                    {"length", d.length},
                    {"sha256", d.sha256}};
      if (!d.chunk_map_sha256.empty()) entry["chunk_map_sha256"] = d.chunk_map_sha256;
      deltas.push_back(std::move(entry));
    }
    const json signed_obj = {{"_type", kMetadataType},         {"spec_version", kSpecVersion},
                             {"artifact", content.artifact},   {"counter", content.counter},
                             {"signed_at", content.signed_at}, {"expires", content.expires},
                             {"latest", content.latest},       {"versions", std::move(versions)},
                             {"deltas", std::move(deltas)}};
    const std::string canonical = signed_obj.dump();
    const Bytes msg = stream::MetadataSignedBytes(canonical);
    std::array<uint8_t, crypto_sign_BYTES> sig;
    crypto_sign_detached(sig.data(), nullptr, msg.data(), msg.size(), key.secret.data());
    const json envelope = {
        {"signed", signed_obj},
        {"signatures",
         json::array({{{"keyid", key.key_id}, {"sig", ToHex(ByteView(sig.data(), sig.size()))}}})}};
    return envelope.dump();
  } catch (const std::exception& e) {
    return Error(ErrorCode::kInternal, std::string("cannot serialise metadata: ") + e.what());
  }
}

}  // namespace ds::repo
