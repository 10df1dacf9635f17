// Chunk maps (src/stream): building from files and memory, the versioned serialization, hostile
// serializations, per-leaf verification, and the stream descriptor's JSON.
#include <gtest/gtest.h>

#include <string>

#include "common/byte_writer.h"
#include "common/hash.h"
#include "stream/stream.h"
#include "support/test_util.h"

namespace ds {
namespace {

using stream::BuildChunkMap;
using stream::ChunkMap;
using stream::ParseChunkMap;
using testing::CodeOf;
using testing::RandomBytes;
using testing::TempDir;
using testing::WriteFileOrDie;

constexpr uint64_t kLeaf = 4096;

Bytes Header(uint32_t version, uint32_t leaf_size, uint64_t total, uint64_t count) {
  Bytes out = {'D', 'S', 'C', 'M'};
  ByteWriter w(&out);
  w.WriteU32Le(version);
  w.WriteU32Le(leaf_size);
  w.WriteU64Le(total);
  w.WriteU64Le(count);
  return out;
}

TEST(ChunkMapTest, BuildFromFileMatchesMemoryAndLeafHashes) {
  TempDir dir;
  const Bytes data = RandomBytes(5 * kLeaf + 123, 1);
  WriteFileOrDie(dir.Join("obj"), data);
  Result<ChunkMap> file_map = BuildChunkMap(dir.Join("obj"), kLeaf);
  ASSERT_TRUE(file_map.ok()) << file_map.status().ToString();
  Result<ChunkMap> mem_map = BuildChunkMap(ByteView(data), kLeaf);
  ASSERT_TRUE(mem_map.ok());
  EXPECT_EQ(file_map->Serialize(), mem_map->Serialize());
  EXPECT_EQ(file_map->leaf_size(), kLeaf);
  EXPECT_EQ(file_map->total_size(), data.size());
  ASSERT_EQ(file_map->leaf_count(), 6u);
  EXPECT_EQ(file_map->LeafLength(5), 123u);
  EXPECT_EQ(file_map->leaves()[0], Sha256::Of(ByteView(data).subspan(0, kLeaf)));
  EXPECT_EQ(file_map->leaves()[5], Sha256::Of(ByteView(data).subspan(5 * kLeaf)));
  EXPECT_EQ(file_map->root(), Sha256::Of(file_map->Serialize()));
  EXPECT_EQ(file_map->Serialize().size(), stream::kChunkMapHeaderSize + 6 * 32);
}

TEST(ChunkMapTest, ExactMultipleAndEmptyAndDefaultLeaf) {
  Result<ChunkMap> exact = BuildChunkMap(ByteView(RandomBytes(3 * kLeaf, 2)), kLeaf);
  ASSERT_TRUE(exact.ok());
  EXPECT_EQ(exact->leaf_count(), 3u);
  EXPECT_EQ(exact->LeafLength(2), kLeaf);

  Result<ChunkMap> empty = BuildChunkMap(ByteView(), kLeaf);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->leaf_count(), 0u);
  Result<ChunkMap> parsed = ParseChunkMap(empty->Serialize());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->total_size(), 0u);

  Result<ChunkMap> def = BuildChunkMap(ByteView(RandomBytes(200000, 3)));
  ASSERT_TRUE(def.ok());
  EXPECT_EQ(def->leaf_size(), 64u << 10);
  EXPECT_EQ(def->leaf_count(), 4u);
}

TEST(ChunkMapTest, RejectsInvalidLeafSizes) {
  const Bytes data = RandomBytes(10, 4);
  for (uint64_t leaf : {0ull, 1ull, 2048ull, 4095ull, 6000ull, 32ull << 20}) {
    EXPECT_EQ(CodeOf(BuildChunkMap(ByteView(data), leaf)), ErrorCode::kInvalidArgument) << leaf;
  }
  EXPECT_TRUE(BuildChunkMap(ByteView(data), 16 << 20).ok());
  TempDir dir;
  EXPECT_EQ(CodeOf(BuildChunkMap(dir.Join("missing"), kLeaf)), ErrorCode::kNotFound);
}

