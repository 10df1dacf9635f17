// The master repository (and, later, the proxy's storage): content-addressed blob store, SQLite
// catalog of artifacts/versions/deltas/tokens, delta jobs on a bounded worker pool, and signed
// release metadata. No HTTP here: src/net serves this API; tests drive it directly.
//
// On disk, under one data directory:
//   catalog.db              SQLite (WAL): artifacts, versions, deltas (= delta jobs), tokens,
//                           signed metadata (docs/API.md describes the tables)
//   blobs/ab/cd/<sha256>    immutable objects named by the SHA-256 of their bytes (full artifacts
//                           and delta patches alike), written temp file + fsync + rename
//   tmp/                    uploads and job outputs in progress; emptied at Open()
//   keys/signing.key        Ed25519 secret key (0600), created at Open() when missing
//
// Crash safety: a blob becomes visible only by rename after fsync; a catalog row that names a
// blob is written after the blob exists. Open() removes tmp/, re-queues jobs left "running", and
// drops nothing else. Disk full fails the one request (kNoSpace) and leaves everything intact.
//
// Thread-safety: Repository is thread-safe; Upload objects are used by one thread at a time.
#ifndef DELTASTREAM_REPO_REPO_H_
#define DELTASTREAM_REPO_REPO_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "stream/release.h"

namespace ds::repo {

struct RepoOptions {
  std::string data_dir;
  // Deltas are made to each new version from this many previous versions.
  int delta_history = 3;
  // Delta job workers, and the memory they may use together (a job's estimate: about
  // 6 x old + 2 x new + 512 MiB; a job larger than the budget runs alone).
  int job_workers = 1;
  uint64_t job_memory_budget = 4ull << 30;
  // A delta is served only when smaller than this fraction of the compressed full artifact
  // (zstd level 19 size, measured by the first delta job to that version); otherwise it is
  // recorded as "not_worth".
  double worth_ratio = 0.9;
  // Deltas of .xz artifacts (and .debs) may rebuild their streams with liblzma's encoder when a
  // preset within this much encoder memory reproduces them (smallest deltas; the devices must
  // afford that memory, ~94 MiB at xz -6); 0 = from replay forms only (delta/delta_gen.h).
  uint64_t max_encoder_memory = 0;
  // Signed metadata lifetime; it is re-signed when half of it has passed.
  int64_t metadata_ttl_seconds = 30 * 24 * 3600;
  // Ed25519 secret key file; empty = <data_dir>/keys/signing.key (created when missing).
  std::string signing_key_path;
  // Start the job workers (false: tests that want to observe queued jobs; RunJobsOnce drives).
  bool start_workers = true;
};

struct VersionInfo {
  std::string artifact;
  std::string version;
  std::string sha256;  // Hex, of the artifact bytes.
  uint64_t size = 0;
  uint64_t compressed_size = 0;  // zstd -19 size (0 until measured).
  std::map<std::string, std::string> labels;
  std::vector<std::string> dependencies;  // Free-form "name constraint" strings.
  std::string publisher;                  // Token name that published it.
  int64_t created_at = 0;                 // Unix seconds.
  uint64_t seq = 0;                       // Publish order within the artifact (1, 2, ...).
  // Hex SHA-256 of the artifact's chunk map (docs/PROTOCOL.md), itself a blob.
  std::string chunk_map_sha256;
};

enum class DeltaStatus { kQueued, kRunning, kReady, kNotWorth, kFailed };
const char* DeltaStatusName(DeltaStatus s);

// A delta between two versions of one artifact; it is also the job that makes it.
struct DeltaInfo {
  int64_t id = 0;
  std::string artifact;
  std::string from_version, to_version;
  std::string base_sha256, result_sha256;  // Of the old and new artifact.
  std::string format = "dspf";
  DeltaStatus status = DeltaStatus::kQueued;
  std::string sha256;  // Of the patch bytes (set when ready).
  uint64_t size = 0;   // Patch bytes (set when ready or not_worth).
  double gen_seconds = 0;
  std::string error;  // When failed.
  int64_t created_at = 0, updated_at = 0;
  int attempts = 0;
  std::string chunk_map_sha256;  // Of the patch's chunk map blob (set when ready).
};

struct PublishRequest {
  std::string artifact;
  std::string version;
  std::map<std::string, std::string> labels;
  std::vector<std::string> dependencies;
  std::string publisher;
};

struct PublishResult {
  VersionInfo version;
  bool created = true;  // false: the same version with the same bytes already existed.
  std::vector<int64_t> queued_deltas;
};

// A streamed upload into tmp/; Commit() moves it into the blob store. Destroying an uncommitted
// upload deletes its temp file.
class Upload {
 public:
  virtual ~Upload() = default;
  virtual Status Write(ByteView data) = 0;
  // Checks the declared size/SHA-256 (kDigestMismatch), fsyncs and renames into the store.
  // Returns the blob's hex SHA-256.
  virtual Result<std::string> Commit() = 0;
  virtual uint64_t bytes_written() const = 0;
};

// Where a stored blob is, for serving with sendfile/pread and Range.
struct BlobRef {
  std::string sha256;
  std::string path;
  uint64_t size = 0;
};

enum class TokenScope { kRead = 1, kPublish = 2, kAdmin = 3 };  // Each includes the ones below.

struct Metrics {
  uint64_t artifacts = 0, versions = 0, blobs_bytes = 0;
  uint64_t deltas_ready = 0, deltas_not_worth = 0, deltas_failed = 0;
  uint64_t jobs_queued = 0, jobs_running = 0;
  uint64_t published_total = 0, publish_bytes_total = 0;  // Since Open().
  double job_seconds_total = 0;
};

class Repository {
 public:
  static Result<std::unique_ptr<Repository>> Open(const RepoOptions& options);
  virtual ~Repository() = default;

