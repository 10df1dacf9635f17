// Repository: ties the blob store, the catalog, the delta job workers and metadata signing.
#include <fcntl.h>
#include <sodium.h>
#include <sys/file.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>

#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "repo/blob_store.h"
#include "repo/catalog.h"
#include "repo/metadata.h"
#include "repo/repo.h"
#include "stream/stream.h"

namespace ds::repo {
namespace {

// A failing job is tried this many times in all before it is recorded as failed.
constexpr int kMaxJobAttempts = 3;
constexpr uint64_t kJobFixedMemory = 512ull << 20;
// Above this size the compressed-size measurement uses long-distance matching (zstd --long),
// which is what a full download would reasonably be compressed with.
constexpr uint64_t kLongDistanceThreshold = 32ull << 20;
constexpr size_t kMaxTokenNameLength = 128;

int64_t NowSeconds() { return static_cast<int64_t>(std::time(nullptr)); }

uint64_t SaturatingMulAdd(uint64_t a, uint64_t factor, uint64_t add) {
  if (a != 0 && factor > UINT64_MAX / a) return UINT64_MAX;
  const uint64_t m = a * factor;
  return m > UINT64_MAX - add ? UINT64_MAX : m + add;
}

// Suffix array (4-8 x old) + old + new + the verification pass and encoder state.
uint64_t JobMemoryEstimate(uint64_t old_size, uint64_t new_size) {
  return SaturatingMulAdd(old_size, 6, SaturatingMulAdd(new_size, 2, kJobFixedMemory));
}

// Size of |data| as zstd -19 (with --long for big inputs) would ship it.
Result<uint64_t> ZstdCompressedSize(ByteView data, int threads) {
  std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
  if (!cctx) return Error(ErrorCode::kInternal, "ZSTD_createCCtx failed");
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, 19);
  // Fails harmlessly on a libzstd built without threads: compression then runs inline.
  if (threads > 1) ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_nbWorkers, threads);
  if (data.size() > kLongDistanceThreshold) {
    ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_enableLongDistanceMatching, 1);
  }
  ZSTD_CCtx_setPledgedSrcSize(cctx.get(), data.size());
  Bytes out(ZSTD_CStreamOutSize());
  ZSTD_inBuffer in{data.data(), data.size(), 0};
  uint64_t total = 0;
  while (true) {
    ZSTD_outBuffer ob{out.data(), out.size(), 0};
    const size_t remaining = ZSTD_compressStream2(cctx.get(), &ob, &in, ZSTD_e_end);
    if (ZSTD_isError(remaining)) {
      return Error(ErrorCode::kInternal,
                   std::string("zstd size measurement: ") + ZSTD_getErrorName(remaining));
    }
    total += ob.pos;
    if (remaining == 0) return total;
  }
}

// Compares rebuilt bytes with the expected new version as the applier produces them.
class CompareSink : public delta::OutputSink {
 public:
  explicit CompareSink(ByteView expected) : expected_(expected) {}
  Status Write(ByteView data) override {
    if (data.size() > expected_.size() - pos_ ||
        std::memcmp(data.data(), expected_.data() + pos_, data.size()) != 0) {
      return Error(
          ErrorCode::kInternal,
          "patch rebuilds other bytes than the new version near offset " + std::to_string(pos_));
    }
    pos_ += data.size();
    return Status::Ok();
  }
  Status ReadBack(uint64_t offset, std::span<uint8_t> out) override {
    if (offset > pos_ || out.size() > pos_ - offset) {
      return Error(ErrorCode::kInternal, "read back past the rebuilt bytes");
    }
    std::memcpy(out.data(), expected_.data() + offset, out.size());
    return Status::Ok();
  }
  uint64_t pos() const { return pos_; }

 private:
  ByteView expected_;
  uint64_t pos_ = 0;
};