TEST(ChunkMapTest, SerializeParseRoundTrip) {
  const Bytes data = RandomBytes(7 * kLeaf + 1, 5);
  Result<ChunkMap> map = BuildChunkMap(ByteView(data), kLeaf);
  ASSERT_TRUE(map.ok());
  const Bytes ser = map->Serialize();
  Result<ChunkMap> back = ParseChunkMap(ser);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->Serialize(), ser);
  EXPECT_EQ(back->root(), map->root());
  EXPECT_EQ(back->leaves(), map->leaves());
  Result<stream::ChunkMapHeader> h = stream::ParseChunkMapHeader(ser);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->leaf_size, kLeaf);
  EXPECT_EQ(h->total_size, data.size());
  EXPECT_EQ(h->count, 8u);
}

TEST(ChunkMapTest, HostileSerializations) {
  const Bytes data = RandomBytes(3 * kLeaf + 10, 6);
  const Bytes good = BuildChunkMap(ByteView(data), kLeaf)->Serialize();

  // Every truncation fails (and never crashes).
  for (size_t n = 0; n < good.size(); ++n) {
    Result<ChunkMap> r = ParseChunkMap(ByteView(good).subspan(0, n));
    EXPECT_EQ(CodeOf(r), ErrorCode::kPatchTruncated) << n;
  }
  Bytes trailing = good;
  trailing.push_back(0);
  EXPECT_EQ(CodeOf(ParseChunkMap(trailing)), ErrorCode::kPatchTrailingData);

  Bytes magic = good;
  magic[0] = 'X';
  EXPECT_EQ(CodeOf(ParseChunkMap(magic)), ErrorCode::kPatchBadMagic);
  EXPECT_EQ(CodeOf(ParseChunkMap(Header(2, kLeaf, 0, 0))), ErrorCode::kPatchVersion);

  // Count that does not match ceil(total / leaf), in either direction.
  EXPECT_EQ(CodeOf(ParseChunkMap(Header(1, kLeaf, 3 * kLeaf + 10, 3))), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(ParseChunkMap(Header(1, kLeaf, 3 * kLeaf, 4))), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(ParseChunkMap(Header(1, kLeaf, 0, 1))), ErrorCode::kPatchMalformed);
  // Leaf sizes.
  EXPECT_EQ(CodeOf(ParseChunkMap(Header(1, 0, 0, 0))), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(ParseChunkMap(Header(1, 5000, 5000, 1))), ErrorCode::kPatchMalformed);
  EXPECT_EQ(CodeOf(ParseChunkMap(Header(1, 1u << 31, 1u << 31, 1))), ErrorCode::kPatchMalformed);
  // Absurd sizes: a consistent header declaring an enormous object is refused from the header
  // alone, without reserving memory for it.
  const uint64_t huge_total = UINT64_MAX - 5;
  const uint64_t huge_count = huge_total / kLeaf + 1;
  EXPECT_EQ(CodeOf(ParseChunkMap(Header(1, kLeaf, huge_total, huge_count))),
            ErrorCode::kResourceLimit);
  // Within the leaf limit but with the hashes missing: truncated, nothing allocated up front.
  const uint64_t big_count = stream::kMaxLeaves;
  EXPECT_EQ(CodeOf(ParseChunkMap(Header(1, kLeaf, big_count * kLeaf, big_count))),
            ErrorCode::kPatchTruncated);
}

