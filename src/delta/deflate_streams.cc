#include "delta/deflate_streams.h"

#include <algorithm>
#include <cstring>

#include "common/byte_reader.h"
#include "delta/deflate_puff.h"

namespace ds::delta {
namespace {

struct Candidate {
  std::string name;
  uint64_t offset = 0;
  uint64_t length = 0;  // 0: unknown, up to where the stream ends (gzip members).
};

std::vector<Candidate> GzipCandidates(ByteView file) {
  std::vector<Candidate> out;
  Result<std::vector<GzipMember>> members = ParseGzip(file);
  if (!members.ok()) return out;
  for (size_t i = 0; i < members->size(); ++i) {
    const GzipMember& m = (*members)[i];
    out.push_back({"gzip:" + std::to_string(i), m.deflate_offset, m.deflate_size});
  }
  return out;
}

constexpr uint32_t kZipLocal = 0x04034b50, kZipCentral = 0x02014b50, kZipEnd = 0x06054b50;

std::vector<Candidate> ZipCandidates(ByteView file) {
  std::vector<Candidate> out;
  constexpr size_t kEndSize = 22;
  if (file.size() < kEndSize) return out;
  // The end-of-central-directory record: the last one within a comment's reach of the end.
  const uint64_t lowest = file.size() >= kEndSize + 0xFFFF ? file.size() - kEndSize - 0xFFFF : 0;
  uint64_t end_pos = UINT64_MAX;
  for (uint64_t p = file.size() - kEndSize + 1; p-- > lowest;) {
    uint32_t sig;
    std::memcpy(&sig, file.data() + p, 4);
    if (sig == kZipEnd) {
      end_pos = p;
      break;
    }
  }
  if (end_pos == UINT64_MAX) return out;
  ByteReader e(file.subspan(end_pos + 4));
  uint16_t disk, cd_disk, entries_here, entries;
  uint32_t cd_size, cd_offset;
  if (!e.ReadU16Le(&disk) || !e.ReadU16Le(&cd_disk) || !e.ReadU16Le(&entries_here) ||
      !e.ReadU16Le(&entries) || !e.ReadU32Le(&cd_size) || !e.ReadU32Le(&cd_offset)) {
    return out;
  }
  // Multi-disk and ZIP64 archives are left to the byte diff.
  if (disk != 0 || cd_disk != 0 || entries_here != entries || cd_offset == 0xFFFFFFFF ||
      cd_size == 0xFFFFFFFF || uint64_t{cd_offset} + cd_size > end_pos) {
    return out;
  }
  ByteReader cd(file.subspan(cd_offset, cd_size));
  for (uint32_t i = 0; i < entries; ++i) {
    uint32_t sig, crc, csize, usize, ext_attr, lho;
    uint16_t made, need, flags, method, time, date, name_len, extra_len, comment_len, dnum, iattr;
    ByteView name;
    if (!cd.ReadU32Le(&sig) || sig != kZipCentral || !cd.ReadU16Le(&made) || !cd.ReadU16Le(&need) ||
        !cd.ReadU16Le(&flags) || !cd.ReadU16Le(&method) || !cd.ReadU16Le(&time) ||
        !cd.ReadU16Le(&date) || !cd.ReadU32Le(&crc) || !cd.ReadU32Le(&csize) ||
        !cd.ReadU32Le(&usize) || !cd.ReadU16Le(&name_len) || !cd.ReadU16Le(&extra_len) ||
        !cd.ReadU16Le(&comment_len) || !cd.ReadU16Le(&dnum) || !cd.ReadU16Le(&iattr) ||
        !cd.ReadU32Le(&ext_attr) || !cd.ReadU32Le(&lho) || !cd.ReadView(name_len, &name) ||
        !cd.Skip(extra_len) || !cd.Skip(comment_len)) {
      return {};
    }
    // Deflated, not encrypted, sizes known (not ZIP64).
    if (method != 8 || (flags & 1) || csize == 0 || csize == 0xFFFFFFFF || lho == 0xFFFFFFFF) {
      continue;
    }
    if (uint64_t{lho} + 30 > file.size()) continue;
    ByteReader l(file.subspan(lho));
    uint32_t lsig;
    uint16_t lname_len, lextra_len;
    if (!l.ReadU32Le(&lsig) || lsig != kZipLocal || !l.Skip(22) || !l.ReadU16Le(&lname_len) ||
        !l.ReadU16Le(&lextra_len)) {
      continue;
    }
    const uint64_t data = uint64_t{lho} + 30 + lname_len + lextra_len;
    if (data > file.size() || csize > file.size() - data) continue;
    out.push_back({"zip:" + std::string(name.begin(), name.end()), data, csize});
  }
  return out;
}

}  // namespace

std::vector<DeflateStream> FindDeflateStreams(ByteView file, const DeflateStreamLimits& limits) {
  std::vector<Candidate> cands;
  if (file.size() >= 18 && file[0] == 0x1f && file[1] == 0x8b && file[2] == 8) {
    cands = GzipCandidates(file);
  } else if (file.size() >= 30 && file[0] == 'P' && file[1] == 'K' && file[2] == 3 &&
             file[3] == 4) {
    cands = ZipCandidates(file);
  }
  cands.erase(std::remove_if(cands.begin(), cands.end(),
                             [&](const Candidate& c) { return c.length < limits.min_length; }),
              cands.end());
  // The longest first, within the count budget; then by offset, dropping overlaps (a hostile
  // central directory may point two entries at the same bytes).
  std::stable_sort(cands.begin(), cands.end(),
                   [](const Candidate& a, const Candidate& b) { return a.length > b.length; });
  if (cands.size() > limits.max_streams) cands.resize(limits.max_streams);
  std::vector<DeflateStream> out;
  uint64_t total_puff = 0;
  for (const Candidate& c : cands) {
    PuffLimits pl;
    pl.max_puff = limits.max_puff;
    const ByteView stream = file.subspan(c.offset, c.length);
    Result<Puffed> p = Puff(stream, pl);
    if (!p.ok() || p->deflate_size != c.length) continue;
    if (total_puff + p->puff.size() > limits.max_total_puff) continue;
    // Proof that the applier can rebuild the exact bytes.
    Result<Bytes> back = Huff(p->puff);
    if (!back.ok() || back->size() != c.length ||
        std::memcmp(back->data(), stream.data(), c.length) != 0) {
      continue;
    }
    total_puff += p->puff.size();
    out.push_back({c.name, c.offset, c.length, std::move(p->puff)});
  }
  std::sort(out.begin(), out.end(),
            [](const DeflateStream& a, const DeflateStream& b) { return a.offset < b.offset; });
  std::vector<DeflateStream> disjoint;
  for (DeflateStream& s : out) {
    if (!disjoint.empty() && s.offset < disjoint.back().offset + disjoint.back().length) continue;
    disjoint.push_back(std::move(s));
  }
  return disjoint;
}

}  // namespace ds::delta
