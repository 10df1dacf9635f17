#include "repo/proxy_deltas.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "repo/stream_api.h"
#include "stream/stream.h"

namespace ds::repo {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr uint64_t kJobFixedMemory = 512ull << 20;

int64_t MonoMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool IsHex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

uint64_t SaturatingMulAdd(uint64_t a, uint64_t factor, uint64_t add) {
  if (a != 0 && factor > UINT64_MAX / a) return UINT64_MAX;
  const uint64_t m = a * factor;
  return m > UINT64_MAX - add ? UINT64_MAX : m + add;
}

// The master's estimate (repository.cc): suffix array + old + new + verification + encoders.
uint64_t JobMemoryEstimate(uint64_t old_size, uint64_t new_size) {
  return SaturatingMulAdd(old_size, 6, SaturatingMulAdd(new_size, 2, kJobFixedMemory));
}

// Compares rebuilt bytes with the expected result as the applier produces them.
class CompareSink : public delta::OutputSink {
 public:
  explicit CompareSink(ByteView expected) : expected_(expected) {}
  Status Write(ByteView data) override {
    if (data.size() > expected_.size() - pos_ ||
        std::memcmp(data.data(), expected_.data() + pos_, data.size()) != 0) {
      return Error(ErrorCode::kInternal,
                   "on-demand patch rebuilds other bytes near offset " + std::to_string(pos_));
    }
    pos_ += data.size();
    return Status::Ok();
  }
  uint64_t pos() const { return pos_; }

 private:
  ByteView expected_;
  uint64_t pos_ = 0;
};

std::string PairKey(const std::string& base, const std::string& result) {
  return base + "-" + result;
}

json PairJson(const OnDemandDelta& d) {
  return json{{"state", OnDemandStateName(d.state)},
              {"base_sha256", d.base_sha256},
              {"result_sha256", d.result_sha256},
              {"base_size", d.base_size},
              {"result_size", d.result_size},
              {"sha256", d.sha256},
              {"size", d.size},
              {"chunk_map_sha256", d.chunk_map_sha256},
              {"leaf_size", d.leaf_size},
              {"gen_seconds", d.gen_seconds}};
}

}  // namespace

const char* OnDemandStateName(OnDemandState s) {
  switch (s) {
    case OnDemandState::kQueued:
      return "queued";
    case OnDemandState::kRunning:
      return "running";
    case OnDemandState::kReady:
      return "ready";
    case OnDemandState::kNotWorth:
      return "not_worth";
    case OnDemandState::kFailed:
      return "failed";
  }
  return "unknown";
}

class OnDemandDeltas::Impl {
 public:
  Impl(const OnDemandOptions& o, ArtifactFetcher fetch) : options_(o), fetch_(std::move(fetch)) {}

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  Status Init() {
    if (options_.dir.empty() || options_.workers < 1) {
      return Error(ErrorCode::kInvalidArgument, "on-demand deltas need a directory and workers");
    }
    std::error_code ec;
    for (const std::string& d : {ObjectsDir(), PairsDir(), TmpDir()}) {
      fs::create_directories(d, ec);
      if (ec) return Error(ErrorCode::kIoError, "create " + d + ": " + ec.message());
    }
    for (const auto& d : fs::directory_iterator(TmpDir(), ec)) fs::remove(d.path(), ec);
    // Stored outcomes whose objects are all present; anything else is dropped.
    for (const auto& d : fs::directory_iterator(PairsDir(), ec)) {
      Result<Bytes> b = ReadFile(d.path().string(), 1 << 16);
      const json j = b.ok() ? json::parse(b->begin(), b->end(), nullptr, false) : json();
      OnDemandDelta p;
      if (j.is_object()) {
        p.base_sha256 = j.value("base_sha256", "");
        p.result_sha256 = j.value("result_sha256", "");
        p.base_size = j.value("base_size", uint64_t{0});
        p.result_size = j.value("result_size", uint64_t{0});
        p.sha256 = j.value("sha256", "");
        p.size = j.value("size", uint64_t{0});
        p.chunk_map_sha256 = j.value("chunk_map_sha256", "");
        p.leaf_size = j.value("leaf_size", uint64_t{0});
        p.gen_seconds = j.value("gen_seconds", 0.0);
      }
      const std::string state = j.is_object() ? j.value("state", "") : "";
      bool ok = IsHex64(p.base_sha256) && IsHex64(p.result_sha256) &&
                d.path().filename().string() == PairKey(p.base_sha256, p.result_sha256) + ".json";
      if (ok && state == "ready") {
        p.state = OnDemandState::kReady;
        Result<uint64_t> patch = FileSize(ObjectPath(p.sha256));
        ok = IsHex64(p.sha256) && IsHex64(p.chunk_map_sha256) && patch.ok() && *patch == p.size &&
             FileSize(ObjectPath(p.chunk_map_sha256)).ok();
      } else if (ok && state == "not_worth") {
        p.state = OnDemandState::kNotWorth;
      } else {
        ok = false;
      }
      if (!ok) {
        fs::remove(d.path(), ec);
        continue;
      }
      const std::string key = PairKey(p.base_sha256, p.result_sha256);
      if (p.state == OnDemandState::kReady) {
        patches_[p.sha256] = p.chunk_map_sha256;
        owner_[p.sha256] = owner_[p.chunk_map_sha256] = key;
        // Recency across restarts: the pair file's age (written when made).
        std::error_code tec;
        const auto age = fs::file_time_type::clock::now() - fs::last_write_time(d.path(), tec);
        const int64_t age_ms =
            tec ? 0 : std::chrono::duration_cast<std::chrono::milliseconds>(age).count();
        last_used_[key] = MonoMs() - std::max<int64_t>(age_ms, 0);
      }
      pairs_[key] = p;
    }
    for (const auto& d : fs::directory_iterator(ObjectsDir(), ec)) {
      Result<uint64_t> size = FileSize(d.path().string());
      if (size.ok()) stored_bytes_ += *size;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      EvictLocked("");  // The bound may have been lowered since the last run.
    }
    for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
    return Status::Ok();
  }