// Applies |patch| to |old| with the streaming applier that devices run and checks every byte
// against |neu|. Cheap insurance: a generator bug must never reach a device as a "ready" delta
// (the device would catch the hash mismatch, but only after downloading it).
Status VerifyPatch(ByteView old, ByteView neu, ByteView patch) {
  delta::MemoryOldSource source(old);
  CompareSink sink(neu);
  delta::PatchApplier applier(&source, &sink);
  DS_RETURN_IF_ERROR(applier.Write(patch));
  DS_RETURN_IF_ERROR(applier.Finish());
  if (sink.pos() != neu.size()) {
    return Error(ErrorCode::kInternal, "patch rebuilds a shorter file than the new version");
  }
  return Status::Ok();
}

// An exclusive flock on <data>/lock for the Repository's lifetime. One Repository per data
// directory: Open() empties tmp/, which would destroy another process's uploads in progress,
// and the metadata counters assume one signer. The kernel drops the lock when a process dies.
class DataDirLock {
 public:
  static Result<std::unique_ptr<DataDirLock>> Acquire(const std::string& data_dir) {
    const std::string path = data_dir + "/lock";
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("open " + path, errno);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) {
        return Error(ErrorCode::kUnavailable,
                     data_dir + " is in use by another repository instance");
      }
      return ErrnoStatus("lock " + path, err);
    }
    return std::unique_ptr<DataDirLock>(new DataDirLock(fd));
  }
  ~DataDirLock() { ::close(fd_); }
  DataDirLock(const DataDirLock&) = delete;
  DataDirLock& operator=(const DataDirLock&) = delete;

 private:
  explicit DataDirLock(int fd) : fd_(fd) {}
  int fd_;
};

struct JobOutcome {
  DeltaStatus status = DeltaStatus::kFailed;
  std::string sha256;
  uint64_t size = 0;
  double gen_seconds = 0;
  std::string chunk_map_sha256;
};

class RepositoryImpl : public Repository {
 public:
  RepositoryImpl(RepoOptions options, std::unique_ptr<DataDirLock> lock,
                 std::unique_ptr<BlobStore> blobs, std::unique_ptr<Catalog> catalog, SigningKey key)
      : options_(std::move(options)),
        lock_(std::move(lock)),
        blobs_(std::move(blobs)),
        catalog_(std::move(catalog)),
        key_(std::move(key)) {}

  ~RepositoryImpl() override {
    Shutdown();
    sodium_memzero(key_.secret.data(), key_.secret.size());
  }

