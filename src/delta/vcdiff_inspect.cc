// InspectVcdiff: a structural walk over a whole VCDIFF patch, without the source file.
#include "common/byte_reader.h"
#include "delta/vcdiff.h"
#include "delta/vcdiff_decode_internal.h"
#include "delta/vcdiff_format.h"

namespace ds::delta {

Result<VcdiffInfo> InspectVcdiff(ByteView patch) {
  VcdiffInfo info;
  info.patch_size = patch.size();
  vcdiff::FileHeader header;
  size_t consumed = 0, need = 0;
  DS_RETURN_IF_ERROR(vcdiff::ParseFileHeader(patch, &header, &consumed, &need));
  if (consumed == 0) {
    return Error(ErrorCode::kPatchTruncated, "VCDIFF patch ended inside its header");
  }
  info.hdr_indicator = header.indicator;
  info.secondary_id = header.secondary_id;
  info.custom_code_table = header.custom_table;
  info.app_header = std::move(header.app_header);
  info.header_size = consumed;
  size_t pos = consumed;
  while (pos < patch.size()) {
    const std::string where = "window " + std::to_string(info.windows.size() + 1);
    vcdiff::WindowHeader w;
    DS_RETURN_IF_ERROR(
        vcdiff::ParseWindowHeader(patch.subspan(pos), nullptr, &w, &consumed).WithContext(where));
    if (consumed == 0) return Error(ErrorCode::kPatchTruncated, where + " header truncated");
    VcdiffWindowInfo wi;
    wi.patch_offset = pos;
    pos += consumed;
    if (w.body_length() > patch.size() - pos) {
      return Error(ErrorCode::kPatchTruncated, where + " sections truncated");
    }
    pos += w.body_length();
    uint64_t end;
    if ((w.win_indicator & vcdiff::kWinTarget) &&
        (!CheckedAddU64(w.segment_offset, w.segment_length, &end) || end > info.target_size)) {
      return Error(ErrorCode::kPatchMalformed, where + " reads target bytes not produced yet");
    }
    if (w.delta_indicator != 0 && !(header.indicator & vcdiff::kHdrSecondary)) {
      return Error(ErrorCode::kPatchMalformed,
                   where + " has compressed sections but no secondary compressor is declared");
    }
    if (!CheckedAddU64(info.target_size, w.target_length, &info.target_size)) {
      return Error(ErrorCode::kPatchMalformed, where + " makes the target too large");
    }
    wi.win_indicator = w.win_indicator;
    wi.segment_offset = w.segment_offset;
    wi.segment_length = w.segment_length;
    wi.target_offset = info.target_size - w.target_length;
    wi.target_length = w.target_length;
    wi.delta_indicator = w.delta_indicator;
    wi.data_length = w.data_length;
    wi.inst_length = w.inst_length;
    wi.addr_length = w.addr_length;
    wi.has_adler32 = w.has_adler32;
    wi.adler32 = w.adler32;
    info.windows.push_back(wi);
  }
  return info;
}

}  // namespace ds::delta
