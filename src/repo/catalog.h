// The SQLite catalog (internal to src/repo): artifacts, versions, deltas (= delta jobs), tokens
// and the signed metadata of each artifact. SQLiteCpp exceptions stop here and become Status.
//
// Thread-safety: thread-safe. One connection, guarded by a mutex: every method is one short
// critical section (and compound updates are one transaction), which is simple and plenty for a
// catalog written a few times per publish.
#ifndef DELTASTREAM_REPO_CATALOG_H_
#define DELTASTREAM_REPO_CATALOG_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "repo/repo.h"

namespace SQLite {
class Database;
}

namespace ds::repo {

// Sorts versions ascending: by semver precedence when every one is semver 2.0 (ties keep
// publish order), else by publish order (seq).
void SortVersions(std::vector<VersionInfo>* versions);

// A claimed job with what the worker needs to know about its two versions.
struct JobClaim {
  DeltaInfo delta;
  uint64_t base_size = 0, result_size = 0;
  uint64_t result_compressed_size = 0;  // 0: not measured yet.
};

struct MetadataRow {
  uint64_t counter = 0;
  int64_t signed_at = 0, expires = 0;
  std::string envelope;
};

struct TokenRecord {
  std::string name;
  TokenScope scope = TokenScope::kRead;
};

struct CatalogCounts {
  uint64_t artifacts = 0, versions = 0, blobs_bytes = 0;
  uint64_t queued = 0, running = 0, ready = 0, not_worth = 0, failed = 0;
};

class Catalog {
 public:
  static constexpr int kSchemaVersion = 2;

  // Opens or creates the database at |path| and brings the schema to kSchemaVersion.
  static Result<std::unique_ptr<Catalog>> Open(const std::string& path);
  ~Catalog();

  // Jobs left "running" by a crash go back to the queue. Returns how many.
  Result<int> RequeueRunning(int64_t now);

  // One transaction: records the version (or reports the existing one) and queues delta jobs
  // from up to |delta_history| versions just below it in version order.
  // |chunk_map_sha256| is recorded with a new version.
  Result<PublishResult> Publish(const PublishRequest& req, const std::string& sha256, uint64_t size,
                                int64_t now, int delta_history,
                                const std::string& chunk_map_sha256 = "");

  Result<std::vector<std::string>> ListArtifacts();
  Result<std::vector<VersionInfo>> ListVersions(std::string_view artifact);  // Sorted.
  Result<VersionInfo> GetVersion(std::string_view artifact, std::string_view version);
  Result<std::vector<DeltaInfo>> ListDeltas(std::string_view artifact,
                                            const std::optional<std::string>& from,
                                            const std::optional<std::string>& to);
  Result<DeltaInfo> GetDelta(int64_t id);
  Result<std::vector<DeltaInfo>> ListJobs(size_t limit);

  // Stores the zstd -19 size of every version whose bytes are |sha256| and lack one.
  Status SetCompressedSize(const std::string& sha256, uint64_t compressed_size);

  // Marks the oldest queued job for which |fits(base_size, result_size)| holds as running
  // (attempts + 1) and returns it; nullopt when there is none.
  Result<std::optional<JobClaim>> ClaimJob(const std::function<bool(uint64_t, uint64_t)>& fits,
                                           int64_t now);
  // Records a job's end. kFailed with attempts < |max_attempts| puts it back in the queue.
  // |chunk_map_sha256| goes with a ready delta.
  Status FinishJob(int64_t id, DeltaStatus status, const std::string& sha256, uint64_t size,
                   double gen_seconds, const std::string& error, int max_attempts, int64_t now,
                   const std::string& chunk_map_sha256 = "");

  // Chunk maps (docs/PROTOCOL.md). Objects (version artifacts, ready patches) whose rows lack a
  // chunk map (rows from schema version 1), distinct hex SHA-256s.
  Result<std::vector<std::string>> ObjectsWithoutChunkMap();
  // Records |chunk_map_sha256| on every row of |object_sha256| that lacks one; returns the
  // artifacts of the rows changed (their metadata needs re-signing).
  Result<std::vector<std::string>> SetChunkMap(const std::string& object_sha256,
                                               const std::string& chunk_map_sha256);
  // The chunk map of a version's artifact or a ready patch; kNotFound when none has those bytes.
  Result<std::string> ChunkMapOf(const std::string& object_sha256);

  Result<std::optional<MetadataRow>> GetMetadata(std::string_view artifact);
  // Stores |row| unless a row with a counter >= row.counter exists (the counter never
  // decreases); kInternal then.
  Status PutMetadata(std::string_view artifact, const MetadataRow& row);

  Status InsertToken(const std::string& token_sha256, std::string_view name, TokenScope scope,
                     int64_t now);
  Result<std::optional<TokenRecord>> FindToken(const std::string& token_sha256);
  Result<bool> HasTokens();

  Result<CatalogCounts> Counts();

 private:
  explicit Catalog(std::unique_ptr<SQLite::Database> db);
  Status Migrate();

  std::mutex mu_;
  std::unique_ptr<SQLite::Database> db_;
};

}  // namespace ds::repo

#endif  // DELTASTREAM_REPO_CATALOG_H_
