// Fuzzes the delta stream's parsers of untrusted bytes: the chunk map serialization, the stream
// descriptor JSON, and signed release metadata (envelope verification, the signed content's
// parser, semver order) (src/stream). No crash, no large allocation, self-consistent results.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_util.h"
#include "stream/release.h"
#include "stream/stream.h"

// Input: selector byte (mod 3); 0 = chunk map (then the serialization, followed by chunk bytes
// after a split point taken from the second byte), 1 = descriptor JSON, 2 = release metadata.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const ds::ByteView rest(data + 2, size - 2);
  const int selector = data[0] % 3;
  if (selector == 2) {
    const std::string_view text(reinterpret_cast<const char*>(rest.data()), rest.size());
    // An envelope never verifies without the key's signature; it must fail cleanly.
    const std::string key(64, 'a');
    FUZZ_CHECK(!ds::stream::VerifyMetadata(text, key, 0, 0).ok());
    // The signed content's parser, as if the signature had been good.
    ds::Result<ds::stream::Release> r = ds::stream::ParseRelease(text);
    if (r.ok()) {
      if (!r->latest.empty()) FUZZ_CHECK(r->FindVersion(r->latest) != nullptr);
      for (const auto& v : r->versions) {
        FUZZ_CHECK(v.sha256.size() == 64);
        FUZZ_CHECK(r->FindVersionBySha256(v.sha256) != nullptr);
        // Semver order is antisymmetric.
        const auto a = ds::stream::CompareSemver(v.version, r->latest);
        const auto b = ds::stream::CompareSemver(r->latest, v.version);
        FUZZ_CHECK(a.has_value() == b.has_value());
        if (a) FUZZ_CHECK(*a == -*b);
      }
    }
  } else if (selector == 0) {
    ds::Result<ds::stream::ChunkMapHeader> head = ds::stream::ParseChunkMapHeader(rest);
    ds::Result<ds::stream::ChunkMap> map = ds::stream::ParseChunkMap(rest);
    if (map.ok()) {
      // Whole parse implies the header parse, agreeing, and an exact round trip.
      FUZZ_CHECK(head.ok());
      FUZZ_CHECK(head->leaf_size == map->leaf_size());
      FUZZ_CHECK(head->total_size == map->total_size());
      FUZZ_CHECK(head->count == map->leaf_count());
      const ds::Bytes again = map->Serialize();
      FUZZ_CHECK(again.size() == rest.size());
      FUZZ_CHECK(std::equal(again.begin(), again.end(), rest.begin()));
      // Verifying arbitrary bytes against it never crashes and accepts nothing malformed.
      if (map->leaf_count() > 0) {
        const uint64_t first = data[1] % map->leaf_count();
        const ds::ByteView chunk = rest.first(std::min<size_t>(rest.size(), data[1] * 7u));
        (void)map->VerifyChunk(first, chunk);
      }
    }
  } else {
    const std::string_view json(reinterpret_cast<const char*>(rest.data()), rest.size());
    // Chunk names in URLs: what parses prints back the same when it had no leading zeros.
    ds::Result<std::pair<uint64_t, uint64_t>> range = ds::stream::ParseChunkRangeName(json);
    if (range.ok()) {
      const std::string name = ds::stream::ChunkRangeName(range->first, range->second);
      FUZZ_CHECK(ds::stream::ParseChunkRangeName(name).ok());
      FUZZ_CHECK(name.size() <= json.size());
    }
    ds::Result<ds::stream::StreamDescriptor> d = ds::stream::ParseDescriptor(json);
    if (d.ok()) {
      // What was accepted serializes and parses back to the same descriptor.
      ds::Result<ds::stream::StreamDescriptor> back =
          ds::stream::ParseDescriptor(ds::stream::DescriptorToJson(*d));
      FUZZ_CHECK(back.ok());
      FUZZ_CHECK(back->sha256 == d->sha256 && back->size == d->size && back->kind == d->kind);
      FUZZ_CHECK(back->leaf_size == d->leaf_size && back->result_sha256 == d->result_sha256);
      FUZZ_CHECK(back->steps.size() == d->steps.size());
      // An accepted chain adds up: its steps follow each other from the base to the result.
      if (d->is_chain()) {
        FUZZ_CHECK(!d->steps.empty() && d->steps.size() <= ds::stream::kMaxChainSteps);
        std::string at = d->base_sha256;
        uint64_t total = 0;
        for (const ds::stream::StreamDescriptor& step : d->steps) {
          FUZZ_CHECK(step.is_delta() && step.base_sha256 == at);
          at = step.result_sha256;
          total += step.size;
        }
        FUZZ_CHECK(at == d->result_sha256 && total == d->size);
      }
    }
  }
  return 0;
}