  std::optional<OnDemandDelta> Find(const std::string& base, const std::string& result) {
    std::lock_guard<std::mutex> lock(mu_);
    return FindLocked(PairKey(base, result));
  }

  Result<OnDemandDelta> Request(const std::string& base, uint64_t base_size,
                                const std::string& result, uint64_t result_size) {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string key = PairKey(base, result);
    if (std::optional<OnDemandDelta> p = FindLocked(key)) return *p;
    if (queue_.size() >= options_.queue_capacity) {
      ++refused_;
      return Error(ErrorCode::kUnavailable, "the on-demand delta queue is full (" +
                                                std::to_string(queue_.size()) + " jobs waiting)");
    }
    OnDemandDelta p;
    p.state = OnDemandState::kQueued;
    p.base_sha256 = base;
    p.result_sha256 = result;
    p.base_size = base_size;
    p.result_size = result_size;
    pairs_[key] = p;
    queue_.push_back(key);
    cv_.notify_all();
    return p;
  }

  size_t QueuePosition(const std::string& base, const std::string& result) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = std::find(queue_.begin(), queue_.end(), PairKey(base, result));
    return it == queue_.end() ? 0 : static_cast<size_t>(it - queue_.begin());
  }

  std::optional<net::Response> ServeObject(const std::string& sha) {
    if (!IsHex64(sha)) return std::nullopt;
    {
      std::lock_guard<std::mutex> lock(mu_);
      TouchLocked(sha);
    }
    Result<uint64_t> size = FileSize(ObjectPath(sha));
    if (!size.ok()) return std::nullopt;
    net::Response r;
    r.file = net::FileBody{ObjectPath(sha), 0, *size};
    r.With("Content-Type", "application/octet-stream")
        .With("ETag", "\"" + sha + "\"")
        .With("Cache-Control", kImmutable)
        .With("X-Content-SHA256", sha)
        .With("X-Deltastream-Cache", "on-demand");
    return r;
  }

  std::optional<net::Response> ServeChunk(const std::string& sha, const std::string& range) {
    std::string chunk_map_sha;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = patches_.find(sha);
      if (it == patches_.end()) return std::nullopt;
      chunk_map_sha = it->second;
      TouchLocked(sha);
    }
    Result<net::Response> r = Chunk(sha, chunk_map_sha, range);
    return r.ok() ? std::move(*r) : net::Response::FromStatus(r.status());
  }

  OnDemandStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    OnDemandStats s;
    s.queued = queue_.size();
    s.running = static_cast<uint64_t>(running_);
    s.done = done_;
    s.not_worth = not_worth_;
    s.failed = failed_;
    s.refused = refused_;
    s.stored_bytes = stored_bytes_;
    s.evicted = evicted_;
    return s;
  }

 private:
  std::string ObjectsDir() const { return options_.dir + "/objects"; }
  std::string PairsDir() const { return options_.dir + "/pairs"; }
  std::string TmpDir() const { return options_.dir + "/tmp"; }
  std::string ObjectPath(const std::string& sha) const { return ObjectsDir() + "/" + sha; }

  std::optional<OnDemandDelta> FindLocked(const std::string& key) {
    auto it = pairs_.find(key);
    if (it == pairs_.end()) return std::nullopt;
    if (it->second.state == OnDemandState::kFailed) {
      auto f = failed_at_.find(key);
      if (f == failed_at_.end() || MonoMs() - f->second >= options_.failure_retry_ms) {
        failed_at_.erase(key);
        pairs_.erase(it);
        return std::nullopt;
      }
    }
    if (it->second.state == OnDemandState::kReady) last_used_[key] = MonoMs();
    return it->second;
  }

  // Recency of the pair an object belongs to. REQUIRES: mu_ held.
  void TouchLocked(const std::string& sha) {
    auto it = owner_.find(sha);
    if (it != owner_.end()) last_used_[it->second] = MonoMs();
  }

  // Removes least recently used ready pairs (never |keep|, nor one used within the grace) until
  // objects/ fits max_stored_bytes. Their files go first, then the records: a crash between
  // leaves a pair file naming missing objects, which Init() discards. REQUIRES: mu_ held.
  void EvictLocked(const std::string& keep) {
    if (options_.max_stored_bytes == 0) return;
    const int64_t now = MonoMs();
    while (stored_bytes_ > options_.max_stored_bytes) {
      std::string victim;
      int64_t oldest = 0;
      for (const auto& [key, used] : last_used_) {
        if (key == keep || now - used < options_.evict_grace_ms) continue;
        if (victim.empty() || used < oldest) {
          victim = key;
          oldest = used;
        }
      }
      if (victim.empty()) return;  // Everything left is in use: over the bound for a while.
      const OnDemandDelta p = pairs_[victim];
      for (const std::string& sha : {p.sha256, p.chunk_map_sha256}) {
        auto o = owner_.find(sha);
        if (o == owner_.end() || o->second != victim) continue;
        Result<uint64_t> size = FileSize(ObjectPath(sha));
        if (::unlink(ObjectPath(sha).c_str()) == 0 && size.ok()) {
          stored_bytes_ -= std::min(stored_bytes_, *size);
        }
        owner_.erase(o);
      }
      ::unlink((PairsDir() + "/" + victim + ".json").c_str());
      patches_.erase(p.sha256);
      pairs_.erase(victim);
      last_used_.erase(victim);
      ++evicted_;
    }
  }

  Result<net::Response> Chunk(const std::string& sha, const std::string& chunk_map_sha,
                              const std::string& range_name) {
    DS_ASSIGN_OR_RETURN(auto range, stream::ParseChunkRangeName(range_name));
    const auto [first, last] = range;
    if (last < first) {
      return Error(ErrorCode::kInvalidArgument,
                   "chunk " + stream::ChunkRangeName(first, last) + " ends before it starts");
    }
    if (last - first >= kMaxLeavesPerChunk) {
      return Error(ErrorCode::kInvalidArgument,
                   "a chunk is at most " + std::to_string(kMaxLeavesPerChunk) + " leaves");
    }
    DS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> map_file,
                        RandomAccessFile::Open(ObjectPath(chunk_map_sha)));
    std::array<uint8_t, stream::kChunkMapHeaderSize> buf{};
    if (map_file->size() < buf.size()) {
      return Error(ErrorCode::kInternal, "stored chunk map " + chunk_map_sha + " is truncated");
    }
    DS_RETURN_IF_ERROR(map_file->ReadAt(0, buf));
    DS_ASSIGN_OR_RETURN(stream::ChunkMapHeader h, stream::ParseChunkMapHeader(buf));
    if (last >= h.count) {
      net::Response r = net::Response::FromStatus(
          Error(ErrorCode::kInvalidArgument, "chunk " + stream::ChunkRangeName(first, last) +
                                                 " is past the object's last leaf (" +
                                                 std::to_string(h.count) + " leaves)"));
      r.status = 416;
      r.With("X-Leaf-Count", std::to_string(h.count));
      return r;
    }
    DS_ASSIGN_OR_RETURN(uint64_t size, FileSize(ObjectPath(sha)));
    if (size != h.total_size) {
      return Error(ErrorCode::kInternal, "chunk map " + chunk_map_sha + " is not of " + sha);
    }
    const uint64_t offset = first * h.leaf_size;
    const uint64_t end = std::min(h.total_size, (last + 1) * h.leaf_size);
    net::Response r;
    r.file = net::FileBody{ObjectPath(sha), offset, end - offset};
    r.With("Content-Type", "application/octet-stream")
        .With("ETag", "\"" + sha + ":" + stream::ChunkRangeName(first, last) + "\"")
        .With("Cache-Control", kImmutable)
        .With("X-Leaf-Size", std::to_string(h.leaf_size))
        .With("X-Chunk-Map-SHA256", chunk_map_sha)
        .With("X-Deltastream-Cache", "on-demand");
    return r;
  }

  // REQUIRES: mu_ held. The oldest waiting job that fits the memory budget beside the running
  // ones; any job when nothing runs (a job larger than the budget runs alone).
  std::optional<std::string> ClaimLocked() {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      const OnDemandDelta& p = pairs_[*it];
      const uint64_t need = JobMemoryEstimate(p.base_size, p.result_size);
      if (running_ == 0 ||
          (need <= options_.memory_budget && mem_in_use_ <= options_.memory_budget - need)) {
        std::string key = *it;
        queue_.erase(it);
        return key;
      }
    }
    return std::nullopt;
  }

  void WorkerLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      std::optional<std::string> key = ClaimLocked();
      if (!key) {
        cv_.wait(lock);
        continue;
      }
      OnDemandDelta job = pairs_[*key];
      job.state = OnDemandState::kRunning;
      pairs_[*key] = job;
      const uint64_t memory = JobMemoryEstimate(job.base_size, job.result_size);
      mem_in_use_ += memory;
      ++running_;
      lock.unlock();
      Status s = RunJob(&job);
      if (s.ok()) s = Record(job);
      lock.lock();
      mem_in_use_ -= memory;
      --running_;
      if (s.ok()) {
        pairs_[*key] = job;
        if (job.state == OnDemandState::kReady) {
          patches_[job.sha256] = job.chunk_map_sha256;
          owner_[job.sha256] = owner_[job.chunk_map_sha256] = *key;
          last_used_[*key] = MonoMs();
          ++done_;
          EvictLocked(*key);
        } else {
          ++not_worth_;
        }
      } else {
        job.state = OnDemandState::kFailed;
        job.error = s.ToString();
        pairs_[*key] = job;
        failed_at_[*key] = MonoMs();
        ++failed_;
        std::fprintf(stderr, "deltastream: on-demand delta %s -> %s failed: %s\n",
                     job.base_sha256.c_str(), job.result_sha256.c_str(), job.error.c_str());
      }
      cv_.notify_all();
    }
  }

  // Makes, verifies and stores the patch (sets state to ready or not_worth).
  Status RunJob(OnDemandDelta* job) {
    try {
      DS_ASSIGN_OR_RETURN(std::string base_path, fetch_(job->base_sha256));
      DS_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> base_map, MappedFile::Open(base_path));
      DS_ASSIGN_OR_RETURN(std::string result_path, fetch_(job->result_sha256));
      DS_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> result_map, MappedFile::Open(result_path));
      const ByteView old_bytes = base_map->bytes(), new_bytes = result_map->bytes();
      // The fetcher checked the names; check again what is mapped (a file may have been replaced).
      if (ToHex(Sha256::Of(old_bytes)) != job->base_sha256 ||
          ToHex(Sha256::Of(new_bytes)) != job->result_sha256) {
        return Error(ErrorCode::kDigestMismatch, "an artifact changed under the job");
      }
      job->base_size = old_bytes.size();
      job->result_size = new_bytes.size();
      delta::GenerateOptions gen;
      gen.threads = options_.workers <= 1 ? 2 : 1;
      gen.max_encoder_memory = options_.max_encoder_memory;
      const auto start = std::chrono::steady_clock::now();
      DS_ASSIGN_OR_RETURN(Bytes patch, delta::GeneratePatch(old_bytes, new_bytes, gen));
      job->gen_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      // Verify with the streaming applier that devices run, byte by byte.
      delta::MemoryOldSource source(old_bytes);
      CompareSink sink(new_bytes);
      delta::PatchApplier applier(&source, &sink);
      DS_RETURN_IF_ERROR(applier.Write(patch));
      DS_RETURN_IF_ERROR(applier.Finish());
      if (sink.pos() != new_bytes.size()) {
        return Error(ErrorCode::kInternal, "on-demand patch rebuilds a shorter file");
      }
      job->size = patch.size();
      if (patch.size() >= new_bytes.size()) {
        job->state = OnDemandState::kNotWorth;  // Shipping the artifact is no worse.
        return Status::Ok();
      }
      job->sha256 = ToHex(Sha256::Of(patch));
      DS_ASSIGN_OR_RETURN(stream::ChunkMap map, stream::BuildChunkMap(ByteView(patch)));
      const Bytes map_bytes = map.Serialize();
      job->chunk_map_sha256 = ToHex(Sha256::Of(map_bytes));
      job->leaf_size = map.leaf_size();
      DS_RETURN_IF_ERROR(PutObject(job->sha256, patch));
      DS_RETURN_IF_ERROR(PutObject(job->chunk_map_sha256, map_bytes));
      job->state = OnDemandState::kReady;
      return Status::Ok();
    } catch (const std::exception& e) {  // std::bad_alloc from the generator, mostly.
      return Error(ErrorCode::kResourceLimit, std::string("on-demand delta job: ") + e.what());
    }
  }

  Status PutObject(const std::string& sha, ByteView data) {
    if (FileSize(ObjectPath(sha)).ok()) return Status::Ok();
    DS_RETURN_IF_ERROR(WriteFileAtomic(ObjectPath(sha), data));
    std::lock_guard<std::mutex> lock(mu_);
    stored_bytes_ += data.size();
    return Status::Ok();
  }

  // Written after the objects it names, so a crash never leaves a pair naming missing objects.
  Status Record(const OnDemandDelta& job) {
    const std::string text = PairJson(job).dump();
    return WriteFileAtomic(PairsDir() + "/" + PairKey(job.base_sha256, job.result_sha256) + ".json",
                           ByteView(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  }

  const OnDemandOptions options_;
  const ArtifactFetcher fetch_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, OnDemandDelta> pairs_;  // By PairKey.
  std::map<std::string, int64_t> failed_at_;    // PairKey -> MonoMs of the failure.
  std::map<std::string, std::string> patches_;  // Stored patch sha256 -> chunk map sha256.
  std::map<std::string, std::string> owner_;    // Stored object sha256 -> its pair's PairKey.
  std::map<std::string, int64_t> last_used_;    // Ready PairKey -> MonoMs of its last use.
  std::deque<std::string> queue_;
  int running_ = 0;
  uint64_t mem_in_use_ = 0;
  bool stop_ = false;
  uint64_t done_ = 0, not_worth_ = 0, failed_ = 0, refused_ = 0, stored_bytes_ = 0;
  uint64_t evicted_ = 0;
  std::vector<std::thread> workers_;
};

OnDemandDeltas::OnDemandDeltas(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OnDemandDeltas::~OnDemandDeltas() = default;

Result<std::unique_ptr<OnDemandDeltas>> OnDemandDeltas::Open(const OnDemandOptions& options,
                                                             ArtifactFetcher fetch) {
  auto impl = std::make_unique<Impl>(options, std::move(fetch));
  DS_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<OnDemandDeltas>(new OnDemandDeltas(std::move(impl)));
}

std::optional<OnDemandDelta> OnDemandDeltas::Find(const std::string& base_sha256,
                                                  const std::string& result_sha256) {
  return impl_->Find(base_sha256, result_sha256);
}
Result<OnDemandDelta> OnDemandDeltas::Request(const std::string& base_sha256, uint64_t base_size,
                                              const std::string& result_sha256,
                                              uint64_t result_size) {
  return impl_->Request(base_sha256, base_size, result_sha256, result_size);
}
size_t OnDemandDeltas::QueuePosition(const std::string& base_sha256,
                                     const std::string& result_sha256) {
  return impl_->QueuePosition(base_sha256, result_sha256);
}
std::optional<net::Response> OnDemandDeltas::ServeObject(const std::string& sha256) {
  return impl_->ServeObject(sha256);
}
std::optional<net::Response> OnDemandDeltas::ServeChunk(const std::string& sha256,
                                                        const std::string& range) {
  return impl_->ServeChunk(sha256, range);
}
OnDemandStats OnDemandDeltas::stats() { return impl_->stats(); }

}  // namespace ds::repo