TEST(ChunkMapTest, VerifyChunk) {
  const Bytes data = RandomBytes(4 * kLeaf + 100, 7);
  Result<ChunkMap> map = BuildChunkMap(ByteView(data), kLeaf);
  ASSERT_TRUE(map.ok());
  const ByteView all(data);
  EXPECT_TRUE(map->VerifyChunk(0, all).ok());
  EXPECT_TRUE(map->VerifyChunk(0, all.subspan(0, kLeaf)).ok());
  EXPECT_TRUE(map->VerifyChunk(1, all.subspan(kLeaf, 2 * kLeaf)).ok());
  // The short last leaf, alone and with its predecessor.
  EXPECT_TRUE(map->VerifyChunk(4, all.subspan(4 * kLeaf)).ok());
  EXPECT_TRUE(map->VerifyChunk(3, all.subspan(3 * kLeaf)).ok());

  // A flipped byte names its leaf.
  Bytes bad = data;
  bad[2 * kLeaf + 7] ^= 1;
  Status s = map->VerifyChunk(1, ByteView(bad).subspan(kLeaf, 3 * kLeaf));
  EXPECT_EQ(s.code(), ErrorCode::kDigestMismatch);
  EXPECT_NE(s.message().find("leaf 2"), std::string::npos) << s.message();
  // Right bytes at the wrong leaf.
  EXPECT_EQ(map->VerifyChunk(2, all.subspan(kLeaf, kLeaf)).code(), ErrorCode::kDigestMismatch);
  // Not a whole number of leaves: ends inside a leaf, the last leaf cut, or too long.
  EXPECT_EQ(map->VerifyChunk(0, all.subspan(0, kLeaf + 1)).code(), ErrorCode::kDigestMismatch);
  EXPECT_EQ(map->VerifyChunk(4, all.subspan(4 * kLeaf, 99)).code(), ErrorCode::kDigestMismatch);
  Bytes longer(data.begin() + 4 * kLeaf, data.end());
  longer.push_back(0);
  EXPECT_EQ(map->VerifyChunk(4, longer).code(), ErrorCode::kDigestMismatch);
  // Out of range and empty.
  EXPECT_EQ(map->VerifyChunk(5, all.subspan(0, 1)).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(map->VerifyChunk(0, ByteView()).code(), ErrorCode::kInvalidArgument);
}

TEST(StreamDescriptorTest, JsonRoundTripAndValidation) {
  stream::StreamDescriptor d;
  d.artifact = "app";
  d.to = "1.2.0";
  d.result_sha256 = std::string(64, 'a');
  d.result_size = 1000;
  d.kind = "delta";
  d.format = "dspf";
  d.delta_id = 7;
  d.base_sha256 = std::string(64, 'b');
  d.size = 100;
  d.sha256 = std::string(64, 'c');
  d.leaf_size = 65536;
  d.chunk_map_sha256 = std::string(64, 'd');
  d.chunk_map_url = "/v1/chunkmaps/" + d.chunk_map_sha256;
  d.chunks_url = "/v1/chunks/" + d.sha256 + "/";
  Result<stream::StreamDescriptor> back = stream::ParseDescriptor(stream::DescriptorToJson(d));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->delta_id, 7);
  EXPECT_EQ(back->base_sha256, d.base_sha256);
  EXPECT_EQ(back->chunks_url, d.chunks_url);
  EXPECT_TRUE(back->is_delta());

  d.kind = "full";
  back = stream::ParseDescriptor(stream::DescriptorToJson(d));
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->base_sha256.empty());

  EXPECT_EQ(CodeOf(stream::ParseDescriptor("nope")), ErrorCode::kProtocol);
  EXPECT_EQ(CodeOf(stream::ParseDescriptor("{}")), ErrorCode::kProtocol);
  d.kind = "other";
  EXPECT_EQ(CodeOf(stream::ParseDescriptor(stream::DescriptorToJson(d))), ErrorCode::kProtocol);
  d.kind = "full";
  d.leaf_size = 1000;
  EXPECT_EQ(CodeOf(stream::ParseDescriptor(stream::DescriptorToJson(d))), ErrorCode::kProtocol);
  d.leaf_size = 65536;
  d.sha256 = "XYZ";
  EXPECT_EQ(CodeOf(stream::ParseDescriptor(stream::DescriptorToJson(d))), ErrorCode::kProtocol);
  EXPECT_EQ(stream::ChunkRangeName(3, 9), "3-9");
}

