#include "cli/commands.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>

#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "delta/vcdiff.h"
#include "delta/vcdiff_format.h"

namespace ds::cli {
namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

Status RunVcdiffDiff(const DiffArgs& args, ByteView old, ByteView neu) {
  const auto t0 = std::chrono::steady_clock::now();
  delta::VcdiffEncodeOptions options = args.vcdiff;
  options.threads = args.options.threads;
  delta::VcdiffEncodeStats stats;
  DS_ASSIGN_OR_RETURN(Bytes patch, delta::EncodeVcdiff(old, neu, options, &stats));
  DS_RETURN_IF_ERROR(WriteFileAtomic(args.patch_path, patch));
  if (args.verbose) {
    const uint64_t m = neu.size();
    std::printf("old %zu B, new %" PRIu64 " B, VCDIFF patch %zu B (%.3f%% of new)\n", old.size(), m,
                patch.size(),
                m ? 100.0 * static_cast<double>(patch.size()) / static_cast<double>(m) : 0.0);
    std::printf("windows %" PRIu64 ", adds %" PRIu64 " (%" PRIu64 " B), copies %" PRIu64
                " (%" PRIu64 " B, %" PRIu64 " within the target), runs %" PRIu64 "\n",
                stats.windows, stats.adds, stats.add_bytes, stats.copies, stats.copy_bytes,
                stats.target_copies, stats.runs);
    std::printf("sections data %" PRIu64 " B, instructions %" PRIu64 " B, addresses %" PRIu64
                " B%s\n",
                stats.data_bytes, stats.inst_bytes, stats.addr_bytes,
                options.secondary_lzma ? " (before lzma)" : "");
    std::printf("suffix sort %.2f s, total %.2f s\n", stats.suffix_sort_seconds, Since(t0));
  }
  return Status::Ok();
}

}  // namespace

Status RunDiff(const DiffArgs& args) {
  const auto t0 = std::chrono::steady_clock::now();
  DS_ASSIGN_OR_RETURN(auto old_map, MappedFile::Open(args.old_path));
  DS_ASSIGN_OR_RETURN(auto new_map, MappedFile::Open(args.new_path));
  if (args.format == "vcdiff") return RunVcdiffDiff(args, old_map->bytes(), new_map->bytes());
  if (args.format != "dspf") {
    return Error(ErrorCode::kInvalidArgument, "unknown patch format '" + args.format + "'");
  }
  delta::GenerateOptions options = args.options;
  if (args.no_zstd_ref) options.try_zstd_ref = false;
  if (args.no_transforms) options.try_transforms = options.try_recompress = false;
  options.max_encoder_memory = args.max_encoder_memory_mib << 20;
  delta::GenerateStats stats;
  DS_ASSIGN_OR_RETURN(Bytes patch,
                      delta::GeneratePatch(old_map->bytes(), new_map->bytes(), options, &stats));
  DS_RETURN_IF_ERROR(WriteFileAtomic(args.patch_path, patch));
  if (args.verbose) {
    const uint64_t m = new_map->bytes().size();
    std::printf("old %" PRIu64 " B, new %" PRIu64 " B, patch %zu B (%.3f%% of new)\n",
                static_cast<uint64_t>(old_map->bytes().size()), m, patch.size(),
                m ? 100.0 * static_cast<double>(patch.size()) / static_cast<double>(m) : 0.0);
    std::printf("segments %" PRIu64 " (copydiff %" PRIu64 ", ref %" PRIu64 ", stored %" PRIu64
                "), copy ops %" PRIu64 "\n",
                stats.segments, stats.copydiff_segments, stats.ref_segments, stats.stored_segments,
                stats.copy_ops);
    if (stats.unmatched_fraction >= 0) {
      std::printf("sampled new pieces not in old: %.1f%%\n", 100 * stats.unmatched_fraction);
    }
    if (stats.transform_segments > 0) {
      std::printf("branch transform: %" PRIu64 " segments, saved %" PRIu64 " B, %.2f s\n",
                  stats.transform_segments, stats.transform_saved_bytes, stats.transform_seconds);
    }
    if (stats.recompress_segments > 0 || stats.recompress_seconds > 0) {
      std::printf(
          "recompression (deflate, xz): %" PRIu64 " segments, saved %" PRIu64 " B, %.2f s\n",
          stats.recompress_segments, stats.recompress_saved_bytes, stats.recompress_seconds);
    }
    if (stats.ref_trials_given_up > 0) {
      std::printf("plain comparison: %" PRIu64 " whole-file trials given up past the plan's size\n",
                  stats.ref_trials_given_up);
    }
    std::printf("suffix sort %.2f s, matching %.2f s, total %.2f s\n", stats.suffix_sort_seconds,
                stats.match_seconds, Since(t0));
  }
  return Status::Ok();
}