  // Names: artifact [A-Za-z0-9][A-Za-z0-9._-]{0,127}; version [A-Za-z0-9][A-Za-z0-9.+_-]{0,127}
  // (kInvalidArgument otherwise). Checked here, so no caller can smuggle a path.
  static Status ValidateArtifactName(std::string_view name);
  static Status ValidateVersion(std::string_view version);

  // |declared_sha256| (hex) and |declared_size| are checked at Commit when given.
  virtual Result<std::unique_ptr<Upload>> BeginUpload(std::optional<std::string> declared_sha256,
                                                      std::optional<uint64_t> declared_size) = 0;
  // Records the committed blob |sha256| as req.artifact/req.version: kAlreadyExists if that
  // version exists with other bytes; created=false if with the same bytes. Queues delta jobs
  // from the previous delta_history versions and re-signs the artifact's metadata.
  virtual Result<PublishResult> Publish(const PublishRequest& req, const std::string& sha256) = 0;

  virtual Result<std::vector<std::string>> ListArtifacts() = 0;
  // Ascending: semantic-version order when every version of the artifact is semver 2.0,
  // publish order otherwise. kNotFound for an unknown artifact.
  virtual Result<std::vector<VersionInfo>> ListVersions(std::string_view artifact) = 0;
  virtual Result<VersionInfo> Latest(std::string_view artifact) = 0;
  virtual Result<VersionInfo> GetVersion(std::string_view artifact, std::string_view version) = 0;

  // Deltas of an artifact, optionally only those from/to a version.
  virtual Result<std::vector<DeltaInfo>> ListDeltas(std::string_view artifact,
                                                    std::optional<std::string> from,
                                                    std::optional<std::string> to) = 0;
  virtual Result<DeltaInfo> GetDelta(int64_t id) = 0;
  // All jobs (deltas), newest first, at most |limit|.
  virtual Result<std::vector<DeltaInfo>> ListJobs(size_t limit) = 0;

  // The artifact's signed release metadata: the JSON envelope
  //   {"signed": {...}, "signatures": [{"keyid": hex, "sig": hex}]}
  // as served (docs/SECURITY.md). Re-signed first if older than half its lifetime.
  virtual Result<std::string> SignedMetadata(std::string_view artifact) = 0;
  // Hex Ed25519 public key and its key id (hex SHA-256 of the key).
  virtual std::string public_key_hex() const = 0;
  virtual std::string key_id() const = 0;

  virtual Result<BlobRef> OpenBlob(std::string_view sha256) = 0;
  // Hex SHA-256 of the chunk map of a stored object (a version's artifact or a ready delta's
  // patch), named by the object's hex SHA-256. kNotFound when no version or ready delta has those
  // bytes; kUnsupported for a repository that keeps no chunk maps.
  virtual Result<std::string> ChunkMapOf(std::string_view object_sha256) {
    return Error(ErrorCode::kUnsupported, "this repository keeps no chunk maps");
  }

  // Tokens are stored as SHA-256 hashes; the plaintext is returned once.
  virtual Result<std::string> CreateToken(std::string_view name, TokenScope scope) = 0;
  // kUnauthenticated for an unknown token, kPermissionDenied for too small a scope. Returns the
  // token's name.
  virtual Result<std::string> CheckToken(std::string_view token, TokenScope needed) = 0;
  virtual bool HasTokens() = 0;

  virtual Metrics GetMetrics() = 0;
  // Runs queued jobs on the calling thread until none is left (tests, start_workers=false).
  virtual Status RunJobsOnce() = 0;
  // Blocks until no job is queued or running, or |timeout_ms| passed (false then).
  virtual bool WaitForJobs(int64_t timeout_ms) = 0;
  // Stops workers (a running job finishes first); later calls still read.
  virtual void Shutdown() = 0;
};

// Ed25519 keys (libsodium). Key files hold the hex secret key (64 bytes -> 128 hex chars) and are
// written 0600; public key files hold the hex public key.
Status GenerateKeyPair(const std::string& secret_path, const std::string& public_path);

// Verifying metadata is device-side code: stream::VerifyMetadata (src/stream/release.h).
using stream::VerifyMetadata;

// Semantic Versioning 2.0.0 precedence: <0, 0, >0; nullopt when either is not semver.
using stream::CompareSemver;

}  // namespace ds::repo

#endif  // DELTASTREAM_REPO_REPO_H_
