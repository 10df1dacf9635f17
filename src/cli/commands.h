// The deltastream subcommands, separated from argument parsing so tests can call them.
#ifndef DELTASTREAM_CLI_COMMANDS_H_
#define DELTASTREAM_CLI_COMMANDS_H_

#include <string>

#include "common/status.h"
#include "delta/delta_gen.h"
#include "delta/vcdiff_gen.h"

namespace ds::cli {

struct DiffArgs {
  std::string old_path, new_path, patch_path;
  delta::GenerateOptions options;
  // "dspf" (deltastream's own format) or "vcdiff" (RFC 3284, xdelta3-compatible).
  std::string format = "dspf";
  delta::VcdiffEncodeOptions vcdiff;
  bool no_zstd_ref = false;
  bool no_transforms = false;  // Neither the executable nor the recompression transforms.
  uint64_t max_encoder_memory_mib = delta::GenerateOptions{}.max_encoder_memory >> 20;
  bool verbose = false;
};
Status RunDiff(const DiffArgs& args);

struct ApplyArgs {
  std::string old_path, patch_path, out_path;
  bool verbose = false;
};
Status RunApply(const ApplyArgs& args);

struct InspectArgs {
  std::string patch_path;
};
Status RunInspect(const InspectArgs& args);

}  // namespace ds::cli

#endif  // DELTASTREAM_CLI_COMMANDS_H_
