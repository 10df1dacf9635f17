// deltastream: the server-side command line (diff, apply, inspect; later serve, publish, ...).
//
// Exit codes are ds::ErrorCode values: 0 on success, the error's stable number otherwise.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <string>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"deltastream: binary delta updates"};
  app.require_subcommand(1);
  ds::cli::DiffArgs diff;
  ds::cli::ApplyArgs apply;
  ds::cli::InspectArgs inspect;

  auto* d = app.add_subcommand("diff", "Make a patch that turns OLD into NEW");
  d->add_option("old", diff.old_path, "Old (base) file")->required();
  d->add_option("new", diff.new_path, "New file")->required();
  d->add_option("-o,--output", diff.patch_path, "Patch file to write")->required();
  d->add_option("--level", diff.options.stream_level, "zstd level for copy/diff streams (1-22)")
      ->capture_default_str();
  d->add_option("--ref-level", diff.options.ref_level, "zstd level for reference segments (1-22)")
      ->capture_default_str();
  auto* seg_opt = d->add_option("--segment-size", diff.options.segment_size,
                                "New bytes per segment (given: never one whole-file segment)")
                      ->capture_default_str();
  d->add_option("--threads", diff.options.threads, "Worker threads (0 = one per core)")
      ->capture_default_str();
  d->add_flag("--no-zstd-ref", diff.no_zstd_ref, "Do not try zstd reference segments");
  d->add_option("--format", diff.format,
                "Patch format: dspf (deltastream) or vcdiff (RFC 3284, decodes with xdelta3 -d)")
      ->check(CLI::IsMember({"dspf", "vcdiff"}))
      ->capture_default_str();
  d->add_option("--vcdiff-window", diff.vcdiff.window_size,
                "VCDIFF: target bytes per window (at most 16 MiB for xdelta3)")
      ->capture_default_str();
  d->add_flag("!--vcdiff-no-checksum", diff.vcdiff.adler32,
              "VCDIFF: omit xdelta3's Adler-32 window checksum (strict RFC 3284 decoders)");
  d->add_flag("--vcdiff-lzma", diff.vcdiff.secondary_lzma,
              "VCDIFF: xdelta3's lzma secondary compression (xdelta3 decodes it; plain RFC 3284 "
              "decoders do not)");
  d->add_flag("-v,--verbose", diff.verbose, "Print sizes, methods and timings");

  auto* a = app.add_subcommand("apply", "Rebuild NEW from OLD and a patch");
  a->add_option("old", apply.old_path, "Old (base) file")->required();
  a->add_option("patch", apply.patch_path, "Patch file")->required();
  a->add_option("-o,--output", apply.out_path, "Result file (replaced atomically)")->required();
  a->add_flag("-v,--verbose", apply.verbose, "Print sizes and timings");

  auto* i = app.add_subcommand("inspect", "Describe a patch: header, segments, sizes");
  i->add_option("patch", inspect.patch_path, "Patch file")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(ds::ErrorCode::kInvalidArgument);
  }

  ds::Status status;
  if (d->parsed()) {
    // An explicit segment size is a request for that resume/verify granularity.
    if (seg_opt->count() > 0) diff.options.whole_file_limit = 0;
    status = ds::cli::RunDiff(diff);
  }
  if (a->parsed()) status = ds::cli::RunApply(apply);
  if (i->parsed()) status = ds::cli::RunInspect(inspect);
  if (!status.ok()) {
    std::fprintf(stderr, "deltastream: error: %s\n", status.ToString().c_str());
    return status.exit_code();
  }
  return 0;
}
