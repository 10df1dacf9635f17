#include "repo/catalog.h"

#include <SQLiteCpp/SQLiteCpp.h>
#include <sqlite3.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <utility>

namespace ds::repo {
namespace {

using nlohmann::json;

// Every public method body runs inside this: SQLiteCpp and nlohmann throw, we do not.
template <typename F>
auto Guard(std::string_view what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const SQLite::Exception& e) {
    // SQLITE_FULL is the database's view of ENOSPC.
    const ErrorCode code =
        e.getErrorCode() == SQLITE_FULL ? ErrorCode::kNoSpace : ErrorCode::kIoError;
    return Error(code, "catalog " + std::string(what) + ": " + e.what());
  } catch (const std::exception& e) {
    return Error(ErrorCode::kInternal, "catalog " + std::string(what) + ": " + e.what());
  }
}

// Schema version 1. The deltas table is also the job queue.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE artifacts(
  name TEXT PRIMARY KEY,
  created_at INTEGER NOT NULL);
CREATE TABLE versions(
  id INTEGER PRIMARY KEY,
  artifact TEXT NOT NULL REFERENCES artifacts(name),
  version TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  compressed_size INTEGER NOT NULL DEFAULT 0,
  labels TEXT NOT NULL DEFAULT '{}',
  dependencies TEXT NOT NULL DEFAULT '[]',
  publisher TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  UNIQUE(artifact, version),
  UNIQUE(artifact, seq));
CREATE INDEX versions_by_sha256 ON versions(sha256);
CREATE TABLE deltas(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  artifact TEXT NOT NULL REFERENCES artifacts(name),
  from_version TEXT NOT NULL,
  to_version TEXT NOT NULL,
  base_sha256 TEXT NOT NULL,
  result_sha256 TEXT NOT NULL,
  format TEXT NOT NULL,
  status TEXT NOT NULL,
  sha256 TEXT NOT NULL DEFAULT '',
  size INTEGER NOT NULL DEFAULT 0,
  gen_seconds REAL NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  attempts INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  UNIQUE(artifact, from_version, to_version, format));
CREATE INDEX deltas_by_status ON deltas(status, id);
CREATE TABLE tokens(
  sha256 TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  scope INTEGER NOT NULL,
  created_at INTEGER NOT NULL);
CREATE TABLE metadata(
  artifact TEXT PRIMARY KEY REFERENCES artifacts(name),
  counter INTEGER NOT NULL,
  signed_at INTEGER NOT NULL,
  expires INTEGER NOT NULL,
  envelope TEXT NOT NULL);
)sql";

// Schema version 2: the hex SHA-256 of each object's chunk map blob (docs/PROTOCOL.md); empty
// until computed (rows from version 1 get theirs at the next Repository::Open).
constexpr const char* kSchemaV1ToV2 = R"sql(
ALTER TABLE versions ADD COLUMN chunk_map_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE deltas ADD COLUMN chunk_map_sha256 TEXT NOT NULL DEFAULT '';
CREATE INDEX deltas_by_sha256 ON deltas(sha256);
)sql";

constexpr const char* kVersionColumns =
    "artifact, version, sha256, size, compressed_size, labels, dependencies, publisher, "
    "created_at, seq, chunk_map_sha256";
constexpr const char* kDeltaColumns =
    "id, artifact, from_version, to_version, base_sha256, result_sha256, format, status, sha256, "
    "size, gen_seconds, error, attempts, created_at, updated_at, chunk_map_sha256";

DeltaStatus ParseStatus(const std::string& s) {
  if (s == "running") return DeltaStatus::kRunning;
  if (s == "ready") return DeltaStatus::kReady;
  if (s == "not_worth") return DeltaStatus::kNotWorth;
  if (s == "failed") return DeltaStatus::kFailed;
  return DeltaStatus::kQueued;
}

uint64_t U64(const SQLite::Column& c) { return static_cast<uint64_t>(c.getInt64()); }

