#include "delta/branch_filter.h"

#include <algorithm>
#include <string>

#include "common/byte_reader.h"

namespace ds::delta {
namespace {

inline uint32_t Load32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}
inline void Store32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
  p[2] = static_cast<uint8_t>(v >> 16);
  p[3] = static_cast<uint8_t>(v >> 24);
}

// One-byte opcodes that take a ModRM operand, and the immediate bytes that follow it (0xFF: no
// ModRM form of interest / not listed).
constexpr uint8_t kNoModrm = 0xFF;
struct OpcodeTable {
  uint8_t one[256];
  uint8_t two[256];  // After 0F.
  constexpr OpcodeTable() : one(), two(), start() {
    for (int i = 0; i < 256; ++i) one[i] = two[i] = kNoModrm;
    for (int op :
         {0x01, 0x03, 0x09, 0x0B, 0x11, 0x13, 0x19, 0x1B, 0x21, 0x23, 0x29, 0x2B, 0x31, 0x33, 0x39,
          0x3B, 0x63, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8D, 0xD9, 0xDD, 0xFF}) {
      one[op] = 0;
    }
    for (int op : {0x80, 0x83, 0xC6}) one[op] = 1;
    for (int op : {0x69, 0x81, 0xC7}) one[op] = 4;
    for (int op : {0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x28, 0x29, 0x2A, 0x2C,
                   0x2D, 0x2E, 0x2F, 0x51, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x5B,
                   0x5C, 0x5D, 0x5E, 0x5F, 0x60, 0x61, 0x62, 0x66, 0x6C, 0x6D, 0x6E, 0x6F,
                   0x7E, 0x7F, 0xAF, 0xB6, 0xB7, 0xBE, 0xBF, 0xD4, 0xDB, 0xEB, 0xEF, 0xFE}) {
      two[op] = 0;
    }
    for (int op = 0x40; op <= 0x4F; ++op) two[op] = 0;  // cmovcc
    for (int op : {0x70, 0xC2, 0xC6, 0x3A}) two[op] = 1;
    // Bytes that can begin an instruction the filter converts: E8/E9, 0F, a prefix, a REX byte,
    // or an opcode with a ModRM form of interest. Every other byte is skipped at once.
    for (int b = 0; b < 256; ++b) start[b] = one[b] != kNoModrm;
    for (int b : {0xE8, 0xE9, 0x0F, 0x66, 0xF2, 0xF3}) start[b] = true;
    for (int b = 0x40; b <= 0x4F; ++b) start[b] = true;
  }
  bool start[256];
};
constexpr OpcodeTable kOps;

// x86 / x86-64. Branches: E8 (call rel32), E9 (jmp rel32), 0F 80..8F (jcc rel32). Operands:
// RIP-relative disp32 (ModRM mod=00 rm=101) of common instructions, with an optional 66/F2/F3
// prefix and REX. The 32-bit field becomes field + (address of the next instruction), mod 2^32:
// the absolute target. The bytes that decide (prefixes, opcode, ModRM) are never changed, so
// the inverse makes the same decisions, and the scan resumes after each converted instruction.
// |vaddr| is the address of p[0].
// Records where the scan looks for instructions (ScanSyncPoints): marks every kSyncStep bytes of
// the piece, each set to the first scan position at or after it.
struct SyncRecorder {
  size_t next_mark;  // Piece-relative offset of the next mark to set.
  uint32_t* entry;   // Its table entry.
  uint32_t* end;     // Past the last entry of this piece's marks.
  uint32_t base;     // Block-relative offset of the piece's start.
};

template <bool kRecord>
void FilterX86Impl(uint8_t* p, size_t n, uint64_t vaddr, bool encode, const TargetMap* map,
                   size_t from, SyncRecorder* rec) {
  size_t i = 0;
  while (i < n) {
    if constexpr (kRecord) {
      while (rec->entry != rec->end && i >= rec->next_mark) {
        *rec->entry++ = rec->base + static_cast<uint32_t>(i);
        rec->next_mark += kSyncStep;
      }
    }
    const uint8_t b = p[i];
    if (!kOps.start[b]) {
      ++i;
      continue;
    }
    size_t field = 0, len = 0;
    if ((b == 0xE8 || b == 0xE9) && n - i >= 5) {
      field = i + 1;
      len = 5;
    } else if (b == 0x0F && n - i >= 6 && (p[i + 1] & 0xF0) == 0x80) {
      field = i + 2;
      len = 6;
    } else {
      // [66|F2|F3] [REX] opcode [opcode2] ModRM disp32 [imm]
      size_t j = i;
      if ((p[j] == 0x66 || p[j] == 0xF2 || p[j] == 0xF3) && n - j > 1) ++j;
      if ((p[j] & 0xF0) == 0x40 && n - j > 1) ++j;
      uint8_t imm = kNoModrm;
      if (p[j] == 0x0F) {
        if (n - j > 1) {
          imm = kOps.two[p[j + 1]];
          j += 2;
        }
      } else {
        imm = kOps.one[p[j]];
        ++j;
      }
      if (imm != kNoModrm && j < n && (p[j] & 0xC7) == 0x05 && n - j >= 5u + imm) {
        field = j + 1;
        len = j + 5 + imm - i;
      } else {
        ++i;
        continue;
      }
    }
    if (kRecord || i + len <= from) {  // Before the bytes the caller needs: boundaries only.
      i += len;
      continue;
    }
    const uint64_t next = vaddr + i + len;
    const uint32_t v = Load32(p + field);
    if (map != nullptr) {
      const uint64_t target =
          next + static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(v)));
      Store32(p + field, static_cast<uint32_t>(map->Translate(target, next)));
    } else {
      const uint32_t next32 = static_cast<uint32_t>(next);
      Store32(p + field, encode ? v + next32 : v - next32);
    }
    i += len;
  }
}

