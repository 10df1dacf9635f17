// InspectPatch: a structural walk over a whole patch, without the old file.
#include "common/byte_reader.h"
#include "delta/delta.h"

namespace ds::delta {

Result<PatchInfo> InspectPatch(ByteView patch) {
  PatchInfo info;
  info.patch_size = patch.size();
  size_t consumed = 0;
  DS_RETURN_IF_ERROR(ParseFileHeader(patch, &info.header, &consumed));
  if (consumed == 0) return Error(ErrorCode::kPatchTruncated, "patch ended inside its header");
  info.header_size = consumed;
  size_t pos = consumed;
  uint64_t expected_offset = 0;
  for (uint64_t i = 0; i < info.header.segment_count; ++i) {
    const std::string where = "segment " + std::to_string(i + 1);
    SegmentInfo seg;
    seg.patch_offset = pos;
    uint32_t crc_state, stored_crc;
    DS_RETURN_IF_ERROR(
        ParseSegmentHeader(patch.subspan(pos), &seg.header, &consumed, &crc_state, &stored_crc));
    if (consumed == 0) return Error(ErrorCode::kPatchTruncated, where + " header truncated");
    pos += consumed;
    const SegmentHeader& h = seg.header;
    uint64_t end;
    if (h.new_offset != expected_offset || h.new_length == 0 ||
        !CheckedAddU64(h.new_offset, h.new_length, &end) || end > info.header.new_size) {
      return Error(ErrorCode::kPatchSegmentOrder, where + " range is out of order");
    }
    if (h.new_length > info.header.max_segment_output ||
        h.payload_length > info.header.max_segment_payload) {
      return Error(ErrorCode::kPatchMalformed, where + " exceeds the declared maxima");
    }
    if ((h.transform == Transform::kX86Branch || h.transform == Transform::kArm64Branch) &&
        !(info.header.flags & kFlagCodeRegions)) {
      return Error(ErrorCode::kPatchMalformed, where + " has a transform but the patch no tables");
    }
    if (IsRecompressTransform(h.transform) &&
        (!(info.header.flags & kFlagRecompress) || h.decoded_length == 0 || h.old_length == 0 ||
         h.decoded_length > info.header.max_decoded ||
         h.old_decoded_length > info.header.max_decoded || h.old_offset > info.header.old_size ||
         h.old_length > info.header.old_size - h.old_offset)) {
      return Error(ErrorCode::kPatchMalformed, where + " has bad recompression fields");
    }
    expected_offset = end;
    if (h.payload_length > patch.size() - pos) {
      return Error(ErrorCode::kPatchTruncated, where + " payload truncated");
    }
    ByteView payload = patch.subspan(pos, h.payload_length);
    if (Crc32c(payload, crc_state) != stored_crc) {
      return Error(ErrorCode::kPatchChecksum, where + " checksum mismatch");
    }
    pos += h.payload_length;
    if (h.method == Method::kCopyDiff) {
      CopyDiffLayout layout;
      DS_RETURN_IF_ERROR(ParseCopyDiffPayload(payload, &layout).WithContext(where));
      for (int s = 0; s < 3; ++s) {
        seg.stream_raw[s] = layout.raw_len[s];
        seg.stream_encoded[s] = layout.encoded[s].size();
        seg.stream_codec[s] = layout.codec[s];
        seg.stream_zero_run[s] = layout.zero_run[s];
        seg.stream_form[s] = layout.form_len[s];
      }
    } else if (h.method == Method::kZstdRef || h.method == Method::kLzmaRef) {
      ZstdRefLayout layout;
      DS_RETURN_IF_ERROR(ParseZstdRefPayload(payload, &layout).WithContext(where));
      seg.ref_offset = layout.ref_offset;
      seg.ref_length = layout.ref_length;
    }
    info.segments.push_back(seg);
  }
  if (expected_offset != info.header.new_size) {
    return Error(ErrorCode::kPatchSegmentOrder, "segments do not cover the result");
  }
  if (pos != patch.size()) {
    return Error(ErrorCode::kPatchTrailingData, "bytes after the last segment");
  }
  return info;
}

bool UsesZeroRunStreams(const PatchInfo& info) {
  for (const SegmentInfo& seg : info.segments) {
    for (bool z : seg.stream_zero_run) {
      if (z) return true;
    }
  }
  return false;
}

}  // namespace ds::delta
