// Fuzzes the delta stream's parsers of untrusted bytes: the chunk map serialization and the
// stream descriptor JSON (src/stream). No crash, no large allocation, self-consistent results.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_util.h"
#include "stream/stream.h"

// Input: selector byte; 0 = chunk map (then the serialization, followed by chunk bytes after
// a split point taken from the second byte), 1 = descriptor JSON.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const ds::ByteView rest(data + 2, size - 2);
  if ((data[0] & 1) == 0) {
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
    ds::Result<ds::stream::StreamDescriptor> d = ds::stream::ParseDescriptor(json);
    if (d.ok()) {
      // What was accepted serializes and parses back to the same descriptor.
      ds::Result<ds::stream::StreamDescriptor> back =
          ds::stream::ParseDescriptor(ds::stream::DescriptorToJson(*d));
      FUZZ_CHECK(back.ok());
      FUZZ_CHECK(back->sha256 == d->sha256 && back->size == d->size && back->kind == d->kind);
      FUZZ_CHECK(back->leaf_size == d->leaf_size && back->result_sha256 == d->result_sha256);
    }
  }
  return 0;
}
