// Bounds-checked ELF64 and PE (Windows .exe/.dll) readers for the generator's executable
// transforms: find the file ranges that hold machine code and the addresses they are loaded at.
//
// Everything is read through ByteReader; nothing in the input is trusted. Sections (or, without
// usable section headers, executable PT_LOAD segments) that run outside the file, have absurd
// sizes or overlap an earlier one are skipped; the result is sorted, non-overlapping and at most
// kMaxCodeRegions long, so it can go into a patch header as it is.
//
// Thread-safety: pure function.
#ifndef DELTASTREAM_DELTA_ELF_H_
#define DELTASTREAM_DELTA_ELF_H_

#include <cstdint>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "delta/patch_format.h"

namespace ds::delta {

inline constexpr uint16_t kElfMachineI386 = 3;
inline constexpr uint16_t kElfMachineX86_64 = 62;
inline constexpr uint16_t kElfMachineAarch64 = 183;

struct ElfCode {
  uint16_t machine = 0;             // e_machine.
  std::vector<CodeRegion> regions;  // Loaded code and data: sorted, disjoint, inside the file.
  bool has_code() const;
};

// Sections come first: allocated PROGBITS (code when executable), DYNAMIC and the init/fini
// arrays. kUnsupported when |file| is not a little-endian ELF64 file; kInvalidArgument when its
// headers are malformed (truncated, out of range). An ELF file without code gives an empty region
// list.
Result<ElfCode> ParseElfCode(ByteView file);

// The same for a PE image (PE32 or PE32+): sections with bytes in the file, code when they hold
// code or are executable, loaded at ImageBase + VirtualAddress. |machine| is in ELF numbering
// (AMD64 -> kElfMachineX86_64, ARM64 -> kElfMachineAarch64, i386 -> kElfMachineI386, anything
// else 0). kUnsupported when |file| is not a PE image (no "MZ", or a DOS program without a PE
// header); kInvalidArgument when its headers are truncated.
Result<ElfCode> ParsePeCode(ByteView file);

// ParseElfCode for an ELF file, ParsePeCode for a PE image, kUnsupported for anything else.
Result<ElfCode> ParseExecutableCode(ByteView file);

// The transform that suits |machine| (kNone when there is none).
Transform TransformForMachine(uint16_t machine);

}  // namespace ds::delta

#endif  // DELTASTREAM_DELTA_ELF_H_