  void StartWorkers() {
    const int n = std::max(1, options_.job_workers);
    for (int i = 0; i < n; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  }

  Result<std::unique_ptr<Upload>> BeginUpload(std::optional<std::string> declared_sha256,
                                              std::optional<uint64_t> declared_size) override {
    return blobs_->BeginUpload(std::move(declared_sha256), declared_size);
  }

  Result<PublishResult> Publish(const PublishRequest& req, const std::string& sha256) override {
    DS_RETURN_IF_ERROR(ValidateArtifactName(req.artifact));
    DS_RETURN_IF_ERROR(ValidateVersion(req.version));
    DS_ASSIGN_OR_RETURN(BlobRef blob, blobs_->Find(sha256));
    // The chunk map blob exists before the catalog row that names it.
    DS_ASSIGN_OR_RETURN(stream::ChunkMap map, stream::BuildChunkMap(blob.path));
    DS_ASSIGN_OR_RETURN(std::string chunk_map_sha256, blobs_->Put(map.Serialize()));
    DS_ASSIGN_OR_RETURN(PublishResult result,
                        catalog_->Publish(req, sha256, blob.size, NowSeconds(),
                                          options_.delta_history, chunk_map_sha256));
    // Also on an idempotent republish: if the first attempt failed after its catalog commit
    // (e.g. disk full while signing), the retry brings the metadata up to date.
    DS_RETURN_IF_ERROR(Resign(req.artifact).status());
    if (result.created) {
      published_total_.fetch_add(1);
      publish_bytes_total_.fetch_add(blob.size);
    }
    if (!result.queued_deltas.empty()) {
      std::lock_guard lock(jobs_mu_);
      jobs_cv_.notify_all();
    }
    return result;
  }

  Result<std::vector<std::string>> ListArtifacts() override { return catalog_->ListArtifacts(); }

  Result<std::vector<VersionInfo>> ListVersions(std::string_view artifact) override {
    DS_RETURN_IF_ERROR(ValidateArtifactName(artifact));
    return catalog_->ListVersions(artifact);
  }

  Result<VersionInfo> Latest(std::string_view artifact) override {
    DS_ASSIGN_OR_RETURN(std::vector<VersionInfo> versions, ListVersions(artifact));
    if (versions.empty()) {
      return Error(ErrorCode::kNotFound, "artifact " + std::string(artifact) + " has no version");
    }
    return std::move(versions.back());
  }

  Result<VersionInfo> GetVersion(std::string_view artifact, std::string_view version) override {
    DS_RETURN_IF_ERROR(ValidateArtifactName(artifact));
    DS_RETURN_IF_ERROR(ValidateVersion(version));
    return catalog_->GetVersion(artifact, version);
  }

  Result<std::vector<DeltaInfo>> ListDeltas(std::string_view artifact,
                                            std::optional<std::string> from,
                                            std::optional<std::string> to) override {
    DS_RETURN_IF_ERROR(ValidateArtifactName(artifact));
    return catalog_->ListDeltas(artifact, from, to);
  }

  Result<DeltaInfo> GetDelta(int64_t id) override { return catalog_->GetDelta(id); }

  Result<std::vector<DeltaInfo>> ListJobs(size_t limit) override {
    return catalog_->ListJobs(limit);
  }

  Result<std::string> SignedMetadata(std::string_view artifact) override {
    DS_RETURN_IF_ERROR(ValidateArtifactName(artifact));
    DS_ASSIGN_OR_RETURN(std::optional<MetadataRow> row, catalog_->GetMetadata(artifact));
    if (row && NowSeconds() <= row->signed_at + options_.metadata_ttl_seconds / 2) {
      return std::move(row->envelope);
    }
    return Resign(artifact);
  }

  std::string public_key_hex() const override { return key_.public_hex; }
  std::string key_id() const override { return key_.key_id; }

  Result<BlobRef> OpenBlob(std::string_view sha256) override { return blobs_->Find(sha256); }

  Result<std::string> ChunkMapOf(std::string_view object_sha256) override {
    if (!IsSha256Hex(object_sha256)) {
      return Error(ErrorCode::kInvalidArgument, "an object is named by 64 lower-case hex digits");
    }
    return catalog_->ChunkMapOf(std::string(object_sha256));
  }

  // Rows written before chunk maps existed (catalog schema 1) get theirs here, before anything
  // is served; their artifacts' metadata is re-signed to include them. One read of each object.
  Status BackfillChunkMaps() {
    DS_ASSIGN_OR_RETURN(std::vector<std::string> objects, catalog_->ObjectsWithoutChunkMap());
    std::set<std::string> artifacts;
    for (const std::string& sha : objects) {
      DS_ASSIGN_OR_RETURN(BlobRef blob, blobs_->Find(sha));
      DS_ASSIGN_OR_RETURN(stream::ChunkMap map, stream::BuildChunkMap(blob.path));
      DS_ASSIGN_OR_RETURN(std::string chunk_map_sha256, blobs_->Put(map.Serialize()));
      DS_ASSIGN_OR_RETURN(std::vector<std::string> changed,
                          catalog_->SetChunkMap(sha, chunk_map_sha256));
      artifacts.insert(changed.begin(), changed.end());
    }
    for (const std::string& artifact : artifacts) DS_RETURN_IF_ERROR(Resign(artifact).status());
    return Status::Ok();
  }

  Result<std::string> CreateToken(std::string_view name, TokenScope scope) override {
    if (name.empty() || name.size() > kMaxTokenNameLength ||
        std::any_of(name.begin(), name.end(),
                    [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) {
      return Error(ErrorCode::kInvalidArgument, "token name must be 1-128 printable characters");
    }
    const int s = static_cast<int>(scope);
    if (s < static_cast<int>(TokenScope::kRead) || s > static_cast<int>(TokenScope::kAdmin)) {
      return Error(ErrorCode::kInvalidArgument, "unknown token scope");
    }
    std::array<uint8_t, 32> raw;
    randombytes_buf(raw.data(), raw.size());
    std::string token = ToHex(ByteView(raw.data(), raw.size()));
    sodium_memzero(raw.data(), raw.size());
    DS_RETURN_IF_ERROR(
        catalog_->InsertToken(ToHex(Sha256::Of(AsBytes(token))), name, scope, NowSeconds()));
    return token;
  }

  // The presented token is hashed and looked up by its hash: the comparison the lookup makes is
  // between SHA-256 values, so its timing tells an attacker nothing about a valid token (they
  // cannot choose inputs whose hashes approach a stored one). No plaintext is ever stored.
  Result<std::string> CheckToken(std::string_view token, TokenScope needed) override {
    if (token.empty()) return Error(ErrorCode::kUnauthenticated, "no token");
    DS_ASSIGN_OR_RETURN(std::optional<TokenRecord> rec,
                        catalog_->FindToken(ToHex(Sha256::Of(AsBytes(token)))));
    if (!rec) return Error(ErrorCode::kUnauthenticated, "unknown token");
    if (static_cast<int>(rec->scope) < static_cast<int>(needed)) {
      return Error(ErrorCode::kPermissionDenied,
                   "token " + rec->name + " lacks the scope this request needs");
    }
    return std::move(rec->name);
  }

  bool HasTokens() override {
    Result<bool> r = catalog_->HasTokens();
    // Fail closed: if the catalog cannot tell, assume tokens exist so that checks stay on.
    return !r.ok() || *r;
  }

  Metrics GetMetrics() override {
    Metrics m;
    Result<CatalogCounts> c = catalog_->Counts();
    if (c.ok()) {
      m.artifacts = c->artifacts;
      m.versions = c->versions;
      m.blobs_bytes = c->blobs_bytes;
      m.deltas_ready = c->ready;
      m.deltas_not_worth = c->not_worth;
      m.deltas_failed = c->failed;
      m.jobs_queued = c->queued;
      m.jobs_running = c->running;
    }
    m.published_total = published_total_.load();
    m.publish_bytes_total = publish_bytes_total_.load();
    std::lock_guard lock(jobs_mu_);
    m.job_seconds_total = job_seconds_total_;
    return m;
  }

  Status RunJobsOnce() override {
    std::unique_lock lock(jobs_mu_);
    while (true) {
      DS_ASSIGN_OR_RETURN(std::optional<JobClaim> claim, ClaimLocked());
      if (!claim) {
        // Nothing fits now: done if nothing is queued, else wait for a worker to free memory.
        lock.unlock();
        DS_ASSIGN_OR_RETURN(CatalogCounts counts, catalog_->Counts());
        lock.lock();
        if (counts.queued == 0 || running_ == 0) return Status::Ok();
        jobs_cv_.wait_for(lock, std::chrono::milliseconds(100));
        continue;
      }
      RunClaimed(*claim, &lock);
    }
  }

  bool WaitForJobs(int64_t timeout_ms) override {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (true) {
      Result<CatalogCounts> counts = catalog_->Counts();
      if (counts.ok() && counts->queued == 0 && counts->running == 0) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::unique_lock lock(jobs_mu_);
      jobs_cv_.wait_for(lock, std::chrono::milliseconds(50));
    }
  }

  void Shutdown() override {
    {
      std::lock_guard lock(jobs_mu_);
      stop_ = true;
    }
    jobs_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
  }

 private:
  // REQUIRES: jobs_mu_ held. The oldest queued job that fits the remaining memory budget; any
  // job when nothing runs (so a job larger than the whole budget runs alone).
  Result<std::optional<JobClaim>> ClaimLocked() {
    const auto fits = [this](uint64_t old_size, uint64_t new_size) {
      if (running_ == 0) return true;
      const uint64_t need = JobMemoryEstimate(old_size, new_size);
      return need <= options_.job_memory_budget && mem_in_use_ <= options_.job_memory_budget - need;
    };
    return catalog_->ClaimJob(fits, NowSeconds());
  }

  // REQUIRES: |lock| holds jobs_mu_; it is released while the job runs and held on return.
  void RunClaimed(const JobClaim& claim, std::unique_lock<std::mutex>* lock) {
    const uint64_t memory = JobMemoryEstimate(claim.base_size, claim.result_size);
    mem_in_use_ += memory;
    ++running_;
    lock->unlock();
    const auto start = std::chrono::steady_clock::now();
    RunJob(claim);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    lock->lock();
    mem_in_use_ -= memory;
    --running_;
    job_seconds_total_ += seconds;
    jobs_cv_.notify_all();
  }

  void WorkerLoop() {
    std::unique_lock lock(jobs_mu_);
    while (!stop_) {
      Result<std::optional<JobClaim>> claim = ClaimLocked();
      if (!claim.ok() || !*claim) {
        // Woken by a publish or a finished job; the timeout covers anything else (a catalog
        // error, jobs re-queued after a failure).
        jobs_cv_.wait_for(lock, std::chrono::seconds(1));
        continue;
      }
      RunClaimed(**claim, &lock);
    }
  }

  void RunJob(const JobClaim& claim) {
    const DeltaInfo& d = claim.delta;
    Result<JobOutcome> outcome = MakeDelta(claim);
    Status s;
    if (outcome.ok()) {
      s = catalog_->FinishJob(d.id, outcome->status, outcome->sha256, outcome->size,
                              outcome->gen_seconds, "", kMaxJobAttempts, NowSeconds(),
                              outcome->chunk_map_sha256);
    } else {
      s = catalog_->FinishJob(d.id, DeltaStatus::kFailed, "", 0, 0, outcome.status().ToString(),
                              kMaxJobAttempts, NowSeconds());
    }
    // Only a ready delta changes what the metadata lists. If finishing or signing failed, the
    // row stays "running" (re-queued at the next Open) or the metadata waits for the next
    // re-sign (publish, another job, or the half-life refresh).
    if (s.ok() && outcome.ok() && outcome->status == DeltaStatus::kReady) {
      (void)Resign(d.artifact);
    }
  }

  Result<JobOutcome> MakeDelta(const JobClaim& claim) {
    try {
      const DeltaInfo& d = claim.delta;
      DS_ASSIGN_OR_RETURN(BlobRef old_ref, blobs_->Find(d.base_sha256));
      DS_ASSIGN_OR_RETURN(BlobRef new_ref, blobs_->Find(d.result_sha256));
      DS_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> old_map, MappedFile::Open(old_ref.path));
      DS_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> new_map, MappedFile::Open(new_ref.path));
      const ByteView old_bytes = old_map->bytes(), new_bytes = new_map->bytes();
      // One worker gets two threads; several workers share the cores one thread each.
      const int threads = options_.job_workers <= 1 ? 2 : 1;

      // The worth decision needs the target's compressed size: measured by the first job that
      // makes a delta to this version, stored for every version with these bytes.
      uint64_t compressed = claim.result_compressed_size;
      if (compressed == 0) {
        DS_ASSIGN_OR_RETURN(compressed, ZstdCompressedSize(new_bytes, threads));
        DS_RETURN_IF_ERROR(catalog_->SetCompressedSize(d.result_sha256, compressed));
      }

      delta::GenerateOptions gen;
      gen.threads = threads;
      gen.max_encoder_memory = options_.max_encoder_memory;
      const auto start = std::chrono::steady_clock::now();
      DS_ASSIGN_OR_RETURN(Bytes patch, delta::GeneratePatch(old_bytes, new_bytes, gen));
      JobOutcome out;
      out.gen_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      out.size = patch.size();
      DS_RETURN_IF_ERROR(VerifyPatch(old_bytes, new_bytes, patch));
      if (static_cast<double>(patch.size()) >=
          options_.worth_ratio * static_cast<double>(compressed)) {
        out.status = DeltaStatus::kNotWorth;  // The patch is not kept.
        return out;
      }
      DS_ASSIGN_OR_RETURN(out.sha256, blobs_->Put(patch));
      DS_ASSIGN_OR_RETURN(stream::ChunkMap map, stream::BuildChunkMap(ByteView(patch)));
      DS_ASSIGN_OR_RETURN(out.chunk_map_sha256, blobs_->Put(map.Serialize()));
      out.status = DeltaStatus::kReady;
      return out;
    } catch (const std::exception& e) {  // std::bad_alloc from the generator, mostly.
      return Error(ErrorCode::kResourceLimit, std::string("delta job: ") + e.what());
    }
  }

  // Builds, signs and stores the artifact's metadata with the next counter; returns the
  // envelope. Serialised so that counters and contents move forward together.
  Result<std::string> Resign(std::string_view artifact) {
    std::lock_guard lock(sign_mu_);
    DS_ASSIGN_OR_RETURN(std::vector<VersionInfo> versions, catalog_->ListVersions(artifact));
    DS_ASSIGN_OR_RETURN(std::vector<DeltaInfo> deltas,
                        catalog_->ListDeltas(artifact, std::nullopt, std::nullopt));
    DS_ASSIGN_OR_RETURN(std::optional<MetadataRow> previous, catalog_->GetMetadata(artifact));
    MetadataContent content;
    content.artifact = std::string(artifact);
    content.counter = previous ? previous->counter + 1 : 1;
    content.signed_at = NowSeconds();
    content.expires = content.signed_at + options_.metadata_ttl_seconds;
    if (!versions.empty()) content.latest = versions.back().version;
    for (const VersionInfo& v : versions) {
      content.versions.push_back({v.version, v.sha256, v.size, v.seq, v.chunk_map_sha256});
    }
    for (const DeltaInfo& d : deltas) {
      if (d.status != DeltaStatus::kReady) continue;
      content.deltas.push_back({d.id, d.from_version, d.to_version, d.base_sha256, d.result_sha256,
                                d.format, d.sha256, d.size, d.chunk_map_sha256});
    }
    DS_ASSIGN_OR_RETURN(std::string envelope, SignMetadata(content, key_));
    MetadataRow row{content.counter, content.signed_at, content.expires, envelope};
    DS_RETURN_IF_ERROR(catalog_->PutMetadata(artifact, row));
    return envelope;
  }

  const RepoOptions options_;
  std::unique_ptr<DataDirLock> lock_;  // Released last.
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<Catalog> catalog_;
  SigningKey key_;

  std::mutex sign_mu_;

  std::mutex jobs_mu_;  // Guards the fields below; taken before the catalog's own mutex.
  std::condition_variable jobs_cv_;
  uint64_t mem_in_use_ = 0;
  int running_ = 0;
  bool stop_ = false;
  double job_seconds_total_ = 0;
  std::vector<std::thread> workers_;

  std::atomic<uint64_t> published_total_{0}, publish_bytes_total_{0};
};

}  // namespace

