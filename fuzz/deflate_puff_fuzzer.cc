// Fuzzes deflate puffs (src/delta/deflate_puff.h) from both ends.
//
// Properties: Puff on arbitrary bytes either fails with kInvalidArgument / kResourceLimit or
// returns a puff within the documented size bound from which Huff rebuilds exactly the bytes the
// stream occupied and InflatePuff the same content Puff saw. The input read as a puff (after the
// puff magic, so that the parser gets past it): Huff and InflatePuff fail alike (kPatchMalformed,
// or kResourceLimit for InflatePuff's cap), and when Huff succeeds its output is a deflate stream
// that puffs back and re-huffs to itself with the same content. ParseGzip never crashes.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "delta/deflate_puff.h"
#include "fuzz_util.h"

namespace {

constexpr uint64_t kCap = 64 << 20;

void FuzzDeflate(ds::ByteView input) {
  ds::delta::PuffLimits limits;
  limits.max_inflated = kCap;
  limits.max_puff = kCap;
  ds::Bytes content;
  ds::Result<ds::delta::Puffed> p = ds::delta::Puff(input, limits, &content);
  if (!p.ok()) {
    FUZZ_CHECK(p.status().code() == ds::ErrorCode::kInvalidArgument ||
               p.status().code() == ds::ErrorCode::kResourceLimit);
    return;
  }
  FUZZ_CHECK(p->deflate_size <= input.size());
  FUZZ_CHECK(p->inflated_size == content.size());
  FUZZ_CHECK(p->puff.size() <= 16 * p->deflate_size + 16);
  ds::Result<ds::Bytes> h = ds::delta::Huff(p->puff);
  FUZZ_CHECK(h.ok());
  FUZZ_CHECK(h->size() == p->deflate_size);
  FUZZ_CHECK(std::equal(h->begin(), h->end(), input.begin()));
  ds::Result<ds::Bytes> c = ds::delta::InflatePuff(p->puff, kCap);
  FUZZ_CHECK(c.ok() && *c == content);
}

void FuzzPuff(ds::ByteView input) {
  ds::Bytes puff = {'D', 'S', 'P', 'U', ds::delta::kPuffVersion};
  puff.insert(puff.end(), input.begin(), input.end());
  ds::Result<ds::Bytes> h = ds::delta::Huff(puff);
  ds::Result<ds::Bytes> c = ds::delta::InflatePuff(puff, kCap);
  if (!h.ok()) {
    FUZZ_CHECK(h.status().code() == ds::ErrorCode::kPatchMalformed);
    FUZZ_CHECK(!c.ok());
    return;
  }
  if (!c.ok()) {
    FUZZ_CHECK(c.status().code() == ds::ErrorCode::kResourceLimit);
    return;
  }
  ds::Bytes content;
  ds::delta::PuffLimits limits;
  limits.max_inflated = kCap;
  ds::Result<ds::delta::Puffed> again = ds::delta::Puff(*h, limits, &content);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->deflate_size == h->size());
  FUZZ_CHECK(content == *c);
  ds::Result<ds::Bytes> h2 = ds::delta::Huff(again->puff);
  FUZZ_CHECK(h2.ok() && *h2 == *h);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ds::ByteView input(data, size);
  FuzzDeflate(input);
  // Bytes that already start with the magic are fed as they are too.
  if (size >= 5 && data[0] == 'D' && data[1] == 'S' && data[2] == 'P' && data[3] == 'U') {
    (void)ds::delta::Huff(input);
    (void)ds::delta::InflatePuff(input, kCap);
  }
  FuzzPuff(input);
  ds::delta::PuffLimits limits;
  limits.max_inflated = kCap;
  (void)ds::delta::ParseGzip(input, limits);
  return 0;
}
