#include "delta/elf.h"

#include <algorithm>

#include "common/byte_reader.h"

namespace ds::delta {
namespace {

constexpr uint32_t kShtProgbits = 1;
constexpr uint64_t kShfAlloc = 0x2;
constexpr uint64_t kShfExecinstr = 0x4;
constexpr uint32_t kShtDynamic = 6;
constexpr uint32_t kShtInitArray = 14;
constexpr uint32_t kShtFiniArray = 15;
constexpr uint32_t kShtPreinitArray = 16;
constexpr uint32_t kPtLoad = 1;
constexpr uint32_t kPfX = 1;
constexpr size_t kEhdrSize = 64;
constexpr size_t kShdrSize = 64;
constexpr size_t kPhdrSize = 56;
// Reading more headers than this is not worth it (real files have a few dozen).
constexpr uint64_t kMaxHeaders = 4096;

// PE: the COFF header's machines, section flags, and the optional header's magics.
constexpr uint16_t kPeMachineI386 = 0x014C;
constexpr uint16_t kPeMachineAmd64 = 0x8664;
constexpr uint16_t kPeMachineArm64 = 0xAA64;
constexpr uint32_t kScnCntCode = 0x00000020;
constexpr uint32_t kScnMemExecute = 0x20000000;
constexpr uint16_t kPe32Magic = 0x010B;
constexpr uint16_t kPe32PlusMagic = 0x020B;
constexpr size_t kPeSectionSize = 40;

struct Table {
  uint64_t offset = 0;
  uint64_t entsize = 0;
  uint64_t count = 0;
};

// Entry |i| of |t|, or false when it is not inside the file.
bool Entry(ByteView file, const Table& t, uint64_t i, size_t min_size, ByteReader* out) {
  uint64_t at, end;
  if (t.entsize < min_size || i >= t.count) return false;
  if (__builtin_mul_overflow(i, t.entsize, &at) || !CheckedAddU64(t.offset, at, &at) ||
      !CheckedAddU64(at, min_size, &end) || end > file.size()) {
    return false;
  }
  *out = ByteReader(file.subspan(at, min_size));
  return true;
}

// Keeps regions inside the file, sorted and disjoint; merges neighbours with a common mapping and
// drops the smallest when there are too many.
std::vector<CodeRegion> Normalise(std::vector<CodeRegion> in, uint64_t file_size) {
  std::vector<CodeRegion> ok;
  for (const CodeRegion& r : in) {
    uint64_t end;
    if (r.length > 0 && CheckedAddU64(r.offset, r.length, &end) && end <= file_size)
      ok.push_back(r);
  }
  std::sort(ok.begin(), ok.end(), [](const CodeRegion& a, const CodeRegion& b) {
    return a.offset != b.offset ? a.offset < b.offset : a.length > b.length;
  });
  std::vector<CodeRegion> out;
  for (const CodeRegion& r : ok) {
    if (!out.empty()) {
      CodeRegion& p = out.back();
      const uint64_t p_end = p.offset + p.length;
      if (r.offset < p_end) continue;  // Overlaps a kept region: skip it.
      // Adjacent or close (a few alignment bytes), mapped with the same displacement: merge.
      if (r.code == p.code && r.offset - p_end <= 64 && r.vaddr - r.offset == p.vaddr - p.offset) {
        p.length = r.offset + r.length - p.offset;
        continue;
      }
    }
    out.push_back(r);
  }
  while (out.size() > kMaxCodeRegions) {
    auto smallest = std::min_element(
        out.begin(), out.end(),
        [](const CodeRegion& a, const CodeRegion& b) { return a.length < b.length; });
    out.erase(smallest);
  }
  return out;
}

}  // namespace

bool ElfCode::has_code() const {
  return std::any_of(regions.begin(), regions.end(), [](const CodeRegion& c) { return c.code; });
}

Transform TransformForMachine(uint16_t machine) {
  switch (machine) {
    case kElfMachineX86_64:
    case kElfMachineI386:  // The same branch encodings.
      return Transform::kX86Branch;
    case kElfMachineAarch64:
      return Transform::kArm64Branch;
    default:
      return Transform::kNone;
  }
}

Result<ElfCode> ParseElfCode(ByteView file) {
  ByteReader r(file);
  uint8_t ident[16];
  if (!r.ReadInto(ident, sizeof(ident)) || ident[0] != 0x7F || ident[1] != 'E' || ident[2] != 'L' ||
      ident[3] != 'F') {
    return Error(ErrorCode::kUnsupported, "not an ELF file");
  }
  if (ident[4] != 2 || ident[5] != 1) {
    return Error(ErrorCode::kUnsupported, "not a little-endian ELF64 file");
  }
  if (file.size() < kEhdrSize) return Error(ErrorCode::kInvalidArgument, "ELF header truncated");
  uint16_t type, machine, ehsize, phentsize, phnum, shentsize, shnum;
  uint32_t version, flags;
  uint64_t entry, phoff, shoff;
  r.ReadU16Le(&type);
  r.ReadU16Le(&machine);
  r.ReadU32Le(&version);
  r.ReadU64Le(&entry);
  r.ReadU64Le(&phoff);
  r.ReadU64Le(&shoff);
  r.ReadU32Le(&flags);
  r.ReadU16Le(&ehsize);
  r.ReadU16Le(&phentsize);
  r.ReadU16Le(&phnum);
  r.ReadU16Le(&shentsize);
  if (!r.ReadU16Le(&shnum)) return Error(ErrorCode::kInvalidArgument, "ELF header truncated");

  ElfCode out;
  out.machine = machine;
  std::vector<CodeRegion> regions;
  // Section headers: executable PROGBITS sections. shnum 0 with shoff set means the count is in
  // section 0's sh_size (more than 65279 sections).
  Table sh{shoff, shentsize, shnum};
  if (shoff != 0 && shnum == 0) {
    ByteReader s0{ByteView()};
    if (Entry(file, {shoff, shentsize, 1}, 0, kShdrSize, &s0)) {
      uint64_t count = 0;
      s0.Skip(32);
      s0.ReadU64Le(&count);
      sh.count = count;
    }
  }
  if (shoff != 0) {
    const uint64_t count = std::min(sh.count, kMaxHeaders);
    for (uint64_t i = 0; i < count; ++i) {
      ByteReader e{ByteView()};
      if (!Entry(file, sh, i, kShdrSize, &e)) break;
      uint32_t name, stype;
      uint64_t sflags, addr, offset, size;
      e.ReadU32Le(&name);
      e.ReadU32Le(&stype);
      e.ReadU64Le(&sflags);
      e.ReadU64Le(&addr);
      e.ReadU64Le(&offset);
      e.ReadU64Le(&size);
      const bool loaded = stype == kShtProgbits || stype == kShtDynamic || stype == kShtInitArray ||
                          stype == kShtFiniArray || stype == kShtPreinitArray;
      if (loaded && (sflags & kShfAlloc) && size > 0) {
        const bool code = stype == kShtProgbits && (sflags & kShfExecinstr);
        regions.push_back({offset, size, addr, code});
      }
    }
  }
  // Without usable sections: loadable segments (code when executable).
  const bool any_code =
      std::any_of(regions.begin(), regions.end(), [](const CodeRegion& c) { return c.code; });
  if (!any_code && phoff != 0) {
    regions.clear();
    const Table ph{phoff, phentsize, std::min<uint64_t>(phnum, kMaxHeaders)};
    for (uint64_t i = 0; i < ph.count; ++i) {
      ByteReader e{ByteView()};
      if (!Entry(file, ph, i, kPhdrSize, &e)) break;
      uint32_t ptype, pflags;
      uint64_t offset, vaddr, paddr, filesz;
      e.ReadU32Le(&ptype);
      e.ReadU32Le(&pflags);
      e.ReadU64Le(&offset);
      e.ReadU64Le(&vaddr);
      e.ReadU64Le(&paddr);
      e.ReadU64Le(&filesz);
      if (ptype == kPtLoad && filesz > 0)
        regions.push_back({offset, filesz, vaddr, (pflags & kPfX) != 0});
    }
  }
  out.regions = Normalise(std::move(regions), file.size());
  return out;
}

Result<ElfCode> ParsePeCode(ByteView file) {
  if (file.size() < 2 || file[0] != 'M' || file[1] != 'Z') {
    return Error(ErrorCode::kUnsupported, "not a PE image");
  }
  ByteReader dos(file);
  uint32_t pe_offset;
  if (!dos.Skip(0x3C) || !dos.ReadU32Le(&pe_offset)) {
    return Error(ErrorCode::kInvalidArgument, "DOS header truncated");
  }
  // "PE\0\0", then the COFF header (20 bytes).
  uint64_t coff_end;
  if (!CheckedAddU64(pe_offset, 24, &coff_end) || coff_end > file.size()) {
    return Error(ErrorCode::kUnsupported, "a DOS program (no PE header)");
  }
  ByteReader h(file.subspan(pe_offset));
  uint32_t signature = 0, timestamp = 0, symbols = 0, symbol_count = 0;
  uint16_t machine = 0, section_count = 0, optional_size = 0, characteristics = 0;
  h.ReadU32Le(&signature);
  if (signature != 0x00004550) return Error(ErrorCode::kUnsupported, "no PE signature");
  h.ReadU16Le(&machine);
  h.ReadU16Le(&section_count);
  h.ReadU32Le(&timestamp);
  h.ReadU32Le(&symbols);
  h.ReadU32Le(&symbol_count);
  h.ReadU16Le(&optional_size);
  h.ReadU16Le(&characteristics);
  // The optional header: its magic says where ImageBase is (32 bits at 28 in PE32, 64 at 24 in
  // PE32+).
  uint16_t magic = 0;
  uint64_t image_base = 0;
  ByteReader opt(file.subspan(coff_end));
  if (optional_size < 32 || !opt.ReadU16Le(&magic)) {
    return Error(ErrorCode::kInvalidArgument, "PE optional header truncated");
  }
  if (magic == kPe32PlusMagic) {
    if (!opt.Skip(22) || !opt.ReadU64Le(&image_base)) {
      return Error(ErrorCode::kInvalidArgument, "PE optional header truncated");
    }
  } else if (magic == kPe32Magic) {
    uint32_t base32;
    if (!opt.Skip(26) || !opt.ReadU32Le(&base32)) {
      return Error(ErrorCode::kInvalidArgument, "PE optional header truncated");
    }
    image_base = base32;
  } else {
    return Error(ErrorCode::kUnsupported, "unknown PE optional header magic");
  }
  ElfCode out;
  switch (machine) {
    case kPeMachineAmd64:
      out.machine = kElfMachineX86_64;
      break;
    case kPeMachineArm64:
      out.machine = kElfMachineAarch64;
      break;
    case kPeMachineI386:
      out.machine = kElfMachineI386;
      break;
    default:
      out.machine = 0;
  }
  // Sections with bytes in the file (the loader maps VirtualSize of them; SizeOfRawData is
  // rounded up to the file alignment, and VirtualSize may be 0 in object-like images).
  const Table sections{coff_end + optional_size, kPeSectionSize,
                       std::min<uint64_t>(section_count, kMaxHeaders)};
  std::vector<CodeRegion> regions;
  for (uint64_t i = 0; i < sections.count; ++i) {
    ByteReader e{ByteView()};
    if (!Entry(file, sections, i, kPeSectionSize, &e)) break;
    uint32_t virtual_size = 0, virtual_address = 0, raw_size = 0, raw_offset = 0, scn = 0;
    e.Skip(8);  // Name.
    e.ReadU32Le(&virtual_size);
    e.ReadU32Le(&virtual_address);
    e.ReadU32Le(&raw_size);
    e.ReadU32Le(&raw_offset);
    e.Skip(12);  // Relocations and line numbers (object files only).
    e.ReadU32Le(&scn);
    if (raw_size == 0 || raw_offset == 0) continue;  // Uninitialised data.
    const uint64_t length = virtual_size > 0 ? std::min(virtual_size, raw_size) : raw_size;
    const bool code = (scn & (kScnCntCode | kScnMemExecute)) != 0;
    regions.push_back({raw_offset, length, image_base + virtual_address, code});
  }
  out.regions = Normalise(std::move(regions), file.size());
  return out;
}

Result<ElfCode> ParseExecutableCode(ByteView file) {
  if (file.size() >= 4 && file[0] == 0x7F && file[1] == 'E' && file[2] == 'L' && file[3] == 'F') {
    return ParseElfCode(file);
  }
  if (file.size() >= 2 && file[0] == 'M' && file[1] == 'Z') return ParsePeCode(file);
  return Error(ErrorCode::kUnsupported, "neither an ELF file nor a PE image");
}

}  // namespace ds::delta
