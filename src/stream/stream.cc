#include "stream/stream.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/byte_reader.h"
#include "common/byte_writer.h"
#include "common/fs.h"

namespace ds::stream {
namespace {

using nlohmann::json;

constexpr char kMagic[4] = {'D', 'S', 'C', 'M'};

bool IsLowerHex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

uint64_t CeilDiv(uint64_t a, uint64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

Status CheckLeafSize(uint64_t leaf_size) {
  if (!IsValidLeafSize(leaf_size)) {
    return Error(ErrorCode::kInvalidArgument,
                 "leaf size " + std::to_string(leaf_size) +
                     " is not a power of two between 4 KiB and 16 MiB");
  }
  return Status::Ok();
}

}  // namespace

bool IsValidLeafSize(uint64_t leaf_size) {
  return leaf_size >= kMinLeafSize && leaf_size <= kMaxLeafSize &&
         (leaf_size & (leaf_size - 1)) == 0;
}

uint64_t ChunkMap::LeafLength(uint64_t i) const {
  const uint64_t offset = LeafOffset(i);
  return std::min(leaf_size_, total_size_ - offset);
}

Bytes ChunkMap::Serialize() const {
  Bytes out;
  out.reserve(kChunkMapHeaderSize + leaves_.size() * 32);
  ByteWriter w(&out);
  w.WriteBytes(ByteView(reinterpret_cast<const uint8_t*>(kMagic), sizeof(kMagic)));
  w.WriteU32Le(kChunkMapVersion);
  w.WriteU32Le(static_cast<uint32_t>(leaf_size_));
  w.WriteU64Le(total_size_);
  w.WriteU64Le(leaves_.size());
  for (const Sha256Digest& d : leaves_) w.WriteBytes(ByteView(d.data(), d.size()));
  return out;
}

Sha256Digest ChunkMap::root() const { return Sha256::Of(Serialize()); }

Status ChunkMap::VerifyChunk(uint64_t first_leaf, ByteView bytes) const {
  if (first_leaf >= leaves_.size()) {
    return Error(ErrorCode::kInvalidArgument, "leaf " + std::to_string(first_leaf) +
                                                  " is past the last of " +
                                                  std::to_string(leaves_.size()));
  }
  if (bytes.empty()) return Error(ErrorCode::kInvalidArgument, "empty chunk");
  uint64_t leaf = first_leaf;
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (leaf >= leaves_.size()) {
      return Error(ErrorCode::kDigestMismatch, "chunk from leaf " + std::to_string(first_leaf) +
                                                   " has " + std::to_string(bytes.size() - pos) +
                                                   " bytes past the object's end");
    }
    const uint64_t len = LeafLength(leaf);
    if (bytes.size() - pos < len) {
      return Error(ErrorCode::kDigestMismatch, "chunk ends inside leaf " + std::to_string(leaf) +
                                                   " (" + std::to_string(bytes.size() - pos) +
                                                   " of " + std::to_string(len) + " bytes)");
    }
    if (Sha256::Of(bytes.subspan(pos, len)) != leaves_[leaf]) {
      return Error(ErrorCode::kDigestMismatch,
                   "leaf " + std::to_string(leaf) + " does not match its SHA-256 in the chunk map");
    }
    pos += len;
    ++leaf;
  }
  return Status::Ok();
}

Result<ChunkMap> BuildChunkMap(const std::string& path, uint64_t leaf_size) {
  DS_RETURN_IF_ERROR(CheckLeafSize(leaf_size));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> file, RandomAccessFile::Open(path));
  const uint64_t count = CeilDiv(file->size(), leaf_size);
  if (count > kMaxLeaves) {
    return Error(ErrorCode::kResourceLimit,
                 path + " needs more than " + std::to_string(kMaxLeaves) + " leaves");
  }
  ChunkMap map;
  map.leaf_size_ = leaf_size;
  map.total_size_ = file->size();
  map.leaves_.reserve(count);
  Bytes buf(std::min<uint64_t>(leaf_size, file->size()));
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t len = map.LeafLength(i);
    std::span<uint8_t> out(buf.data(), len);
    DS_RETURN_IF_ERROR(file->ReadAt(map.LeafOffset(i), out));
    map.leaves_.push_back(Sha256::Of(out));
  }
  return map;
}

Result<ChunkMap> BuildChunkMap(ByteView data, uint64_t leaf_size) {
  DS_RETURN_IF_ERROR(CheckLeafSize(leaf_size));
  const uint64_t count = CeilDiv(data.size(), leaf_size);
  if (count > kMaxLeaves) {
    return Error(ErrorCode::kResourceLimit,
                 "object needs more than " + std::to_string(kMaxLeaves) + " leaves");
  }
  ChunkMap map;
  map.leaf_size_ = leaf_size;
  map.total_size_ = data.size();
  map.leaves_.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    map.leaves_.push_back(Sha256::Of(data.subspan(map.LeafOffset(i), map.LeafLength(i))));
  }
  return map;
}