stream::StreamDescriptor Step(char base, char result, const std::string& to, uint64_t size) {
  stream::StreamDescriptor d;
  d.artifact = "app";
  d.to = to;
  d.result_sha256 = std::string(64, result);
  d.result_size = 1000;
  d.kind = "delta";
  d.format = "dspf";
  d.delta_id = 1;
  d.base_sha256 = std::string(64, base);
  d.size = size;
  d.sha256 = std::string(63, 'e') + result;
  d.leaf_size = 65536;
  d.chunk_map_sha256 = std::string(63, 'f') + result;
  d.chunk_map_url = "/v1/chunkmaps/" + d.chunk_map_sha256;
  d.chunks_url = "/v1/chunks/" + d.sha256 + "/";
  return d;
}

TEST(StreamDescriptorTest, ChainsRoundTripAndMustAddUp) {
  stream::StreamDescriptor c;
  c.artifact = "app";
  c.to = "3.0.0";
  c.result_sha256 = std::string(64, 'c');
  c.result_size = 1000;
  c.kind = "chain";
  c.base_sha256 = std::string(64, 'a');
  c.source = "chain";
  c.steps = {Step('a', 'b', "2.0.0", 100), Step('b', 'c', "3.0.0", 50)};
  c.size = 150;
  Result<stream::StreamDescriptor> back = stream::ParseDescriptor(stream::DescriptorToJson(c));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->is_chain());
  ASSERT_EQ(back->steps.size(), 2u);
  EXPECT_EQ(back->steps[0].to, "2.0.0");
  EXPECT_EQ(back->steps[1].chunks_url, c.steps[1].chunks_url);
  EXPECT_EQ(back->size, 150u);

  auto refused = [](const stream::StreamDescriptor& d) {
    return CodeOf(stream::ParseDescriptor(stream::DescriptorToJson(d)));
  };
  stream::StreamDescriptor bad = c;
  bad.size = 149;  // Not the sum of its steps.
  EXPECT_EQ(refused(bad), ErrorCode::kProtocol);
  bad = c;
  std::swap(bad.steps[0], bad.steps[1]);  // Steps out of order.
  EXPECT_EQ(refused(bad), ErrorCode::kProtocol);
  bad = c;
  bad.steps[1].result_sha256 = std::string(64, 'd');  // Ends elsewhere than the result.
  EXPECT_EQ(refused(bad), ErrorCode::kProtocol);
  bad = c;
  bad.steps[0].kind = "full";  // A step is not a delta.
  EXPECT_EQ(refused(bad), ErrorCode::kProtocol);
  bad = c;
  bad.steps.clear();
  EXPECT_EQ(refused(bad), ErrorCode::kProtocol);
  bad = c;
  bad.steps.assign(stream::kMaxChainSteps + 1, Step('a', 'a', "3.0.0", 1));
  EXPECT_EQ(refused(bad), ErrorCode::kProtocol);
  bad = c;
  bad.steps[1].size = UINT64_MAX;  // Overflowing sum.
  EXPECT_EQ(refused(bad), ErrorCode::kProtocol);
  // A chain nested in a chain.
  EXPECT_EQ(CodeOf(stream::ParseDescriptor(
                R"({"artifact":"app","to":"3.0.0","result_sha256":")" + std::string(64, 'c') +
                R"(","result_size":1000,"kind":"chain","size":1,"base_sha256":")" +
                std::string(64, 'a') + R"(","steps":[{"kind":"chain"}]})")),
            ErrorCode::kProtocol);
}

}  // namespace
}  // namespace ds

namespace ds::stream {
namespace {

TEST(ChunkRangeNameTest, ParsesWhatItPrintsAndRefusesTheRest) {
  Result<std::pair<uint64_t, uint64_t>> r = ParseChunkRangeName(ChunkRangeName(3, 17));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->first, 3u);
  EXPECT_EQ(r->second, 17u);
  for (const char* bad :
       {"", "-", "3", "3-", "-3", "+3-4", "3-+4", "3-4-5", "a-4", "99999999999999999999-1"}) {
    EXPECT_EQ(ParseChunkRangeName(bad).status().code(), ErrorCode::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace ds::stream