void FilterX86(uint8_t* p, size_t n, uint64_t vaddr, bool encode, const TargetMap* map,
               size_t from) {
  FilterX86Impl<false>(p, n, vaddr, encode, map, from, nullptr);
}

// AArch64: B and BL (imm26, in words). Instructions are 4-aligned in the address space.
void FilterArm64(uint8_t* p, size_t n, uint64_t vaddr, bool encode, const TargetMap* map,
                 size_t from) {
  size_t i = static_cast<size_t>((4 - (vaddr & 3)) & 3);
  while (i + 4 <= from) i += 4;  // Words wholly before the bytes the caller needs.
  for (; i + 4 <= n; i += 4) {
    const uint32_t w = Load32(p + i);
    if ((w & 0x7C000000u) != 0x14000000u) continue;
    const uint32_t pc = static_cast<uint32_t>((vaddr + i) >> 2);
    const uint32_t imm = w & 0x03FFFFFFu;
    uint32_t out;
    if (map != nullptr) {
      // Sign-extend the 26-bit word offset.
      const int64_t words = static_cast<int64_t>(static_cast<int32_t>(imm << 6) >> 6);
      const uint64_t target = vaddr + i + static_cast<uint64_t>(words * 4);
      out = static_cast<uint32_t>(map->Translate(target, vaddr + i) >> 2) & 0x03FFFFFFu;
    } else {
      out = (encode ? imm + pc : imm - pc) & 0x03FFFFFFu;
    }
    Store32(p + i, (w & 0xFC000000u) | out);
  }
}

}  // namespace

void ApplyBranchFilter(Transform t, const std::vector<CodeRegion>& regions, uint64_t file_pos,
                       std::span<uint8_t> data, bool encode, const TargetMap* map,
                       uint64_t convert_from) {
  if (t == Transform::kNone || data.empty()) return;
  if (!encode || (map != nullptr && map->empty())) map = nullptr;
  const uint64_t end = file_pos + data.size();
  for (const CodeRegion& r : regions) {
    if (!r.code) continue;
    const uint64_t r_end = r.offset + r.length;
    uint64_t a = std::max(file_pos, r.offset);
    const uint64_t b = std::min(end, r_end);
    while (a < b) {
      const uint64_t block_end = (a / kFilterBlockSize + 1) * kFilterBlockSize;
      const uint64_t piece_end = std::min(b, block_end);
      uint8_t* p = data.data() + (a - file_pos);
      const size_t n = static_cast<size_t>(piece_end - a);
      const uint64_t vaddr = r.vaddr + (a - r.offset);
      const size_t from =
          convert_from > a ? static_cast<size_t>(std::min<uint64_t>(convert_from - a, n)) : 0;
      if (piece_end <= convert_from) {
        // Wholly before the needed bytes, and the scan restarts at the next piece: skip.
      } else if (t == Transform::kX86Branch) {
        FilterX86(p, n, vaddr, encode, map, from);
      } else if (t == Transform::kArm64Branch) {
        FilterArm64(p, n, vaddr, encode, map, from);
      }
      a = piece_end;
    }
  }
}