VersionInfo ReadVersion(SQLite::Statement& q, int first = 0) {
  VersionInfo v;
  v.artifact = q.getColumn(first + 0).getString();
  v.version = q.getColumn(first + 1).getString();
  v.sha256 = q.getColumn(first + 2).getString();
  v.size = U64(q.getColumn(first + 3));
  v.compressed_size = U64(q.getColumn(first + 4));
  const json labels = json::parse(q.getColumn(first + 5).getString());
  for (auto it = labels.begin(); it != labels.end(); ++it) {
    v.labels[it.key()] = it.value().get<std::string>();
  }
  v.dependencies = json::parse(q.getColumn(first + 6).getString()).get<std::vector<std::string>>();
  v.publisher = q.getColumn(first + 7).getString();
  v.created_at = q.getColumn(first + 8).getInt64();
  v.seq = U64(q.getColumn(first + 9));
  v.chunk_map_sha256 = q.getColumn(first + 10).getString();
  return v;
}

DeltaInfo ReadDelta(SQLite::Statement& q) {
  DeltaInfo d;
  d.id = q.getColumn(0).getInt64();
  d.artifact = q.getColumn(1).getString();
  d.from_version = q.getColumn(2).getString();
  d.to_version = q.getColumn(3).getString();
  d.base_sha256 = q.getColumn(4).getString();
  d.result_sha256 = q.getColumn(5).getString();
  d.format = q.getColumn(6).getString();
  d.status = ParseStatus(q.getColumn(7).getString());
  d.sha256 = q.getColumn(8).getString();
  d.size = U64(q.getColumn(9));
  d.gen_seconds = q.getColumn(10).getDouble();
  d.error = q.getColumn(11).getString();
  d.attempts = q.getColumn(12).getInt();
  d.created_at = q.getColumn(13).getInt64();
  d.updated_at = q.getColumn(14).getInt64();
  d.chunk_map_sha256 = q.getColumn(15).getString();
  return d;
}

bool ArtifactExists(SQLite::Database& db, std::string_view artifact) {
  SQLite::Statement q(db, "SELECT 1 FROM artifacts WHERE name = ?");
  q.bind(1, std::string(artifact));
  return q.executeStep();
}

std::vector<VersionInfo> LoadVersions(SQLite::Database& db, std::string_view artifact) {
  SQLite::Statement q(db, std::string("SELECT ") + kVersionColumns +
                              " FROM versions WHERE artifact = ? ORDER BY seq");
  q.bind(1, std::string(artifact));
  std::vector<VersionInfo> out;
  while (q.executeStep()) out.push_back(ReadVersion(q));
  SortVersions(&out);
  return out;
}

}  // namespace

void SortVersions(std::vector<VersionInfo>* versions) {
  std::sort(versions->begin(), versions->end(),
            [](const VersionInfo& a, const VersionInfo& b) { return a.seq < b.seq; });
  const bool all_semver = std::all_of(versions->begin(), versions->end(), [](const auto& v) {
    return CompareSemver(v.version, v.version).has_value();
  });
  if (!all_semver) return;
  std::stable_sort(versions->begin(), versions->end(),
                   [](const VersionInfo& a, const VersionInfo& b) {
                     return *CompareSemver(a.version, b.version) < 0;
                   });
}

Catalog::Catalog(std::unique_ptr<SQLite::Database> db) : db_(std::move(db)) {}
Catalog::~Catalog() = default;