Status RunApply(const ApplyArgs& args) {
  const auto t0 = std::chrono::steady_clock::now();
  DS_RETURN_IF_ERROR(delta::ApplyPatchFile(args.old_path, args.patch_path, args.out_path));
  if (args.verbose) {
    DS_ASSIGN_OR_RETURN(uint64_t size, FileSize(args.out_path));
    DS_ASSIGN_OR_RETURN(auto patch_file, RandomAccessFile::Open(args.patch_path));
    uint8_t magic[4] = {};
    const size_t magic_len = std::min<uint64_t>(sizeof(magic), patch_file->size());
    DS_RETURN_IF_ERROR(patch_file->ReadAt(0, std::span<uint8_t>(magic, magic_len)));
    const bool vcdiff =
        delta::DetectPatchFormat(ByteView(magic, magic_len)) == delta::PatchFormat::kVcdiff;
    const double s = Since(t0);
    std::printf("rebuilt %" PRIu64 " B in %.3f s (%.0f MB/s), %s\n", size, s,
                s > 0 ? static_cast<double>(size) / s / 1e6 : 0.0,
                vcdiff ? "VCDIFF: windows checked against their Adler-32 where present"
                       : "SHA-256 verified");
  }
  return Status::Ok();
}

namespace {

// Hdr_Indicator / Win_Indicator / Delta_Indicator bits as names.
std::string BitNames(uint8_t bits, const char* const names[3]) {
  std::string out;
  for (int i = 0; i < 3; ++i) {
    if (bits & (1 << i)) out += std::string(out.empty() ? "" : "|") + names[i];
  }
  return out.empty() ? "-" : out;
}

std::string Printable(ByteView bytes) {
  std::string out;
  for (uint8_t c : bytes) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    }
  }
  return out;
}

Status PrintVcdiff(ByteView patch) {
  DS_ASSIGN_OR_RETURN(delta::VcdiffInfo info, delta::InspectVcdiff(patch));
  static const char* const kHdrBits[3] = {"VCD_DECOMPRESS", "VCD_CODETABLE", "VCD_APPHEADER"};
  static const char* const kWinBits[3] = {"VCD_SOURCE", "VCD_TARGET", "VCD_ADLER32"};
  static const char* const kDeltaBits[3] = {"data", "inst", "addr"};
  std::printf("format      VCDIFF (RFC 3284) version 0\n");
  std::printf("patch       %" PRIu64 " B (header %" PRIu64 " B)\n", info.patch_size,
              info.header_size);
  std::printf("header      indicator 0x%02X %s\n", info.hdr_indicator,
              BitNames(info.hdr_indicator, kHdrBits).c_str());
  if (info.secondary_id != 0) {
    std::printf("secondary   %s (id %u)\n", delta::vcdiff::SecondaryName(info.secondary_id),
                info.secondary_id);
  } else {
    std::printf("secondary   none\n");
  }
  std::printf("code table  %s\n", info.custom_code_table ? "application-defined" : "default");
  if (info.hdr_indicator & delta::vcdiff::kHdrAppHeader) {
    std::printf("app header  %zu B \"%s\"\n", info.app_header.size(),
                Printable(info.app_header).c_str());
  }
  std::printf("target      %" PRIu64 " B in %zu windows\n", info.target_size, info.windows.size());
  std::printf("%5s %10s %-22s %-28s %12s %10s %-14s %10s %8s %8s  %s\n", "#", "patch off",
              "indicator", "segment", "target off", "length", "compressed", "data", "inst", "addr",
              "adler32");
  for (size_t i = 0; i < info.windows.size(); ++i) {
    const delta::VcdiffWindowInfo& w = info.windows[i];
    std::string segment = "-";
    if (w.win_indicator & (delta::vcdiff::kWinSource | delta::vcdiff::kWinTarget)) {
      segment = std::string(w.win_indicator & delta::vcdiff::kWinSource ? "source" : "target") +
                "[" + std::to_string(w.segment_offset) + ", +" + std::to_string(w.segment_length) +
                ")";
    }
    char adler[16] = "-";
    if (w.has_adler32) std::snprintf(adler, sizeof(adler), "%08X", w.adler32);
    std::printf("%5zu %10" PRIu64 " %-22s %-28s %12" PRIu64 " %10" PRIu64 " %-14s %10" PRIu64
                " %8" PRIu64 " %8" PRIu64 "  %s\n",
                i + 1, w.patch_offset, BitNames(w.win_indicator, kWinBits).c_str(), segment.c_str(),
                w.target_offset, w.target_length, BitNames(w.delta_indicator, kDeltaBits).c_str(),
                w.data_length, w.inst_length, w.addr_length, adler);
  }
  return Status::Ok();
}

}  // namespace