std::vector<uint32_t> ScanSyncPoints(Transform t, const std::vector<CodeRegion>& regions,
                                     uint64_t block_start, ByteView block) {
  const size_t marks = static_cast<size_t>((block.size() + kSyncStep - 1) / kSyncStep);
  std::vector<uint32_t> sync(marks);
  for (size_t k = 0; k < marks; ++k) sync[k] = static_cast<uint32_t>(k * kSyncStep);
  if (t != Transform::kX86Branch) return sync;  // AArch64 words need no scan.
  const uint64_t end = block_start + block.size();
  for (const CodeRegion& r : regions) {
    if (!r.code) continue;
    const uint64_t a = std::max(block_start, r.offset);
    const uint64_t b = std::min(end, r.offset + r.length);
    if (a >= b) continue;
    const uint32_t base = static_cast<uint32_t>(a - block_start);
    // The marks inside [a, b): from the first at or after a to the last before b.
    const size_t first = (base + kSyncStep - 1) / kSyncStep;
    const size_t last = static_cast<size_t>((b - block_start + kSyncStep - 1) / kSyncStep);
    if (first >= last) continue;
    SyncRecorder rec{first * kSyncStep - base, sync.data() + first, sync.data() + last, base};
    // The scan reads only; the bytes are not changed (kRecord converts nothing).
    FilterX86Impl<true>(const_cast<uint8_t*>(block.data()) + base, static_cast<size_t>(b - a),
                        r.vaddr + (a - r.offset), true, nullptr, 0, &rec);
    while (rec.entry != rec.end) *rec.entry++ = static_cast<uint32_t>(b - block_start);
  }
  return sync;
}

TargetMap::TargetMap(std::vector<CodeRegion> old_regions, std::vector<CodeRegion> new_regions,
                     std::vector<AddressRun> runs)
    : old_by_vaddr_(std::move(old_regions)),
      new_regions_(std::move(new_regions)),
      runs_(std::move(runs)) {
  std::sort(old_by_vaddr_.begin(), old_by_vaddr_.end(),
            [](const CodeRegion& a, const CodeRegion& b) { return a.vaddr < b.vaddr; });
  if (runs_.empty()) return;
  const uint64_t last_start = runs_.back().old_offset;
  page_shift_ = 12;
  while (page_shift_ < 63 && (last_start >> page_shift_) >= (uint64_t{1} << 16)) ++page_shift_;
  run_page_.resize(static_cast<size_t>(last_start >> page_shift_) + 1);
  size_t r = 0;
  for (size_t p = 0; p < run_page_.size(); ++p) {
    const uint64_t page_start = static_cast<uint64_t>(p) << page_shift_;
    while (r + 1 < runs_.size() && runs_[r + 1].old_offset <= page_start) ++r;
    run_page_[p] = static_cast<uint32_t>(r);
  }
}

uint64_t TargetMap::Translate(uint64_t old_target, uint64_t old_site) const {
  uint64_t out;
  if (Map(old_target, &out)) return out;
  if (Map(old_site, &out)) return old_target + (out - old_site);
  return old_target;
}

bool TargetMap::Map(uint64_t old_target, uint64_t* new_addr) const {
  // Old address -> old file offset (the last region starting at or before the address).
  auto r = std::upper_bound(old_by_vaddr_.begin(), old_by_vaddr_.end(), old_target,
                            [](uint64_t v, const CodeRegion& reg) { return v < reg.vaddr; });
  if (r == old_by_vaddr_.begin()) return false;
  --r;
  if (old_target - r->vaddr >= r->length) return false;
  const uint64_t old_off = r->offset + (old_target - r->vaddr);
  // Old offset -> new offset. The runs that may hold old_off start between its page's first
  // candidate and the next page's.
  if (runs_.empty()) return false;
  const size_t page =
      static_cast<size_t>(std::min<uint64_t>(old_off >> page_shift_, run_page_.size() - 1));
  const auto lo = runs_.begin() + run_page_[page];
  const auto hi =
      page + 1 < run_page_.size() ? runs_.begin() + run_page_[page + 1] + 1 : runs_.end();
  auto run = std::upper_bound(lo, hi, old_off,
                              [](uint64_t o, const AddressRun& a) { return o < a.old_offset; });
  if (run == runs_.begin()) return false;
  --run;
  if (old_off - run->old_offset >= run->length) return false;
  const uint64_t new_off = old_off + static_cast<uint64_t>(run->delta);
  // New offset -> new address.
  auto nr = std::upper_bound(new_regions_.begin(), new_regions_.end(), new_off,
                             [](uint64_t o, const CodeRegion& reg) { return o < reg.offset; });
  if (nr == new_regions_.begin()) return false;
  --nr;
  if (new_off - nr->offset >= nr->length) return false;
  *new_addr = nr->vaddr + (new_off - nr->offset);
  return true;
}

Status ValidateCodeRegions(const std::vector<CodeRegion>& regions, uint64_t file_size) {
  if (regions.size() > kMaxCodeRegions) {
    return Error(ErrorCode::kPatchMalformed, std::to_string(regions.size()) +
                                                 " code regions (at most " +
                                                 std::to_string(kMaxCodeRegions) + ")");
  }
  uint64_t prev_end = 0;
  for (const CodeRegion& r : regions) {
    uint64_t end;
    if (r.length == 0 || r.offset < prev_end || !CheckedAddU64(r.offset, r.length, &end) ||
        end > file_size) {
      return Error(ErrorCode::kPatchMalformed, "code regions overlap, are empty or out of range");
    }
    prev_end = end;
  }
  return Status::Ok();
}

}  // namespace ds::delta
