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
    case 3:  // EM_386: the same branch encodings.
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

}  // namespace ds::delta