Result<ChunkMapHeader> ParseChunkMapHeader(ByteView data) {
  ByteReader r(data);
  ByteView magic;
  uint32_t version = 0, leaf_size = 0;
  ChunkMapHeader h;
  if (!r.ReadView(sizeof(kMagic), &magic)) {
    return Error(ErrorCode::kPatchTruncated, "chunk map shorter than its magic");
  }
  if (std::memcmp(magic.data(), kMagic, sizeof(kMagic)) != 0) {
    return Error(ErrorCode::kPatchBadMagic, "not a chunk map (magic is not DSCM)");
  }
  if (!r.ReadU32Le(&version)) return Error(ErrorCode::kPatchTruncated, "chunk map truncated");
  if (version != kChunkMapVersion) {
    return Error(ErrorCode::kPatchVersion,
                 "chunk map version " + std::to_string(version) + " is not supported");
  }
  if (!r.ReadU32Le(&leaf_size) || !r.ReadU64Le(&h.total_size) || !r.ReadU64Le(&h.count)) {
    return Error(ErrorCode::kPatchTruncated, "chunk map header truncated");
  }
  h.leaf_size = leaf_size;
  if (!IsValidLeafSize(h.leaf_size)) {
    return Error(ErrorCode::kPatchMalformed,
                 "chunk map leaf size " + std::to_string(h.leaf_size) + " is invalid");
  }
  if (h.count != CeilDiv(h.total_size, h.leaf_size)) {
    return Error(ErrorCode::kPatchMalformed, "chunk map declares " + std::to_string(h.count) +
                                                 " leaves for " + std::to_string(h.total_size) +
                                                 " bytes of " + std::to_string(h.leaf_size));
  }
  if (h.count > kMaxLeaves) {
    return Error(ErrorCode::kResourceLimit, "chunk map declares " + std::to_string(h.count) +
                                                " leaves (limit " + std::to_string(kMaxLeaves) +
                                                ")");
  }
  return h;
}

Result<ChunkMap> ParseChunkMap(ByteView data) {
  DS_ASSIGN_OR_RETURN(ChunkMapHeader h, ParseChunkMapHeader(data));
  ByteReader r(data);
  if (!r.Skip(kChunkMapHeaderSize)) return Error(ErrorCode::kInternal, "header vanished");
  // h.count <= kMaxLeaves, so the product cannot overflow.
  const uint64_t hash_bytes = h.count * 32;
  if (r.remaining() < hash_bytes) {
    return Error(ErrorCode::kPatchTruncated, "chunk map holds " + std::to_string(r.remaining()) +
                                                 " bytes of hashes, needs " +
                                                 std::to_string(hash_bytes));
  }
  if (r.remaining() > hash_bytes) {
    return Error(ErrorCode::kPatchTrailingData, "bytes after the chunk map's last hash");
  }
  ChunkMap map;
  map.leaf_size_ = h.leaf_size;
  map.total_size_ = h.total_size;
  map.leaves_.resize(h.count);
  for (Sha256Digest& d : map.leaves_) {
    if (!r.ReadInto(d.data(), d.size())) return Error(ErrorCode::kInternal, "hash vanished");
  }
  return map;
}

std::string ChunkRangeName(uint64_t first_leaf, uint64_t last_leaf) {
  return std::to_string(first_leaf) + "-" + std::to_string(last_leaf);
}

Result<std::pair<uint64_t, uint64_t>> ParseChunkRangeName(std::string_view s) {
  const size_t dash = s.find('-');
  auto num = [](std::string_view t, uint64_t* v) {
    if (t.empty() || t.size() > 19) return false;
    const auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), *v);
    return ec == std::errc() && p == t.data() + t.size();
  };
  std::pair<uint64_t, uint64_t> r;
  if (dash == std::string_view::npos || !num(s.substr(0, dash), &r.first) ||
      !num(s.substr(dash + 1), &r.second)) {
    return Error(ErrorCode::kInvalidArgument, "a chunk is named <first>-<last> (leaf numbers)");
  }
  return r;
}

