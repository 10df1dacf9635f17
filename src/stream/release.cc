#include "stream/release.h"

#include <sodium.h>

#include <array>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>

#include "common/hash.h"

namespace ds::stream {
namespace {

using nlohmann::json;

// Domain separation: a signature over metadata can never be replayed as one over anything else.
constexpr std::string_view kSignaturePrefix = "deltastream-metadata-v1\n";

std::string_view TrimSpace(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) {
    s.remove_suffix(1);
  }
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  return s;
}

bool IsSha256Hex(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// Typed field access for ParseRelease; throws nothing, records the first problem.
class Fields {
 public:
  explicit Fields(const json& obj, std::string where) : obj_(obj), where_(std::move(where)) {}

  std::string Str(const char* name, bool required = true) {
    auto it = obj_.find(name);
    if (it == obj_.end()) {
      if (required) Fail(std::string("lacks \"") + name + "\"");
      return {};
    }
    if (!it->is_string()) {
      Fail(std::string("\"") + name + "\" is not a string");
      return {};
    }
    return it->get<std::string>();
  }
  std::string Hash(const char* name, bool required = true) {
    std::string s = Str(name, required);
    if (!s.empty() && !IsSha256Hex(s)) Fail(std::string("\"") + name + "\" is not a SHA-256");
    return s;
  }
  uint64_t U64(const char* name) {
    auto it = obj_.find(name);
    if (it == obj_.end() || !it->is_number_unsigned()) {
      // 0 parses as unsigned in nlohmann; a negative or fractional number does not.
      if (it != obj_.end() && it->is_number_integer() && it->get<int64_t>() >= 0) {
        return static_cast<uint64_t>(it->get<int64_t>());
      }
      Fail(std::string("\"") + name + "\" is not an unsigned integer");
      return 0;
    }
    return it->get<uint64_t>();
  }
  int64_t I64(const char* name) {
    auto it = obj_.find(name);
    if (it == obj_.end() || !it->is_number_integer()) {
      Fail(std::string("\"") + name + "\" is not an integer");
      return 0;
    }
    return it->get<int64_t>();
  }
  const std::string& error() const { return error_; }

 private:
  void Fail(const std::string& what) {
    if (error_.empty()) error_ = where_ + " " + what;
  }
  const json& obj_;
  std::string where_;
  std::string error_;
};

Status InitSodium() {
  if (sodium_init() < 0) return Error(ErrorCode::kInternal, "libsodium failed to initialise");
  return Status::Ok();
}

}  // namespace

const ReleaseVersion* Release::FindVersion(std::string_view version) const {
  for (const ReleaseVersion& v : versions) {
    if (v.version == version) return &v;
  }
  return nullptr;
}

const ReleaseVersion* Release::FindVersionBySha256(std::string_view sha256) const {
  // Newest first: if two versions share content, the newer name wins.
  for (auto it = versions.rbegin(); it != versions.rend(); ++it) {
    if (it->sha256 == sha256) return &*it;
  }
  return nullptr;
}

const ReleaseDelta* Release::FindDelta(std::string_view base_sha256, std::string_view to) const {
  for (const ReleaseDelta& d : deltas) {
    if (d.base_sha256 == base_sha256 && d.to == to) return &d;
  }
  return nullptr;
}

Bytes MetadataSignedBytes(std::string_view canonical) {
  Bytes msg(kSignaturePrefix.size() + canonical.size());
  std::memcpy(msg.data(), kSignaturePrefix.data(), kSignaturePrefix.size());
  if (!canonical.empty()) {
    std::memcpy(msg.data() + kSignaturePrefix.size(), canonical.data(), canonical.size());
  }
  return msg;
}

std::string KeyIdOf(ByteView public_key) { return ToHex(Sha256::Of(public_key)); }

Result<std::string> VerifyMetadata(std::string_view envelope, std::string_view public_key_hex,
                                   int64_t now, uint64_t min_counter) {
  DS_RETURN_IF_ERROR(InitSodium());
  std::array<uint8_t, crypto_sign_PUBLICKEYBYTES> pub;
  if (!DecodeHex(TrimSpace(public_key_hex), pub)) {
    return Error(ErrorCode::kInvalidArgument, "pinned public key is not 64 hex digits");
  }
  const std::string key_id = KeyIdOf(pub);

  std::string canonical;
  std::optional<json> signed_obj;
  try {
    json doc = json::parse(envelope);
    if (!doc.is_object() || !doc.contains("signed") || !doc["signed"].is_object() ||
        !doc.contains("signatures") || !doc["signatures"].is_array()) {
      return Error(ErrorCode::kProtocol, "metadata envelope lacks signed/signatures");
    }
    // The bytes that were signed are rebuilt from the parsed object: whitespace or key order in
    // transit does not matter, any change of content does.
    canonical = doc["signed"].dump();
    const Bytes msg = MetadataSignedBytes(canonical);
    bool verified = false;
    for (const json& sig : doc["signatures"]) {
      if (!sig.is_object() || !sig.contains("keyid") || !sig["keyid"].is_string() ||
          !sig.contains("sig") || !sig["sig"].is_string()) {
        continue;
      }
      if (sig["keyid"].get<std::string>() != key_id) continue;
      std::array<uint8_t, crypto_sign_BYTES> raw;
      if (!DecodeHex(sig["sig"].get<std::string>(), raw)) continue;
      if (crypto_sign_verify_detached(raw.data(), msg.data(), msg.size(), pub.data()) == 0) {
        verified = true;
        break;
      }
    }
    if (!verified) {
      return Error(ErrorCode::kBadSignature, "no valid signature by key " + key_id);
    }
    signed_obj = std::move(doc["signed"]);
  } catch (const json::exception& e) {
    return Error(ErrorCode::kProtocol, std::string("malformed metadata envelope: ") + e.what());
  }

  // Signed by the pinned key from here on; a bad shape now is the signer's protocol error.
  const json& s = *signed_obj;
  auto field = [&s](const char* name) -> const json* {
    auto it = s.find(name);
    return it == s.end() ? nullptr : &*it;
  };
  const json* type = field("_type");
  const json* spec = field("spec_version");
  const json* expires = field("expires");
  const json* counter = field("counter");
  if (type == nullptr || !type->is_string() || type->get<std::string>() != kMetadataType) {
    return Error(ErrorCode::kProtocol, "metadata is not of type deltastream-release");
  }
  if (spec == nullptr || !spec->is_number_integer() ||
      spec->get<int64_t>() != kMetadataSpecVersion) {
    return Error(ErrorCode::kUnsupported, "metadata spec_version is not 1");
  }
  if (expires == nullptr || !expires->is_number_integer() || counter == nullptr ||
      !counter->is_number_unsigned()) {
    return Error(ErrorCode::kProtocol, "metadata lacks expires/counter");
  }
  if (now >= expires->get<int64_t>()) {
    return Error(ErrorCode::kExpired, "metadata expired at " +
                                          std::to_string(expires->get<int64_t>()) + " (now " +
                                          std::to_string(now) + ")");
  }
  if (counter->get<uint64_t>() < min_counter) {
    return Error(ErrorCode::kRollback, "metadata counter " +
                                           std::to_string(counter->get<uint64_t>()) +
                                           " is below the trusted " + std::to_string(min_counter));
  }
  return canonical;
}

Result<Release> ParseRelease(std::string_view canonical) {
  json s;
  try {
    s = json::parse(canonical);
  } catch (const json::exception& e) {
    return Error(ErrorCode::kProtocol, std::string("malformed release metadata: ") + e.what());
  }
  if (!s.is_object()) return Error(ErrorCode::kProtocol, "release metadata is not an object");
  Release r;
  Fields top(s, "release metadata");
  r.artifact = top.Str("artifact");
  r.counter = top.U64("counter");
  r.signed_at = top.I64("signed_at");
  r.expires = top.I64("expires");
  r.latest = top.Str("latest");
  if (!top.error().empty()) return Error(ErrorCode::kProtocol, top.error());
  auto versions = s.find("versions");
  auto deltas = s.find("deltas");
  if (versions == s.end() || !versions->is_array() || deltas == s.end() || !deltas->is_array()) {
    return Error(ErrorCode::kProtocol, "release metadata lacks versions/deltas arrays");
  }
  for (const json& v : *versions) {
    if (!v.is_object()) return Error(ErrorCode::kProtocol, "a version entry is not an object");
    Fields f(v, "version entry");
    ReleaseVersion e;
    e.version = f.Str("version");
    e.sha256 = f.Hash("sha256");
    e.length = f.U64("length");
    e.seq = f.U64("seq");
    e.chunk_map_sha256 = f.Hash("chunk_map_sha256", /*required=*/false);
    if (!f.error().empty()) return Error(ErrorCode::kProtocol, f.error());
    r.versions.push_back(std::move(e));
  }
  for (const json& d : *deltas) {
    if (!d.is_object()) return Error(ErrorCode::kProtocol, "a delta entry is not an object");
    Fields f(d, "delta entry");
    ReleaseDelta e;
    e.id = f.I64("id");
    e.from = f.Str("from");
    e.to = f.Str("to");
    e.base_sha256 = f.Hash("base_sha256");
    e.result_sha256 = f.Hash("result_sha256");
    e.format = f.Str("format");
    e.length = f.U64("length");
    e.sha256 = f.Hash("sha256");
    e.chunk_map_sha256 = f.Hash("chunk_map_sha256", /*required=*/false);
    if (!f.error().empty()) return Error(ErrorCode::kProtocol, f.error());
    r.deltas.push_back(std::move(e));
  }
  if (!r.latest.empty() && r.FindVersion(r.latest) == nullptr) {
    return Error(ErrorCode::kProtocol,
                 "release metadata names latest " + r.latest + " but does not list it");
  }
  return r;
}

Result<Release> VerifyRelease(std::string_view envelope, std::string_view public_key_hex,
                              int64_t now, uint64_t min_counter) {
  DS_ASSIGN_OR_RETURN(std::string canonical,
                      VerifyMetadata(envelope, public_key_hex, now, min_counter));
  return ParseRelease(canonical);
}

}  // namespace ds::stream