Result<std::unique_ptr<Repository>> Repository::Open(const RepoOptions& options) {
  if (options.data_dir.empty()) return Error(ErrorCode::kInvalidArgument, "no data directory");
  if (options.delta_history < 0 || options.job_workers < 0 || options.worth_ratio <= 0 ||
      options.metadata_ttl_seconds <= 0) {
    return Error(ErrorCode::kInvalidArgument, "invalid repository options");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return Error(ec == std::errc::no_space_on_device ? ErrorCode::kNoSpace : ErrorCode::kIoError,
                 "cannot create " + options.data_dir + ": " + ec.message());
  }
  DS_ASSIGN_OR_RETURN(std::unique_ptr<DataDirLock> lock, DataDirLock::Acquire(options.data_dir));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<BlobStore> blobs, BlobStore::Open(options.data_dir));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<Catalog> catalog,
                      Catalog::Open(options.data_dir + "/catalog.db"));
  DS_RETURN_IF_ERROR(catalog->RequeueRunning(NowSeconds()).status());
  const std::string key_path = options.signing_key_path.empty()
                                   ? options.data_dir + "/keys/signing.key"
                                   : options.signing_key_path;
  DS_ASSIGN_OR_RETURN(SigningKey key, LoadOrCreateSigningKey(key_path));
  auto repo = std::make_unique<RepositoryImpl>(options, std::move(lock), std::move(blobs),
                                               std::move(catalog), std::move(key));
  DS_RETURN_IF_ERROR(repo->BackfillChunkMaps());
  if (options.start_workers) repo->StartWorkers();
  return std::unique_ptr<Repository>(std::move(repo));
}

}  // namespace ds::repo
