// Delta streaming (docs/PROTOCOL.md): chunk maps and the stream descriptor, shared by the master
// (which builds and serves them) and the device agent (which verifies what it pulls). No
// generator, no HTTP: a device links this.
//
// A chunk map splits an object (a patch or a full artifact) into fixed-size leaves (the last may
// be short) and lists the SHA-256 of each. Its serialization is versioned and its SHA-256 (the
// "root") is what the master signs, so a client that trusts the signed metadata can verify every
// chunk it pulls, in any order, from any cache.
//
// Thread-safety: ChunkMap and StreamDescriptor are values; const methods may be called from any
// thread.
#ifndef DELTASTREAM_STREAM_STREAM_H_
#define DELTASTREAM_STREAM_STREAM_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/bytes.h"
#include "common/hash.h"
#include "common/status.h"

namespace ds::stream {

inline constexpr uint64_t kDefaultLeafSize = 64 << 10;
inline constexpr uint64_t kMinLeafSize = 4 << 10;
inline constexpr uint64_t kMaxLeafSize = 16 << 20;
// Largest leaf count a chunk map may declare (128 MiB of hashes; 256 GiB at 64 KiB leaves).
inline constexpr uint64_t kMaxLeaves = 4ull << 20;
// Serialization: "DSCM", u32 version, u32 leaf_size, u64 total_size, u64 count (little-endian),
// then count x 32-byte SHA-256.
inline constexpr uint32_t kChunkMapVersion = 1;
inline constexpr size_t kChunkMapHeaderSize = 28;

// True for a power of two in [kMinLeafSize, kMaxLeafSize].
bool IsValidLeafSize(uint64_t leaf_size);

class ChunkMap {
 public:
  ChunkMap() = default;

  uint64_t leaf_size() const { return leaf_size_; }
  uint64_t total_size() const { return total_size_; }
  uint64_t leaf_count() const { return leaves_.size(); }
  const std::vector<Sha256Digest>& leaves() const { return leaves_; }
  // Offset and length of leaf |i|. REQUIRES: i < leaf_count().
  uint64_t LeafOffset(uint64_t i) const { return i * leaf_size_; }
  uint64_t LeafLength(uint64_t i) const;

  Bytes Serialize() const;
  // SHA-256 of Serialize(): what signed metadata names as chunk_map_sha256.
  Sha256Digest root() const;

  // Checks that |bytes| are exactly the leaves first_leaf, first_leaf + 1, ... (whole leaves;
  // only the object's last leaf is short) and that each hashes to its entry. kDigestMismatch
  // naming the leaf (or the length that does not add up); kInvalidArgument when first_leaf is
  // past the end or |bytes| is empty.
  Status VerifyChunk(uint64_t first_leaf, ByteView bytes) const;

 private:
  friend Result<ChunkMap> BuildChunkMap(const std::string& path, uint64_t leaf_size);
  friend Result<ChunkMap> BuildChunkMap(ByteView data, uint64_t leaf_size);
  friend Result<ChunkMap> ParseChunkMap(ByteView data);

  uint64_t leaf_size_ = kDefaultLeafSize;
  uint64_t total_size_ = 0;
  std::vector<Sha256Digest> leaves_;
};

// Hashes the file at |path| leaf by leaf with positional reads (memory: one leaf).
Result<ChunkMap> BuildChunkMap(const std::string& path, uint64_t leaf_size = kDefaultLeafSize);
// The same over bytes in memory.
Result<ChunkMap> BuildChunkMap(ByteView data, uint64_t leaf_size = kDefaultLeafSize);

// The fixed-size header of a serialized chunk map (enough to serve chunks).
struct ChunkMapHeader {
  uint64_t leaf_size = 0;
  uint64_t total_size = 0;
  uint64_t count = 0;
};
// Parses and validates the first kChunkMapHeaderSize bytes (trailing bytes are ignored).
// kPatchTruncated, kPatchBadMagic, kPatchVersion, kPatchMalformed (leaf size, or a count that is
// not ceil(total / leaf)), kResourceLimit (count above kMaxLeaves).
Result<ChunkMapHeader> ParseChunkMapHeader(ByteView data);
// Parses a whole serialization: the header checks, then exactly count hashes (kPatchTruncated
// when fewer bytes follow, kPatchTrailingData when more). Nothing is allocated before the bytes
// are known to be there.
Result<ChunkMap> ParseChunkMap(ByteView data);

// The answer to "open a stream" (GET /v1/artifacts/{artifact}/stream). Hashes are lower-case hex.
struct StreamDescriptor {
  std::string artifact;
  std::string to;  // Version the stream rebuilds.
  std::string result_sha256;
  uint64_t result_size = 0;
  std::string kind;  // "delta", "full" or "chain" (only when the client asked: chain=1).
  // Delta only (empty / 0 for "full").
  std::string format;
  int64_t delta_id = 0;
  std::string base_sha256;
  // The object streamed (the patch, or the full artifact).
  uint64_t size = 0;
  std::string sha256;
  uint64_t leaf_size = 0;
  std::string chunk_map_sha256;
  std::string chunk_map_url;  // "/v1/chunkmaps/<chunk_map_sha256>"
  std::string chunks_url;     // "/v1/chunks/<sha256>/"; append "<first>-<last>".
  // Optional; set by a proxy (docs/API.md, "Proxy role"): "upstream" (the master's signed delta,
  // relayed), "on-demand" (an unsigned delta the proxy made) or "full". Empty: not serialized.
  std::string source;
  // "chain" only: deltas applied in turn, the first to |base_sha256|, each to the result of the
  // one before, the last rebuilding |result_sha256|. Each step is a "delta" descriptor whose
  // |to| / |result_sha256| / |result_size| name the version it rebuilds; |size| is their sum.
  // The top-level sha256 / leaf_size / chunk map fields are empty for a chain.
  std::vector<StreamDescriptor> steps;

  bool is_delta() const { return kind == "delta"; }
  bool is_chain() const { return kind == "chain"; }
};

// At most this many steps in a chain descriptor.
inline constexpr size_t kMaxChainSteps = 16;

std::string DescriptorToJson(const StreamDescriptor& d);
// kProtocol when |json| is not a well-formed descriptor (missing or mistyped fields, an unknown
// kind, malformed hashes, an invalid leaf size).
Result<StreamDescriptor> ParseDescriptor(std::string_view json);

// "<first>-<last>" (decimal, inclusive) as used in chunk URLs and ETags.
std::string ChunkRangeName(uint64_t first_leaf, uint64_t last_leaf);
// The inverse: two decimal numbers without sign, joined by '-' (kInvalidArgument otherwise).
// The order of first and last is not checked here.
Result<std::pair<uint64_t, uint64_t>> ParseChunkRangeName(std::string_view s);

}  // namespace ds::stream

#endif  // DELTASTREAM_STREAM_STREAM_H_
