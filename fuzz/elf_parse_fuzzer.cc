// Fuzzes the generator's executable readers (ELF and PE) and the branch filters on what they find.
//
// Properties: ParseExecutableCode (ParseElfCode, ParsePeCode) never reads outside the input and
// returns regions a patch header accepts (sorted, disjoint, inside the file, at most
// kMaxCodeRegions); on those regions both
// branch filters are exact inverses of themselves over the whole input and over 64 KiB blocks;
// the old-file direction (targets mapped through an address map) stays in bounds.
#include <cstddef>
#include <cstdint>

#include "delta/branch_filter.h"
#include "delta/elf.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ds::ByteView input(data, size);
  ds::Result<ds::delta::ElfCode> code = ds::delta::ParseExecutableCode(input);
  std::vector<ds::delta::CodeRegion> regions;
  if (code.ok()) {
    FUZZ_CHECK(ds::delta::ValidateCodeRegions(code->regions, size).ok());
    regions = code->regions;
  } else {
    FUZZ_CHECK(code.status().code() == ds::ErrorCode::kUnsupported ||
               code.status().code() == ds::ErrorCode::kInvalidArgument);
    // Still exercise the filters: the whole input as one code region at an address taken from
    // its first bytes.
    if (size == 0) return 0;
    uint64_t vaddr = 0;
    for (size_t i = 0; i < 8 && i < size; ++i) vaddr |= static_cast<uint64_t>(data[i]) << (8 * i);
    regions.push_back({0, size, vaddr, true});
  }
  for (ds::delta::Transform t :
       {ds::delta::Transform::kX86Branch, ds::delta::Transform::kArm64Branch}) {
    ds::Bytes f(input.begin(), input.end());
    ds::delta::ApplyBranchFilter(t, regions, 0, f, true);
    ds::delta::ApplyBranchFilter(t, regions, 0, f, false);
    FUZZ_CHECK(f == ds::Bytes(input.begin(), input.end()));
    // Mapped forward filter: a run moving the first half of the file to the second.
    std::vector<ds::delta::AddressRun> runs;
    if (size >= 2) runs.push_back({0, size / 2, static_cast<int64_t>(size - size / 2)});
    const ds::delta::TargetMap map(regions, regions, runs);
    ds::Bytes g(input.begin(), input.end());
    ds::delta::ApplyBranchFilter(t, regions, 0, g, true, &map);
    FUZZ_CHECK(g.size() == size);
  }
  return 0;
}
