#include "cli/commands.h"

#include <chrono>
#include <cinttypes>
#include <cstdio>

#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"

namespace ds::cli {
namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

Status RunDiff(const DiffArgs& args) {
  const auto t0 = std::chrono::steady_clock::now();
  DS_ASSIGN_OR_RETURN(auto old_map, MappedFile::Open(args.old_path));
  DS_ASSIGN_OR_RETURN(auto new_map, MappedFile::Open(args.new_path));
  delta::GenerateOptions options = args.options;
  if (args.no_zstd_ref) options.try_zstd_ref = false;
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
    const double s = Since(t0);
    std::printf("rebuilt %" PRIu64 " B in %.3f s (%.0f MB/s), SHA-256 verified\n", size, s,
                s > 0 ? static_cast<double>(size) / s / 1e6 : 0.0);
  }
  return Status::Ok();
}

Status RunInspect(const InspectArgs& args) {
  DS_ASSIGN_OR_RETURN(Bytes patch, ReadFile(args.patch_path, 4ull << 30));
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
  std::printf("%5s %12s %10s %-9s %10s  %s\n", "#", "new offset", "length", "method", "payload",
              "detail");
  for (size_t i = 0; i < info.segments.size(); ++i) {
    const delta::SegmentInfo& s = info.segments[i];
    std::string detail;
    if (s.header.method == delta::Method::kCopyDiff) {
      const char* names[3] = {"ctrl", "diff", "lit"};
      for (int k = 0; k < 3; ++k) {
        detail += std::string(k ? ", " : "") + names[k] + " " + std::to_string(s.stream_raw[k]) +
                  "->" + std::to_string(s.stream_encoded[k]) + " " +
                  delta::StreamCodecName(s.stream_codec[k]);
      }
    } else if (s.header.method == delta::Method::kZstdRef ||
               s.header.method == delta::Method::kLzmaRef) {
      detail =
          "ref old[" + std::to_string(s.ref_offset) + ", +" + std::to_string(s.ref_length) + ")";
    }
    std::printf("%5zu %12" PRIu64 " %10" PRIu64 " %-9s %10" PRIu64 "  %s\n", i + 1,
                s.header.new_offset, s.header.new_length, delta::MethodName(s.header.method),
                s.header.payload_length, detail.c_str());
  }
  return Status::Ok();
}

}  // namespace ds::cli