Status RunInspect(const InspectArgs& args) {
  DS_ASSIGN_OR_RETURN(Bytes patch, ReadFile(args.patch_path, 4ull << 30));
  if (delta::DetectPatchFormat(patch) == delta::PatchFormat::kVcdiff) return PrintVcdiff(patch);
  DS_ASSIGN_OR_RETURN(delta::PatchInfo info, delta::InspectPatch(patch));
  const delta::FileHeader& h = info.header;
  std::printf("format      DSPF %u.%u, algorithm %u\n", h.major, h.minor,
              static_cast<unsigned>(h.algorithm));
  std::printf("patch       %" PRIu64 " B (header %" PRIu64 " B)\n", info.patch_size,
              info.header_size);
  std::printf("old         %" PRIu64 " B  sha256 %s\n", h.old_size, ToHex(h.old_sha256).c_str());
  std::printf("new         %" PRIu64 " B  sha256 %s\n", h.new_size, ToHex(h.new_sha256).c_str());
  std::printf("segments    %" PRIu64 "  (max output %" PRIu64 " B, max payload %" PRIu64
              " B, max ref window %" PRIu64 " B)\n",
              h.segment_count, h.max_segment_output, h.max_segment_payload, h.max_ref_window);
  // Transforms (DSPF 1.1): how many segments used each and the generator's estimate of the saving.
  uint64_t transform_segments[delta::kMaxTransform + 1] = {};
  uint64_t transform_bytes[delta::kMaxTransform + 1] = {};
  for (const delta::SegmentInfo& s : info.segments) {
    const auto t = static_cast<size_t>(s.header.transform);
    if (t <= delta::kMaxTransform) {
      ++transform_segments[t];
      transform_bytes[t] += s.header.new_length;
    }
  }
  for (size_t t = 1; t <= delta::kMaxTransform; ++t) {
    if (transform_segments[t] == 0) continue;
    const auto tr = static_cast<delta::Transform>(t);
    if (delta::IsRecompressTransform(tr)) {
      std::printf("transform   %s: %" PRIu64 " segments (%s streams), %" PRIu64 " new bytes\n",
                  delta::TransformName(tr), transform_segments[t], delta::TransformName(tr),
                  transform_bytes[t]);
    } else {
      std::printf("transform   %s: %" PRIu64 " segments, %" PRIu64
                  " new bytes, %zu+%zu code regions, saved %" PRIu64
                  " B over the plain encoding of their segments\n",
                  delta::TransformName(tr), transform_segments[t], transform_bytes[t],
                  h.old_regions.size(), h.new_regions.size(), h.transform_saved);
    }
  }
  if (h.flags & delta::kFlagRecompress) {
    std::printf("recompress  saved %" PRIu64
                " B over the plain encoding of the same streams; decoded forms up to %" PRIu64
                " B, xz encoder memory %" PRIu64 " B\n",
                h.recompress_saved, h.max_decoded, h.max_encoder_memory);
  }
  std::printf("%5s %12s %10s %-9s %10s  %s\n", "#", "new offset", "length", "method", "payload",
              "detail");
  for (size_t i = 0; i < info.segments.size(); ++i) {
    const delta::SegmentInfo& s = info.segments[i];
    std::string detail;
    if (s.header.method == delta::Method::kCopyDiff) {
      const char* names[3] = {"ctrl", "diff", "lit"};
      for (int k = 0; k < 3; ++k) {
        detail +=
            std::string(k ? ", " : "") + names[k] + " " + std::to_string(s.stream_raw[k]) + "->" +
            (s.stream_zero_run[k] ? "zero-run " + std::to_string(s.stream_form[k]) + "->"
                                  : std::string()) +
            std::to_string(s.stream_encoded[k]) + " " + delta::StreamCodecName(s.stream_codec[k]);
      }
    } else if (s.header.method == delta::Method::kZstdRef ||
               s.header.method == delta::Method::kLzmaRef) {
      detail =
          "ref old[" + std::to_string(s.ref_offset) + ", +" + std::to_string(s.ref_length) + ")";
    }
    if (s.header.transform == delta::Transform::kDeflate) {
      detail += ", transform deflate: old stream [" + std::to_string(s.header.old_offset) + ", +" +
                std::to_string(s.header.old_length) + "), puffs " +
                std::to_string(s.header.old_decoded_length) + " -> " +
                std::to_string(s.header.decoded_length) + " B";
    } else if (s.header.transform == delta::Transform::kXz) {
      detail += ", transform xz (preset " + std::to_string(s.header.xz_preset & 0x0F) +
                ((s.header.xz_preset & 0x80) ? "e" : "") + ", check " +
                std::to_string(s.header.xz_check) + ", block size " +
                std::to_string(s.header.xz_block_size) + "): old stream [" +
                std::to_string(s.header.old_offset) + ", +" + std::to_string(s.header.old_length) +
                "), content " + std::to_string(s.header.old_decoded_length) + " -> " +
                std::to_string(s.header.decoded_length) + " B";
    } else if (s.header.transform == delta::Transform::kXzReplay) {
      detail += ", transform xz-replay: old stream [" + std::to_string(s.header.old_offset) +
                ", +" + std::to_string(s.header.old_length) + "), replay forms " +
                std::to_string(s.header.old_decoded_length) + " -> " +
                std::to_string(s.header.decoded_length) + " B";
    } else if (s.header.transform != delta::Transform::kNone) {
      detail += std::string(", transform ") + delta::TransformName(s.header.transform);
    }
    std::printf("%5zu %12" PRIu64 " %10" PRIu64 " %-9s %10" PRIu64 "  %s\n", i + 1,
                s.header.new_offset, s.header.new_length, delta::MethodName(s.header.method),
                s.header.payload_length, detail.c_str());
  }
  return Status::Ok();
}

}  // namespace ds::cli