namespace {

json DescriptorJson(const StreamDescriptor& d) {
  if (d.is_chain()) {
    json steps = json::array();
    for (const StreamDescriptor& step : d.steps) steps.push_back(DescriptorJson(step));
    json j{{"artifact", d.artifact},
           {"to", d.to},
           {"result_sha256", d.result_sha256},
           {"result_size", d.result_size},
           {"kind", d.kind},
           {"size", d.size},
           {"base_sha256", d.base_sha256},
           {"steps", std::move(steps)}};
    if (!d.source.empty()) j["source"] = d.source;
    return j;
  }
  json j{{"artifact", d.artifact},
         {"to", d.to},
         {"result_sha256", d.result_sha256},
         {"result_size", d.result_size},
         {"kind", d.kind},
         {"size", d.size},
         {"sha256", d.sha256},
         {"leaf_size", d.leaf_size},
         {"chunk_map_sha256", d.chunk_map_sha256},
         {"chunk_map_url", d.chunk_map_url},
         {"chunks_url", d.chunks_url}};
  if (d.is_delta()) {
    j["format"] = d.format;
    j["delta_id"] = d.delta_id;
    j["base_sha256"] = d.base_sha256;
  }
  if (!d.source.empty()) j["source"] = d.source;
  return j;
}

// |nested|: a chain's step, which must be a delta.
Result<StreamDescriptor> DescriptorFromJson(const json& j, bool nested) {
  if (!j.is_object()) return Error(ErrorCode::kProtocol, "stream descriptor is not a JSON object");
  StreamDescriptor d;
  std::string missing;
  auto str = [&](const char* name, std::string* out) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_string()) {
      missing = name;
      return;
    }
    *out = it->get<std::string>();
  };
  auto u64 = [&](const char* name, uint64_t* out) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_number_unsigned()) {
      missing = name;
      return;
    }
    *out = it->get<uint64_t>();
  };
  str("artifact", &d.artifact);
  str("to", &d.to);
  str("result_sha256", &d.result_sha256);
  u64("result_size", &d.result_size);
  str("kind", &d.kind);
  u64("size", &d.size);
  if (d.kind == "chain") {
    if (nested) return Error(ErrorCode::kProtocol, "a chain's step is itself a chain");
    str("base_sha256", &d.base_sha256);
    auto it = j.find("steps");
    if (it == j.end() || !it->is_array() || it->empty() || it->size() > kMaxChainSteps) {
      return Error(ErrorCode::kProtocol,
                   "a chain descriptor needs 1 to " + std::to_string(kMaxChainSteps) + " steps");
    }
    uint64_t total = 0;
    std::string base = d.base_sha256;
    for (const json& step : *it) {
      DS_ASSIGN_OR_RETURN(StreamDescriptor s, DescriptorFromJson(step, /*nested=*/true));
      if (s.base_sha256 != base || s.artifact != d.artifact) {
        return Error(ErrorCode::kProtocol, "a chain's steps do not follow each other");
      }
      base = s.result_sha256;
      if (s.size > UINT64_MAX - total) {
        return Error(ErrorCode::kProtocol, "a chain's size overflows");
      }
      total += s.size;
      d.steps.push_back(std::move(s));
    }
    if (!missing.empty()) {
      return Error(ErrorCode::kProtocol, "stream descriptor lacks a valid \"" + missing + "\"");
    }
    if (base != d.result_sha256 || d.steps.back().result_size != d.result_size ||
        d.steps.back().to != d.to || total != d.size) {
      return Error(ErrorCode::kProtocol, "a chain's steps do not add up to its result and size");
    }
  } else {
    str("sha256", &d.sha256);
    u64("leaf_size", &d.leaf_size);
    str("chunk_map_sha256", &d.chunk_map_sha256);
    str("chunk_map_url", &d.chunk_map_url);
    str("chunks_url", &d.chunks_url);
    if (d.kind == "delta") {
      str("format", &d.format);
      str("base_sha256", &d.base_sha256);
      uint64_t id = 0;
      u64("delta_id", &id);
      if (id > static_cast<uint64_t>(INT64_MAX)) missing = "delta_id";
      d.delta_id = static_cast<int64_t>(id);
    }
  }
  if (auto it = j.find("source"); it != j.end()) {
    if (it->is_string()) {
      d.source = it->get<std::string>();
    } else {
      missing = "source";
    }
  }
  if (!missing.empty()) {
    return Error(ErrorCode::kProtocol, "stream descriptor lacks a valid \"" + missing + "\"");
  }
  if (d.kind != "delta" && d.kind != "full" && d.kind != "chain") {
    return Error(ErrorCode::kProtocol, "stream descriptor kind \"" + d.kind + "\" is unknown");
  }
  if (nested && d.kind != "delta") {
    return Error(ErrorCode::kProtocol, "a chain's step is not a delta");
  }
  if (d.is_chain()) {
    if (!IsLowerHex64(d.result_sha256) || !IsLowerHex64(d.base_sha256)) {
      return Error(ErrorCode::kProtocol, "stream descriptor has a malformed hash");
    }
    return d;
  }
  if (!IsLowerHex64(d.result_sha256) || !IsLowerHex64(d.sha256) ||
      !IsLowerHex64(d.chunk_map_sha256) || (d.is_delta() && !IsLowerHex64(d.base_sha256))) {
    return Error(ErrorCode::kProtocol, "stream descriptor has a malformed hash");
  }
  if (!IsValidLeafSize(d.leaf_size)) {
    return Error(ErrorCode::kProtocol, "stream descriptor has an invalid leaf size");
  }
  return d;
}

}  // namespace

std::string DescriptorToJson(const StreamDescriptor& d) { return DescriptorJson(d).dump(); }

Result<StreamDescriptor> ParseDescriptor(std::string_view text) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Error(ErrorCode::kProtocol, "stream descriptor is not a JSON object");
  }
  return DescriptorFromJson(j, /*nested=*/false);
}

}  // namespace ds::stream