Result<std::unique_ptr<Catalog>> Catalog::Open(const std::string& path) {
  return Guard("open", [&]() -> Result<std::unique_ptr<Catalog>> {
    auto db =
        std::make_unique<SQLite::Database>(path, SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db->setBusyTimeout(5000);  // Another process (a CLI reading the catalog) may hold a lock.
    db->exec("PRAGMA journal_mode = WAL");
    // synchronous = FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power
    // loss. A lost commit here is not merely a lost row: the metadata counter could go back to
    // a value already served with other content, and clients that pinned the newer counter
    // would reject every later metadata as a rollback until it caught up; an acknowledged
    // publish could vanish as well. Commits are rare (a publish, a finished job), so the extra
    // WAL fsync per commit costs nothing that matters.
    db->exec("PRAGMA synchronous = FULL");
    db->exec("PRAGMA foreign_keys = ON");
    std::unique_ptr<Catalog> catalog(new Catalog(std::move(db)));
    DS_RETURN_IF_ERROR(catalog->Migrate());
    return catalog;
  });
}

Status Catalog::Migrate() {
  const int version = db_->execAndGet("PRAGMA user_version").getInt();
  if (version == kSchemaVersion) return Status::Ok();
  if (version > kSchemaVersion) {
    return Error(ErrorCode::kUnsupported, "catalog schema version " + std::to_string(version) +
                                              " is newer than this build's " +
                                              std::to_string(kSchemaVersion));
  }
  SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
  if (version < 1) db_->exec(kSchemaV1);
  if (version < 2) db_->exec(kSchemaV1ToV2);
  db_->exec("PRAGMA user_version = " + std::to_string(kSchemaVersion));
  tx.commit();
  return Status::Ok();
}

Result<int> Catalog::RequeueRunning(int64_t now) {
  std::lock_guard lock(mu_);
  return Guard("requeue", [&]() -> Result<int> {
    SQLite::Statement q(*db_,
                        "UPDATE deltas SET status = 'queued', updated_at = ? "
                        "WHERE status = 'running'");
    q.bind(1, now);
    return q.exec();
  });
}

Result<PublishResult> Catalog::Publish(const PublishRequest& req, const std::string& sha256,
                                       uint64_t size, int64_t now, int delta_history,
                                       const std::string& chunk_map_sha256) {
  std::lock_guard lock(mu_);
  return Guard("publish", [&]() -> Result<PublishResult> {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    PublishResult result;
    {
      SQLite::Statement q(*db_, std::string("SELECT ") + kVersionColumns +
                                    " FROM versions WHERE artifact = ? AND version = ?");
      q.bind(1, req.artifact);
      q.bind(2, req.version);
      if (q.executeStep()) {
        VersionInfo existing = ReadVersion(q);
        if (existing.sha256 != sha256) {
          return Error(ErrorCode::kAlreadyExists, req.artifact + " " + req.version +
                                                      " exists with other content (" +
                                                      existing.sha256 + ")");
        }
        result.version = std::move(existing);
        result.created = false;
        return result;  // Nothing written; the transaction rolls back empty.
      }
    }
    {
      SQLite::Statement q(*db_, "INSERT OR IGNORE INTO artifacts(name, created_at) VALUES(?, ?)");
      q.bind(1, req.artifact);
      q.bind(2, now);
      q.exec();
    }
    int64_t seq = 1;
    {
      SQLite::Statement q(*db_,
                          "SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE artifact = ?");
      q.bind(1, req.artifact);
      if (q.executeStep()) seq = q.getColumn(0).getInt64();
    }
    json labels = json::object();
    for (const auto& [k, v] : req.labels) labels[k] = v;
    const json deps = req.dependencies;
    {
      SQLite::Statement q(*db_,
                          "INSERT INTO versions(artifact, version, sha256, size, labels, "
                          "dependencies, publisher, created_at, seq, chunk_map_sha256) "
                          "VALUES(?,?,?,?,?,?,?,?,?,?)");
      q.bind(1, req.artifact);
      q.bind(2, req.version);
      q.bind(3, sha256);
      q.bind(4, static_cast<int64_t>(size));
      q.bind(5, labels.dump());
      q.bind(6, deps.dump());
      q.bind(7, req.publisher);
      q.bind(8, now);
      q.bind(9, seq);
      q.bind(10, chunk_map_sha256);
      q.exec();
    }
    const std::vector<VersionInfo> ordered = LoadVersions(*db_, req.artifact);
    size_t index = 0;
    while (index < ordered.size() && ordered[index].version != req.version) ++index;
    if (index == ordered.size()) return Error(ErrorCode::kInternal, "new version not found");
    result.version = ordered[index];
    const size_t first = index > static_cast<size_t>(std::max(delta_history, 0))
                             ? index - static_cast<size_t>(delta_history)
                             : 0;
    for (size_t i = first; i < index; ++i) {
      const VersionInfo& base = ordered[i];
      if (base.sha256 == sha256) continue;  // Same bytes: nothing to ship.
      SQLite::Statement q(*db_,
                          "INSERT OR IGNORE INTO deltas(artifact, from_version, to_version, "
                          "base_sha256, result_sha256, format, status, created_at, updated_at) "
                          "VALUES(?,?,?,?,?,'dspf','queued',?,?)");
      q.bind(1, req.artifact);
      q.bind(2, base.version);
      q.bind(3, req.version);
      q.bind(4, base.sha256);
      q.bind(5, sha256);
      q.bind(6, now);
      q.bind(7, now);
      if (q.exec() == 1) result.queued_deltas.push_back(db_->getLastInsertRowid());
    }
    tx.commit();
    return result;
  });
}

Result<std::vector<std::string>> Catalog::ListArtifacts() {
  std::lock_guard lock(mu_);
  return Guard("list artifacts", [&]() -> Result<std::vector<std::string>> {
    SQLite::Statement q(*db_, "SELECT name FROM artifacts ORDER BY name");
    std::vector<std::string> out;
    while (q.executeStep()) out.push_back(q.getColumn(0).getString());
    return out;
  });
}

Result<std::vector<VersionInfo>> Catalog::ListVersions(std::string_view artifact) {
  std::lock_guard lock(mu_);
  return Guard("list versions", [&]() -> Result<std::vector<VersionInfo>> {
    if (!ArtifactExists(*db_, artifact)) {
      return Error(ErrorCode::kNotFound, "no artifact " + std::string(artifact));
    }
    return LoadVersions(*db_, artifact);
  });
}

Result<VersionInfo> Catalog::GetVersion(std::string_view artifact, std::string_view version) {
  std::lock_guard lock(mu_);
  return Guard("get version", [&]() -> Result<VersionInfo> {
    SQLite::Statement q(*db_, std::string("SELECT ") + kVersionColumns +
                                  " FROM versions WHERE artifact = ? AND version = ?");
    q.bind(1, std::string(artifact));
    q.bind(2, std::string(version));
    if (!q.executeStep()) {
      return Error(ErrorCode::kNotFound,
                   "no version " + std::string(version) + " of " + std::string(artifact));
    }
    return ReadVersion(q);
  });
}

Result<std::vector<DeltaInfo>> Catalog::ListDeltas(std::string_view artifact,
                                                   const std::optional<std::string>& from,
                                                   const std::optional<std::string>& to) {
  std::lock_guard lock(mu_);
  return Guard("list deltas", [&]() -> Result<std::vector<DeltaInfo>> {
    if (!ArtifactExists(*db_, artifact)) {
      return Error(ErrorCode::kNotFound, "no artifact " + std::string(artifact));
    }
    std::string sql = std::string("SELECT ") + kDeltaColumns + " FROM deltas WHERE artifact = ?";
    if (from) sql += " AND from_version = ?";
    if (to) sql += " AND to_version = ?";
    sql += " ORDER BY id";
    SQLite::Statement q(*db_, sql);
    int i = 1;
    q.bind(i++, std::string(artifact));
    if (from) q.bind(i++, *from);
    if (to) q.bind(i++, *to);
    std::vector<DeltaInfo> out;
    while (q.executeStep()) out.push_back(ReadDelta(q));
    return out;
  });
}

Result<DeltaInfo> Catalog::GetDelta(int64_t id) {
  std::lock_guard lock(mu_);
  return Guard("get delta", [&]() -> Result<DeltaInfo> {
    SQLite::Statement q(*db_, std::string("SELECT ") + kDeltaColumns + " FROM deltas WHERE id = ?");
    q.bind(1, id);
    if (!q.executeStep()) return Error(ErrorCode::kNotFound, "no delta " + std::to_string(id));
    return ReadDelta(q);
  });
}

Result<std::vector<DeltaInfo>> Catalog::ListJobs(size_t limit) {
  std::lock_guard lock(mu_);
  return Guard("list jobs", [&]() -> Result<std::vector<DeltaInfo>> {
    SQLite::Statement q(
        *db_, std::string("SELECT ") + kDeltaColumns + " FROM deltas ORDER BY id DESC LIMIT ?");
    q.bind(1, static_cast<int64_t>(std::min<size_t>(limit, INT64_MAX)));
    std::vector<DeltaInfo> out;
    while (q.executeStep()) out.push_back(ReadDelta(q));
    return out;
  });
}

Status Catalog::SetCompressedSize(const std::string& sha256, uint64_t compressed_size) {
  std::lock_guard lock(mu_);
  return Guard("set compressed size", [&]() -> Status {
    SQLite::Statement q(*db_,
                        "UPDATE versions SET compressed_size = ? "
                        "WHERE sha256 = ? AND compressed_size = 0");
    q.bind(1, static_cast<int64_t>(compressed_size));
    q.bind(2, sha256);
    q.exec();
    return Status::Ok();
  });
}

Result<std::optional<JobClaim>> Catalog::ClaimJob(
    const std::function<bool(uint64_t, uint64_t)>& fits, int64_t now) {
  std::lock_guard lock(mu_);
  return Guard("claim job", [&]() -> Result<std::optional<JobClaim>> {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    std::optional<JobClaim> claim;
    {
      SQLite::Statement q(*db_,
                          "SELECT d.id, COALESCE(b.size, 0), COALESCE(r.size, 0), "
                          "COALESCE(r.compressed_size, 0) FROM deltas d "
                          "LEFT JOIN versions b ON b.artifact = d.artifact AND "
                          "b.version = d.from_version "
                          "LEFT JOIN versions r ON r.artifact = d.artifact AND "
                          "r.version = d.to_version "
                          "WHERE d.status = 'queued' ORDER BY d.id");
      while (q.executeStep()) {
        const uint64_t base = U64(q.getColumn(1)), result = U64(q.getColumn(2));
        if (!fits(base, result)) continue;
        claim.emplace();
        claim->delta.id = q.getColumn(0).getInt64();
        claim->base_size = base;
        claim->result_size = result;
        claim->result_compressed_size = U64(q.getColumn(3));
        break;
      }
    }
    if (!claim) return claim;
    {
      SQLite::Statement q(*db_,
                          "UPDATE deltas SET status = 'running', attempts = attempts + 1, "
                          "updated_at = ? WHERE id = ?");
      q.bind(1, now);
      q.bind(2, claim->delta.id);
      q.exec();
    }
    {
      SQLite::Statement q(*db_,
                          std::string("SELECT ") + kDeltaColumns + " FROM deltas WHERE id = ?");
      q.bind(1, claim->delta.id);
      if (!q.executeStep()) return Error(ErrorCode::kInternal, "claimed job vanished");
      claim->delta = ReadDelta(q);
    }
    tx.commit();
    return claim;
  });
}

Status Catalog::FinishJob(int64_t id, DeltaStatus status, const std::string& sha256, uint64_t size,
                          double gen_seconds, const std::string& error, int max_attempts,
                          int64_t now, const std::string& chunk_map_sha256) {
  std::lock_guard lock(mu_);
  return Guard("finish job", [&]() -> Status {
    if (status == DeltaStatus::kFailed) {
      SQLite::Statement q(*db_,
                          "UPDATE deltas SET status = CASE WHEN attempts >= ? THEN 'failed' "
                          "ELSE 'queued' END, error = ?, updated_at = ? WHERE id = ?");
      q.bind(1, max_attempts);
      q.bind(2, error);
      q.bind(3, now);
      q.bind(4, id);
      q.exec();
      return Status::Ok();
    }
    SQLite::Statement q(*db_,
                        "UPDATE deltas SET status = ?, sha256 = ?, size = ?, gen_seconds = ?, "
                        "error = '', updated_at = ?, chunk_map_sha256 = ? WHERE id = ?");
    q.bind(1, DeltaStatusName(status));
    q.bind(2, sha256);
    q.bind(3, static_cast<int64_t>(size));
    q.bind(4, gen_seconds);
    q.bind(5, now);
    q.bind(6, chunk_map_sha256);
    q.bind(7, id);
    q.exec();
    return Status::Ok();
  });
}

Result<std::vector<std::string>> Catalog::ObjectsWithoutChunkMap() {
  std::lock_guard lock(mu_);
  return Guard("objects without chunk map", [&]() -> Result<std::vector<std::string>> {
    SQLite::Statement q(*db_,
                        "SELECT sha256 FROM versions WHERE chunk_map_sha256 = '' UNION "
                        "SELECT sha256 FROM deltas WHERE status = 'ready' AND "
                        "chunk_map_sha256 = '' ORDER BY 1");
    std::vector<std::string> out;
    while (q.executeStep()) out.push_back(q.getColumn(0).getString());
    return out;
  });
}

Result<std::vector<std::string>> Catalog::SetChunkMap(const std::string& object_sha256,
                                                      const std::string& chunk_map_sha256) {
  std::lock_guard lock(mu_);
  return Guard("set chunk map", [&]() -> Result<std::vector<std::string>> {
    SQLite::Transaction tx(*db_, SQLite::TransactionBehavior::IMMEDIATE);
    std::vector<std::string> artifacts;
    {
      SQLite::Statement q(*db_,
                          "SELECT artifact FROM versions WHERE sha256 = ?1 AND "
                          "chunk_map_sha256 = '' UNION SELECT artifact FROM deltas WHERE "
                          "sha256 = ?1 AND status = 'ready' AND chunk_map_sha256 = ''");
      q.bind(1, object_sha256);
      while (q.executeStep()) artifacts.push_back(q.getColumn(0).getString());
    }
    for (const char* sql :
         {"UPDATE versions SET chunk_map_sha256 = ?1 WHERE sha256 = ?2 AND chunk_map_sha256 = ''",
          "UPDATE deltas SET chunk_map_sha256 = ?1 WHERE sha256 = ?2 AND status = 'ready' AND "
          "chunk_map_sha256 = ''"}) {
      SQLite::Statement q(*db_, sql);
      q.bind(1, chunk_map_sha256);
      q.bind(2, object_sha256);
      q.exec();
    }
    tx.commit();
    return artifacts;
  });
}

Result<std::string> Catalog::ChunkMapOf(const std::string& object_sha256) {
  std::lock_guard lock(mu_);
  return Guard("chunk map of", [&]() -> Result<std::string> {
    SQLite::Statement q(*db_,
                        "SELECT chunk_map_sha256 FROM versions WHERE sha256 = ?1 AND "
                        "chunk_map_sha256 != '' UNION ALL SELECT chunk_map_sha256 FROM deltas "
                        "WHERE sha256 = ?1 AND status = 'ready' AND chunk_map_sha256 != '' "
                        "LIMIT 1");
    q.bind(1, object_sha256);
    if (!q.executeStep()) {
      return Error(ErrorCode::kNotFound, "no streamable object " + object_sha256);
    }
    return q.getColumn(0).getString();
  });
}

Result<std::optional<MetadataRow>> Catalog::GetMetadata(std::string_view artifact) {
  std::lock_guard lock(mu_);
  return Guard("get metadata", [&]() -> Result<std::optional<MetadataRow>> {
    SQLite::Statement q(*db_,
                        "SELECT counter, signed_at, expires, envelope FROM metadata "
                        "WHERE artifact = ?");
    q.bind(1, std::string(artifact));
    std::optional<MetadataRow> row;
    if (q.executeStep()) {
      row.emplace();
      row->counter = U64(q.getColumn(0));
      row->signed_at = q.getColumn(1).getInt64();
      row->expires = q.getColumn(2).getInt64();
      row->envelope = q.getColumn(3).getString();
    }
    return row;
  });
}

Status Catalog::PutMetadata(std::string_view artifact, const MetadataRow& row) {
  std::lock_guard lock(mu_);
  return Guard("put metadata", [&]() -> Status {
    SQLite::Statement q(*db_,
                        "INSERT INTO metadata(artifact, counter, signed_at, expires, envelope) "
                        "VALUES(?,?,?,?,?) ON CONFLICT(artifact) DO UPDATE SET "
                        "counter = excluded.counter, signed_at = excluded.signed_at, "
                        "expires = excluded.expires, envelope = excluded.envelope "
                        "WHERE excluded.counter > metadata.counter");
    q.bind(1, std::string(artifact));
    q.bind(2, static_cast<int64_t>(row.counter));
    q.bind(3, row.signed_at);
    q.bind(4, row.expires);
    q.bind(5, row.envelope);
    if (q.exec() != 1) {
      return Error(ErrorCode::kInternal, "metadata counter " + std::to_string(row.counter) +
                                             " is not above the stored one");
    }
    return Status::Ok();
  });
}

Status Catalog::InsertToken(const std::string& token_sha256, std::string_view name,
                            TokenScope scope, int64_t now) {
  std::lock_guard lock(mu_);
  return Guard("insert token", [&]() -> Status {
    SQLite::Statement q(*db_,
                        "INSERT INTO tokens(sha256, name, scope, created_at) VALUES(?,?,?,?)");
    q.bind(1, token_sha256);
    q.bind(2, std::string(name));
    q.bind(3, static_cast<int>(scope));
    q.bind(4, now);
    q.exec();
    return Status::Ok();
  });
}

Result<std::optional<TokenRecord>> Catalog::FindToken(const std::string& token_sha256) {
  std::lock_guard lock(mu_);
  return Guard("find token", [&]() -> Result<std::optional<TokenRecord>> {
    SQLite::Statement q(*db_, "SELECT name, scope FROM tokens WHERE sha256 = ?");
    q.bind(1, token_sha256);
    std::optional<TokenRecord> rec;
    if (q.executeStep()) {
      rec.emplace();
      rec->name = q.getColumn(0).getString();
      const int scope = q.getColumn(1).getInt();
      rec->scope = static_cast<TokenScope>(std::clamp(scope, 1, 3));
    }
    return rec;
  });
}

Result<bool> Catalog::HasTokens() {
  std::lock_guard lock(mu_);
  return Guard("has tokens", [&]() -> Result<bool> {
    return db_->execAndGet("SELECT EXISTS(SELECT 1 FROM tokens)").getInt() != 0;
  });
}

Result<CatalogCounts> Catalog::Counts() {
  std::lock_guard lock(mu_);
  return Guard("counts", [&]() -> Result<CatalogCounts> {
    CatalogCounts c;
    c.artifacts = U64(db_->execAndGet("SELECT COUNT(*) FROM artifacts"));
    c.versions = U64(db_->execAndGet("SELECT COUNT(*) FROM versions"));
    // Distinct blobs: artifacts (deduplicated by hash) and kept patches.
    c.blobs_bytes = U64(db_->execAndGet(
        "SELECT COALESCE(SUM(size), 0) FROM (SELECT sha256, MAX(size) AS size FROM versions "
        "GROUP BY sha256 UNION SELECT sha256, size FROM deltas WHERE status = 'ready')"));
    SQLite::Statement q(*db_, "SELECT status, COUNT(*) FROM deltas GROUP BY status");
    while (q.executeStep()) {
      const uint64_t n = U64(q.getColumn(1));
      switch (ParseStatus(q.getColumn(0).getString())) {
        case DeltaStatus::kQueued:
          c.queued = n;
          break;
        case DeltaStatus::kRunning:
          c.running = n;
          break;
        case DeltaStatus::kReady:
          c.ready = n;
          break;
        case DeltaStatus::kNotWorth:
          c.not_worth = n;
          break;
        case DeltaStatus::kFailed:
          c.failed = n;
          break;
      }
    }
    return c;
  });
}

}  // namespace ds::repo
