// deltastream: the server-side command line (diff, apply, inspect, serve, keygen, publish,
// versions, jobs, metadata).
//
// Exit codes are ds::ErrorCode values: 0 on success, the error's stable number otherwise.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "cli/deploy_commands.h"
#include "cli/repo_commands.h"

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
  d->add_flag("--no-transforms", diff.no_transforms,
              "Plain byte diff only: no executable (branch) or recompression (deflate, xz) "
              "transforms");
  d->add_option("--max-encoder-memory-mib", diff.max_encoder_memory_mib,
                "Largest xz encoder the devices may run (MiB): .xz streams a liblzma preset within "
                "it reproduces are rebuilt by liblzma (smallest patches), the others from their "
                "replay forms (no encoder, any LZMA2 encoder); 0 = replay forms only")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
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

  // Repository: the master server and its clients.
  app.set_config("--config", "",
                 "Read options from a TOML/INI file, one [section] per subcommand (e.g. [serve]); "
                 "give it before the subcommand: deltastream --config FILE serve");
  ds::cli::ServeArgs serve;
  auto* sv = app.add_subcommand(
      "serve", "Run the master repository, or a proxy repository (HTTP API under /v1)");
  sv->add_option("--role", serve.role,
                 "master (catalog, jobs, signing; with the deployment service unless "
                 "--no-deploy), proxy (read-only pull-through cache) or deploy (the deployment "
                 "service alone, against --repo)")
      ->check(CLI::IsMember({"master", "proxy", "deploy"}))
      ->capture_default_str();
  // Deployment service (docs/DEPLOY.md).
  sv->add_flag("--no-deploy", serve.no_deploy,
               "Master: do not run the deployment service (it runs by default)");
  sv->add_option("--repo", serve.repo,
                 "Deploy: the master's or a proxy's URL (required for --role deploy)");
  sv->add_option("--deploy-proxy", serve.deploy_proxy,
                 "Deployment service: the repository URL pre-warming asks for deltas (default: "
                 "this server for master, --repo for deploy)");
  sv->add_option("--enroll-token-file", serve.enroll_token_file,
                 "Deployment service: the shared enrolment token (default <data-dir>/enroll.token, "
                 "made on first start)");
  sv->add_option("--deploy-prewarm-timeout", serve.deploy_prewarm_timeout_s,
                 "Deployment service: seconds a wave waits for its missing deltas")
      ->check(CLI::Range(int64_t{0}, int64_t{86400}))
      ->capture_default_str();
  sv->add_option("--upstream", serve.upstream,
                 "Proxy: the master's or another proxy's URL (required for --role proxy)");
  sv->add_option("--cache-max-mib", serve.cache_max_mib, "Proxy: cache size bound (LRU)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30))
      ->capture_default_str();
  sv->add_option("--proxy-ttl-ms", serve.proxy_ttl_ms,
                 "Proxy: how long lists, latest and metadata are served from the cache")
      ->check(CLI::Range(int64_t{0}, int64_t{86400000}))
      ->capture_default_str();
  sv->add_option("--udp-port", serve.udp_port,
                 "Proxy: serve the UDP carrier on this port (0 = any free port; -1 = off)")
      ->check(CLI::Range(-1, 65535))
      ->capture_default_str();
  sv->add_option("--ondemand-workers", serve.ondemand_workers,
                 "Proxy: workers making deltas the upstream lacks (0 = never)")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
  sv->add_option("--ondemand-queue", serve.ondemand_queue,
                 "Proxy: on-demand delta jobs that may wait (more: 503 + Retry-After)")
      ->check(CLI::Range(uint64_t{0}, uint64_t{100000}))
      ->capture_default_str();
  sv->add_option("--ondemand-memory-mib", serve.ondemand_memory_mib,
                 "Proxy: memory budget of on-demand delta jobs")
      ->capture_default_str();
  sv->add_option("--ondemand-max-mib", serve.ondemand_max_mib,
                 "Proxy: disk bound of the deltas it made itself, least recently used first out "
                 "(0 = unbounded)")
      ->capture_default_str();
  sv->add_option("--store", serve.store,
                 "Proxy: keep full artifacts and deltas (both), full artifacts only (full), or "
                 "deltas and every --keyframe-every-th version, rebuilding the others (delta)")
      ->check(CLI::IsMember({"both", "full", "delta"}))
      ->capture_default_str();
  sv->add_option("--keyframe-every", serve.keyframe_every,
                 "Proxy, --store delta: keep every Nth version in full")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  sv->add_option("--data-dir", serve.data_dir, "Catalog, blobs and keys live here")
      ->capture_default_str();
  sv->add_option("--listen", serve.listen, "host:port (port 0 = any free port)")
      ->capture_default_str();
  sv->add_option("--tls-cert", serve.tls_cert, "PEM certificate: serve HTTPS");
  sv->add_option("--tls-key", serve.tls_key, "PEM private key for --tls-cert");
  sv->add_option("--signing-key", serve.signing_key,
                 "Ed25519 secret key file (default <data-dir>/keys/signing.key, made if missing)");
  sv->add_option("--delta-history", serve.delta_history,
                 "Make deltas from this many previous versions")
      ->check(CLI::Range(0, 100))
      ->capture_default_str();
  sv->add_option("--job-workers", serve.job_workers, "Delta job workers")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  sv->add_option("--job-memory-mib", serve.job_memory_mib, "Memory budget of delta jobs")
      ->capture_default_str();
  sv->add_option("--worth-ratio", serve.worth_ratio,
                 "Serve a delta only below this fraction of the compressed artifact")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  sv->add_option("--max-encoder-memory-mib", serve.max_encoder_memory_mib,
                 "Deltas of .xz streams may re-encode them with liblzma when a preset within this "
                 "much encoder memory (MiB) reproduces them (smallest deltas; devices must afford "
                 "it); 0 = replay forms only (any device)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  sv->add_option("--metadata-ttl-days", serve.metadata_ttl_days, "Signed metadata lifetime")
      ->check(CLI::Range(1, 3650))
      ->capture_default_str();
  sv->add_flag("--require-read-token", serve.require_read_token,
               "Reads need a token too (default: reads are open)");
  sv->add_option("--max-artifact-mib", serve.max_artifact_mib, "Largest artifact accepted")
      ->capture_default_str();
  sv->add_option("--io-threads", serve.io_threads, "Network I/O threads (0 = one per core)")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
  sv->add_option("--max-connections", serve.max_connections,
                 "Open connections at most (a fleet's long polls each hold one)")
      ->check(CLI::Range(16, 1000000))
      ->capture_default_str();
  sv->add_option("--threads", serve.worker_threads, "Request handler threads")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  sv->add_option("--port-file", serve.port_file, "Write host:port here once listening");

  ds::cli::KeygenArgs keygen;
  auto* kg = app.add_subcommand("keygen", "Make an Ed25519 key pair for signing metadata");
  kg->add_option("prefix", keygen.prefix, "Writes PREFIX.key (secret) and PREFIX.pub")
      ->capture_default_str();

  auto add_client = [](CLI::App* c, ds::cli::ClientArgs* a) {
    c->add_option("--server", a->server, "Server URL")->capture_default_str();
    c->add_option("--token", a->token, "Bearer token (or DELTASTREAM_TOKEN, or --token-file)");
    c->add_option("--token-file", a->token_file, "File holding the bearer token");
    c->add_option("--ca-file", a->ca_file, "CA certificate for an HTTPS server");
  };
  ds::cli::PublishArgs publish;
  auto* pb = app.add_subcommand("publish", "Upload a new version of an artifact");
  pb->add_option("--artifact", publish.artifact, "Artifact name")->required();
  pb->add_option("--version", publish.version, "Version (semver orders best)")->required();
  pb->add_option("file", publish.file, "The artifact file")->required()->check(CLI::ExistingFile);
  pb->add_option("--label", publish.labels, "k=v label (repeatable)");
  pb->add_option("--depends", publish.depends, "Dependency, e.g. 'libfoo>=1.2' (repeatable)");
  pb->add_flag("--wait", publish.wait, "Wait for the new deltas and print them");
  pb->add_option("--wait-seconds", publish.wait_seconds, "Give up waiting after this long")
      ->capture_default_str();
  pb->add_flag("-q,--quiet", publish.quiet, "No progress bar or summary");
  add_client(pb, &publish);

  ds::cli::VersionsArgs versions;
  auto* vs = app.add_subcommand("versions", "List artifacts, or the versions of one");
  vs->add_option("artifact", versions.artifact, "Artifact (none: list artifacts)");
  vs->add_flag("--json", versions.json, "Print the server's JSON");
  add_client(vs, &versions);

  ds::cli::JobsArgs jobs;
  auto* jb = app.add_subcommand("jobs", "List delta jobs, newest first");
  jb->add_option("--limit", jobs.limit, "At most this many")->capture_default_str();
  jb->add_flag("--json", jobs.json, "Print the server's JSON");
  add_client(jb, &jobs);

  ds::cli::MetadataArgs metadata;
  auto* md = app.add_subcommand("metadata", "Fetch and verify an artifact's signed metadata");
  md->add_option("artifact", metadata.artifact, "Artifact")->required();
  md->add_option("--public-key", metadata.public_key_file, "Pinned public key file")->required();
  md->add_option("--min-counter", metadata.min_counter, "Refuse metadata older than this");
  add_client(md, &metadata);

  ds::cli::DeployCliArgs deploy_cli;
  auto* dp = ds::cli::AddDeployCommand(app, &deploy_cli);

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
  if (sv->parsed()) status = ds::cli::RunServe(serve);
  if (kg->parsed()) status = ds::cli::RunKeygen(keygen);
  if (pb->parsed()) status = ds::cli::RunPublish(publish);
  if (vs->parsed()) status = ds::cli::RunVersions(versions);
  if (jb->parsed()) status = ds::cli::RunJobs(jobs);
  if (md->parsed()) status = ds::cli::RunMetadata(metadata);
  if (dp->parsed()) status = ds::cli::RunDeploy(deploy_cli);
  if (!status.ok()) {
    std::fprintf(stderr, "deltastream: error: %s\n", status.ToString().c_str());
    return status.exit_code();
  }
  return 0;
}
