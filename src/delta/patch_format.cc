#include "delta/patch_format.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "common/byte_reader.h"
#include "common/byte_writer.h"
#include "delta/branch_filter.h"

namespace ds::delta {

const char* MethodName(Method m) {
  switch (m) {
    case Method::kStored:
      return "stored";
    case Method::kCopyDiff:
      return "copydiff";
    case Method::kZstdRef:
      return "zstdref";
    case Method::kLzmaRef:
      return "lzmaref";
  }
  return "unknown";
}

const char* TransformName(Transform t) {
  switch (t) {
    case Transform::kNone:
      return "none";
    case Transform::kX86Branch:
      return "x86-branch";
    case Transform::kArm64Branch:
      return "arm64-branch";
    case Transform::kDeflate:
      return "deflate";
    case Transform::kXz:
      return "xz";
    case Transform::kXzReplay:
      return "xz-replay";
  }
  return "unknown";
}

const char* StreamCodecName(StreamCodec c) {
  switch (c) {
    case StreamCodec::kStored:
      return "stored";
    case StreamCodec::kZstd:
      return "zstd";
    case StreamCodec::kLzma2:
      return "lzma2";
  }
  return "unknown";
}

uint64_t LzmaRefDictSize(uint64_t ref_length, uint64_t new_length) {
  return std::max<uint64_t>(4096, ref_length + new_length);
}

void WriteFileHeader(const FileHeader& h, Bytes* out) {
  Bytes fields;
  ByteWriter f(&fields);
  f.WriteU8(static_cast<uint8_t>(h.algorithm));
  f.WriteVarint(h.flags);
  f.WriteVarint(h.old_size);
  f.WriteBytes(h.old_sha256);
  f.WriteVarint(h.new_size);
  f.WriteBytes(h.new_sha256);
  f.WriteVarint(h.segment_count);
  f.WriteVarint(h.max_segment_output);
  f.WriteVarint(h.max_segment_payload);
  f.WriteVarint(h.max_ref_window);
  Bytes tables;
  if (h.flags & kFlagCodeRegions) {
    ByteWriter t(&tables);
    for (const std::vector<CodeRegion>* table : {&h.old_regions, &h.new_regions}) {
      t.WriteVarint(table->size());
      for (const CodeRegion& r : *table) {
        t.WriteVarint(r.offset);
        t.WriteVarint(r.length);
        t.WriteVarint(r.vaddr);
        t.WriteVarint(r.code ? 1 : 0);
      }
    }
    t.WriteVarint(h.address_map.size());
    uint64_t prev_end = 0;
    int64_t prev_delta = 0;
    for (const AddressRun& r : h.address_map) {
      t.WriteVarint(r.old_offset - prev_end);
      t.WriteVarint(r.length);
      t.WriteSignedVarint(r.delta - prev_delta);
      prev_end = r.old_offset + r.length;
      prev_delta = r.delta;
    }
    t.WriteVarint(h.transform_saved);
    f.WriteVarint(tables.size());
    f.WriteU32Le(Crc32c(tables));
  }
  if (h.flags & kFlagRecompress) {
    f.WriteVarint(h.max_decoded);
    f.WriteVarint(h.max_encoder_memory);
    f.WriteVarint(h.recompress_saved);
  }

  const size_t start = out->size();
  ByteWriter w(out);
  w.WriteBytes(kPatchMagic);
  w.WriteU8(h.major);
  w.WriteU8(h.minor);
  w.WriteVarint(fields.size() + 4);
  w.WriteBytes(fields);
  const uint32_t crc = Crc32c(ByteView(out->data() + start, out->size() - start));
  w.WriteU32Le(crc);
  w.WriteBytes(tables);
}

namespace {

Status ParseTables(ByteView tables, FileHeader* h) {
  ByteReader t(tables);
  const Status truncated = Error(ErrorCode::kPatchMalformed, "transform tables truncated");
  for (std::vector<CodeRegion>* table : {&h->old_regions, &h->new_regions}) {
    uint64_t count;
    if (!t.ReadVarint(&count)) return truncated;
    if (count > kMaxCodeRegions) return Error(ErrorCode::kPatchMalformed, "too many code regions");
    table->resize(count);
    for (CodeRegion& r : *table) {
      uint64_t kind;
      if (!t.ReadVarint(&r.offset) || !t.ReadVarint(&r.length) || !t.ReadVarint(&r.vaddr) ||
          !t.ReadVarint(&kind)) {
        return truncated;
      }
      if (kind > 1) return Error(ErrorCode::kPatchMalformed, "unknown code region kind");
      r.code = kind == 1;
    }
  }
  uint64_t runs;
  if (!t.ReadVarint(&runs)) return truncated;
  // Each run takes at least three bytes.
  if (runs > kMaxAddressRuns || runs > t.remaining() / 3) {
    return Error(ErrorCode::kPatchMalformed, "address map too long");
  }
  h->address_map.resize(runs);
  uint64_t prev_end = 0;
  int64_t prev_delta = 0;
  for (AddressRun& r : h->address_map) {
    uint64_t gap;
    int64_t dd;
    if (!t.ReadVarint(&gap) || !t.ReadVarint(&r.length) || !t.ReadSignedVarint(&dd)) {
      return truncated;
    }
    if (!CheckedAddU64(prev_end, gap, &r.old_offset) || r.length == 0 ||
        !CheckedAddU64(r.old_offset, r.length, &prev_end) || prev_end > h->old_size ||
        __builtin_add_overflow(prev_delta, dd, &r.delta)) {
      return Error(ErrorCode::kPatchMalformed, "address map out of range");
    }
    // The run's image must lie inside the new file.
    int64_t new_start;
    if (__builtin_add_overflow(static_cast<int64_t>(r.old_offset), r.delta, &new_start) ||
        new_start < 0 || static_cast<uint64_t>(new_start) > h->new_size ||
        r.length > h->new_size - static_cast<uint64_t>(new_start)) {
      return Error(ErrorCode::kPatchMalformed, "address map points outside the new file");
    }
    prev_delta = r.delta;
  }
  if (!t.ReadVarint(&h->transform_saved)) return truncated;
  if (!t.empty()) return Error(ErrorCode::kPatchMalformed, "bytes after the transform tables");
  return Status::Ok();
}

}  // namespace

Status ParseFileHeader(ByteView buf, FileHeader* h, size_t* consumed) {
  *consumed = 0;
  const size_t magic_len = std::min(buf.size(), kPatchMagic.size());
  if (std::memcmp(buf.data(), kPatchMagic.data(), magic_len) != 0) {
    return Error(ErrorCode::kPatchBadMagic, "not a deltastream patch (bad magic)");
  }
  ByteReader r(buf);
  uint8_t major, minor;
  uint64_t len;
  if (!r.Skip(4) || !r.ReadU8(&major) || !r.ReadU8(&minor)) return Status::Ok();
  if (major != kFormatMajor) {
    return Error(ErrorCode::kPatchVersion, "patch format version " + std::to_string(major) + "." +
                                               std::to_string(minor) + " is not supported");
  }
  if (!r.ReadVarint(&len)) {
    if (r.remaining() >= 10) return Error(ErrorCode::kPatchMalformed, "bad header length");
    return Status::Ok();
  }
  if (len < 4 || len > kMaxFileHeaderLen) {
    return Error(ErrorCode::kPatchMalformed, "header length " + std::to_string(len));
  }
  if (r.remaining() < len) return Status::Ok();
  const size_t body_start = r.position();
  const size_t total = body_start + len;
  uint32_t stored_crc;
  ByteReader crc_reader(buf.subspan(total - 4, 4));
  crc_reader.ReadU32Le(&stored_crc);
  if (Crc32c(buf.first(total - 4)) != stored_crc) {
    return Error(ErrorCode::kPatchChecksum, "file header checksum mismatch");
  }
  // Fields; a later minor version may append fields, which are skipped.
  ByteReader fr(buf.subspan(body_start, len - 4));
  uint8_t algorithm;
  FileHeader out;
  out.major = major;
  out.minor = minor;
  if (!fr.ReadU8(&algorithm) || !fr.ReadVarint(&out.flags) || !fr.ReadVarint(&out.old_size) ||
      !fr.ReadInto(out.old_sha256.data(), 32) || !fr.ReadVarint(&out.new_size) ||
      !fr.ReadInto(out.new_sha256.data(), 32) || !fr.ReadVarint(&out.segment_count) ||
      !fr.ReadVarint(&out.max_segment_output) || !fr.ReadVarint(&out.max_segment_payload) ||
      !fr.ReadVarint(&out.max_ref_window)) {
    return Error(ErrorCode::kPatchMalformed, "file header fields truncated");
  }
  if (algorithm != static_cast<uint8_t>(Algorithm::kGeneric)) {
    return Error(ErrorCode::kPatchUnknownMethod, "unknown algorithm " + std::to_string(algorithm));
  }
  out.algorithm = static_cast<Algorithm>(algorithm);
  uint64_t tables_len = 0;
  uint32_t tables_crc = 0;
  if (out.flags & kFlagCodeRegions) {
    if (!fr.ReadVarint(&tables_len) || !fr.ReadU32Le(&tables_crc)) {
      return Error(ErrorCode::kPatchMalformed, "file header fields truncated");
    }
    if (tables_len > kMaxTablesLen) {
      return Error(ErrorCode::kPatchMalformed, "transform tables too long");
    }
  }
  if (out.flags & kFlagRecompress) {
    if (!fr.ReadVarint(&out.max_decoded) || !fr.ReadVarint(&out.max_encoder_memory) ||
        !fr.ReadVarint(&out.recompress_saved)) {
      return Error(ErrorCode::kPatchMalformed, "file header fields truncated");
    }
  }
  if (out.flags & kFlagCodeRegions) {
    if (buf.size() - total < tables_len) {
      // Check what can be checked before waiting for the tables.
      DS_RETURN_IF_ERROR(ValidateFileHeader(out));
      return Status::Ok();
    }
    const ByteView tables = buf.subspan(total, tables_len);
    if (Crc32c(tables) != tables_crc) {
      return Error(ErrorCode::kPatchChecksum, "transform tables checksum mismatch");
    }
    DS_RETURN_IF_ERROR(ParseTables(tables, &out));
  }
  DS_RETURN_IF_ERROR(ValidateFileHeader(out));
  *h = std::move(out);
  *consumed = total + tables_len;
  return Status::Ok();
}

Status ValidateFileHeader(const FileHeader& h) {
  if ((h.flags & ~kKnownHeaderFlags) != 0) {
    return Error(ErrorCode::kPatchMalformed, "unknown header flags");
  }
  if (!(h.flags & kFlagCodeRegions) &&
      (!h.old_regions.empty() || !h.new_regions.empty() || !h.address_map.empty())) {
    return Error(ErrorCode::kPatchMalformed, "code regions without their flag");
  }
  if (!(h.flags & kFlagRecompress) &&
      (h.max_decoded != 0 || h.max_encoder_memory != 0 || h.recompress_saved != 0)) {
    return Error(ErrorCode::kPatchMalformed, "deflate fields without their flag");
  }
  DS_RETURN_IF_ERROR(ValidateCodeRegions(h.old_regions, h.old_size));
  DS_RETURN_IF_ERROR(ValidateCodeRegions(h.new_regions, h.new_size));
  if (h.new_size == 0 && h.segment_count != 0) {
    return Error(ErrorCode::kPatchMalformed, "segments for an empty result");
  }
  if (h.new_size > 0 && h.segment_count == 0) {
    return Error(ErrorCode::kPatchMalformed, "no segments for a non-empty result");
  }
  if (h.segment_count > h.new_size) {
    return Error(ErrorCode::kPatchMalformed, "more segments than result bytes");
  }
  if (h.new_size > 0 && h.max_segment_output == 0) {
    return Error(ErrorCode::kPatchMalformed, "zero max segment output");
  }
  if (h.max_segment_output > h.new_size) {
    return Error(ErrorCode::kPatchMalformed, "max segment output exceeds result size");
  }
  // Every segment is at most max_segment_output long, so the count must be enough to cover.
  if (h.max_segment_output > 0 && (h.new_size - 1) / h.max_segment_output + 1 > h.segment_count) {
    return Error(ErrorCode::kPatchMalformed, "segments cannot cover the result size");
  }
  if (h.max_ref_window > h.old_size) {
    return Error(ErrorCode::kPatchMalformed, "reference window larger than the old file");
  }
  return Status::Ok();
}

void WriteSegment(const SegmentHeader& s, ByteView payload, Bytes* out) {
  Bytes fields;
  ByteWriter f(&fields);
  f.WriteVarint(s.new_offset);
  f.WriteVarint(s.new_length);
  f.WriteU8(static_cast<uint8_t>(s.method));
  f.WriteU8(static_cast<uint8_t>(s.transform));
  f.WriteVarint(payload.size());
  f.WriteU32Le(s.output_crc32c);
  if (IsRecompressTransform(s.transform)) {
    f.WriteVarint(s.old_offset);
    f.WriteVarint(s.old_length);
    f.WriteVarint(s.old_decoded_length);
    f.WriteVarint(s.decoded_length);
  }
  if (s.transform == Transform::kXz) {
    f.WriteU8(s.xz_preset);
    f.WriteU8(s.xz_check);
    f.WriteVarint(s.xz_block_size);
  }

  const size_t start = out->size();
  ByteWriter w(out);
  w.WriteVarint(fields.size());
  w.WriteBytes(fields);
  uint32_t crc = Crc32c(ByteView(out->data() + start, out->size() - start));
  crc = Crc32c(payload, crc);
  w.WriteU32Le(crc);
  w.WriteBytes(payload);
}

Status ParseSegmentHeader(ByteView buf, SegmentHeader* s, size_t* consumed, uint32_t* crc_state,
                          uint32_t* stored_crc) {
  *consumed = 0;
  ByteReader r(buf);
  uint64_t len;
  if (!r.ReadVarint(&len)) {
    if (r.remaining() >= 10) return Error(ErrorCode::kPatchMalformed, "bad segment header length");
    return Status::Ok();
  }
  if (len > kMaxSegmentHeaderLen) {
    return Error(ErrorCode::kPatchMalformed, "segment header length " + std::to_string(len));
  }
  if (r.remaining() < len + 4) return Status::Ok();
  ByteView fields_view;
  r.ReadView(len, &fields_view);
  const size_t covered = r.position();
  r.ReadU32Le(stored_crc);

  ByteReader fr(fields_view);
  SegmentHeader out;
  uint8_t method, transform;
  if (!fr.ReadVarint(&out.new_offset) || !fr.ReadVarint(&out.new_length) || !fr.ReadU8(&method) ||
      !fr.ReadU8(&transform) || !fr.ReadVarint(&out.payload_length) ||
      !fr.ReadU32Le(&out.output_crc32c)) {
    return Error(ErrorCode::kPatchMalformed, "segment header fields truncated");
  }
  if (method > static_cast<uint8_t>(Method::kLzmaRef)) {
    return Error(ErrorCode::kPatchUnknownMethod,
                 "unknown segment method " + std::to_string(method));
  }
  if (transform > kMaxTransform) {
    return Error(ErrorCode::kPatchUnknownMethod,
                 "unknown segment transform " + std::to_string(transform));
  }
  out.method = static_cast<Method>(method);
  out.transform = static_cast<Transform>(transform);
  if (IsRecompressTransform(out.transform) &&
      (!fr.ReadVarint(&out.old_offset) || !fr.ReadVarint(&out.old_length) ||
       !fr.ReadVarint(&out.old_decoded_length) || !fr.ReadVarint(&out.decoded_length))) {
    return Error(ErrorCode::kPatchMalformed, "recompression segment fields truncated");
  }
  if (out.transform == Transform::kXz && (!fr.ReadU8(&out.xz_preset) || !fr.ReadU8(&out.xz_check) ||
                                          !fr.ReadVarint(&out.xz_block_size))) {
    return Error(ErrorCode::kPatchMalformed, "xz segment fields truncated");
  }
  *crc_state = Crc32c(buf.first(covered));
  *s = out;
  *consumed = r.position();
  return Status::Ok();
}

void WriteCopyDiffPayload(const CopyDiffLayout& layout, Bytes* out) {
  ByteWriter w(out);
  for (int i = 0; i < 3; ++i) {
    w.WriteU8(static_cast<uint8_t>(static_cast<uint8_t>(layout.codec[i]) |
                                   (layout.zero_run[i] ? kCodecZeroRun : 0)));
    w.WriteVarint(layout.raw_len[i]);
    w.WriteVarint(layout.encoded[i].size());
    if (layout.zero_run[i]) w.WriteVarint(layout.form_len[i]);
  }
  for (int i = 0; i < 3; ++i) w.WriteBytes(layout.encoded[i]);
}

void ZeroRunEncode(ByteView raw, Bytes* form) {
  ByteWriter w(form);
  size_t i = 0;
  const size_t n = raw.size();
  while (i < n) {
    size_t j = i;
    while (j < n && raw[j] == 0) ++j;
    size_t k = j;
    while (k < n && raw[k] != 0) ++k;
    w.WriteVarint(j - i);
    w.WriteVarint(k - j);
    w.WriteBytes(raw.subspan(j, k - j));
    i = k;
  }
}

namespace {

// Walks the pairs of a zero-run form standing for |raw_len| bytes, checking them as it goes;
// |out|, when not null, receives the bytes.
Status ZeroRunWalk(ByteView form, uint64_t raw_len, uint8_t* out) {
  ByteReader r(form);
  uint64_t pos = 0;
  while (!r.empty()) {
    uint64_t zeros, count;
    if (!r.ReadVarint(&zeros) || !r.ReadVarint(&count)) {
      return Error(ErrorCode::kPatchMalformed, "zero-run form truncated");
    }
    if (zeros == 0 && count == 0) {
      return Error(ErrorCode::kPatchMalformed, "empty pair in a zero-run form");
    }
    if (zeros > raw_len - pos || count > raw_len - pos - zeros) {
      return Error(ErrorCode::kPatchMalformed, "zero-run form overruns its stream");
    }
    if (out != nullptr) std::memset(out + pos, 0, zeros);
    pos += zeros;
    if (!(out != nullptr ? r.ReadInto(out + pos, count) : r.Skip(count))) {
      return Error(ErrorCode::kPatchMalformed, "zero-run form truncated");
    }
    pos += count;
  }
  if (pos != raw_len) {
    return Error(ErrorCode::kPatchMalformed, "zero-run form shorter than its stream");
  }
  return Status::Ok();
}

}  // namespace

Status ZeroRunDecode(ByteView form, std::span<uint8_t> out) {
  return ZeroRunWalk(form, out.size(), out.data());
}

Status ZeroRunCheck(ByteView form, uint64_t raw_len) { return ZeroRunWalk(form, raw_len, nullptr); }

Status ParseCopyDiffPayload(ByteView payload, CopyDiffLayout* out) {
  ByteReader r(payload);
  uint64_t enc_len[3];
  for (int i = 0; i < 3; ++i) {
    uint8_t codec;
    if (!r.ReadU8(&codec) || !r.ReadVarint(&out->raw_len[i]) || !r.ReadVarint(&enc_len[i])) {
      return Error(ErrorCode::kPatchMalformed, "copydiff stream table truncated");
    }
    out->zero_run[i] = (codec & kCodecZeroRun) != 0;
    codec &= static_cast<uint8_t>(~kCodecZeroRun);
    if (codec > static_cast<uint8_t>(StreamCodec::kLzma2)) {
      return Error(ErrorCode::kPatchUnknownMethod, "unknown stream codec " + std::to_string(codec));
    }
    out->codec[i] = static_cast<StreamCodec>(codec);
    // The codec's output: the stream itself, or its zero-run form (shorter than the stream).
    uint64_t decoded_len = out->raw_len[i];
    if (out->zero_run[i]) {
      if (!r.ReadVarint(&out->form_len[i])) {
        return Error(ErrorCode::kPatchMalformed, "copydiff stream table truncated");
      }
      if (out->form_len[i] == 0 || out->form_len[i] >= out->raw_len[i]) {
        return Error(ErrorCode::kPatchMalformed, "zero-run form not shorter than its stream");
      }
      decoded_len = out->form_len[i];
    }
    if (out->codec[i] == StreamCodec::kStored ? enc_len[i] != decoded_len
                                              : enc_len[i] >= decoded_len) {
      return Error(ErrorCode::kPatchMalformed, "copydiff stream length inconsistent with codec");
    }
  }
  for (int i = 0; i < 3; ++i) {
    if (!r.ReadView(enc_len[i], &out->encoded[i])) {
      return Error(ErrorCode::kPatchMalformed, "copydiff stream overruns its segment");
    }
  }
  if (!r.empty()) return Error(ErrorCode::kPatchMalformed, "bytes after copydiff streams");
  return Status::Ok();
}

void WriteZstdRefPayload(uint64_t ref_offset, uint64_t ref_length, ByteView frame, Bytes* out) {
  ByteWriter w(out);
  w.WriteVarint(ref_offset);
  w.WriteVarint(ref_length);
  w.WriteBytes(frame);
}

Status ParseZstdRefPayload(ByteView payload, ZstdRefLayout* out) {
  ByteReader r(payload);
  if (!r.ReadVarint(&out->ref_offset) || !r.ReadVarint(&out->ref_length)) {
    return Error(ErrorCode::kPatchMalformed, "zstdref window truncated");
  }
  out->frame = r.Rest();
  return Status::Ok();
}

}  // namespace ds::delta
