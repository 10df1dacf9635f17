// The agent's update flow (docs/PROTOCOL.md, "Agent"): signed metadata, route, verified chunked
// download with pipelined apply, atomic install, health check, rollback, fallback to full.
#include "agent/agent.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <ctime>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent/fetch.h"
#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "delta/vcdiff.h"
#include "net/http.h"
#include "stream/release.h"
#include "stream/stream.h"

namespace ds::agent {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxMetadataBytes = 16 << 20;
constexpr uint64_t kMaxChunkMapBytes = 16 + stream::kChunkMapHeaderSize + 32 * stream::kMaxLeaves;
constexpr uint64_t kDiskMargin = 1 << 20;
// Longest wait the agent honours in a Retry-After before asking for the full artifact instead.
constexpr int64_t kMaxRetryAfterSeconds = 30;

// ---- Small file helpers ----

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string DirOf(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string BaseOf(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

Status MakeDir(const std::string& path, mode_t mode) {
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return ErrnoStatus("mkdir " + path, errno);
  }
  return Status::Ok();
}

Status FsyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open " + dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoStatus("fsync " + dir, err);
  return Status::Ok();
}

Status RemoveTree(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return errno == ENOENT ? Status::Ok() : ErrnoStatus("open " + dir, errno);
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    ::unlink((dir + "/" + name).c_str());
  }
  ::closedir(d);
  if (::rmdir(dir.c_str()) != 0 && errno != ENOENT) return ErrnoStatus("rmdir " + dir, errno);
  return Status::Ok();
}

// Hex SHA-256 of a file, streamed; kNotFound when it does not exist.
Result<std::string> HashFile(const std::string& path) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, RandomAccessFile::Open(path));
  Sha256 h;
  Bytes buf(1 << 20);
  for (uint64_t off = 0; off < f->size();) {
    const uint64_t n = std::min<uint64_t>(buf.size(), f->size() - off);
    DS_RETURN_IF_ERROR(f->ReadAt(off, std::span<uint8_t>(buf.data(), n)));
    h.Update(ByteView(buf.data(), n));
    off += n;
  }
  return ToHex(h.Finish());
}

// Copies |src| to |dest| atomically (|dest| is complete or untouched).
Status CopyFileAtomic(const std::string& src, const std::string& dest, mode_t mode) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, RandomAccessFile::Open(src));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> w, AtomicFileWriter::Create(dest, mode));
  Bytes buf(1 << 20);
  for (uint64_t off = 0; off < f->size();) {
    const uint64_t n = std::min<uint64_t>(buf.size(), f->size() - off);
    DS_RETURN_IF_ERROR(f->ReadAt(off, std::span<uint8_t>(buf.data(), n)));
    DS_RETURN_IF_ERROR(w->Append(ByteView(buf.data(), n)));
    off += n;
  }
  return w->Commit();
}

// Makes |dest| hold what |src| holds now: a hard link when both are on one filesystem (the
// agent never modifies an installed file in place, it replaces it by rename, so the link keeps
// the old content), else a copy. Atomic either way.
Status LinkOrCopy(const std::string& src, const std::string& dest) {
  const std::string tmp = dest + ".link";
  ::unlink(tmp.c_str());
  if (::link(src.c_str(), tmp.c_str()) == 0) {
    if (::rename(tmp.c_str(), dest.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      return ErrnoStatus("rename " + tmp, err);
    }
    return FsyncDir(DirOf(dest));
  }
  DS_ASSIGN_OR_RETURN(mode_t mode, FileMode(src));
  return CopyFileAtomic(src, dest, mode);
}

// Free bytes for an unprivileged writer on |dir|'s filesystem.
Result<uint64_t> FreeBytes(const std::string& dir) {
  struct statvfs st;
  if (::statvfs(dir.c_str(), &st) != 0) return ErrnoStatus("statvfs " + dir, errno);
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

// Removes temporary files an AtomicFileWriter for |dest| left behind when killed.
void RemoveStaleTemps(const std::string& dest) {
  const std::string dir = DirOf(dest), prefix = BaseOf(dest) + ".tmp.";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() == prefix.size() + 6 && name.compare(0, prefix.size(), prefix) == 0) {
      ::unlink((dir + "/" + name).c_str());
    }
  }
  ::closedir(d);
}

// ---- Persistent per-artifact state ----

struct ArtifactState {
  std::string installed_version, installed_sha256;
  std::string previous_version, previous_sha256;
  uint64_t trusted_counter = 0;
  std::string last_result;
  std::string failed_sha256;  // A version that failed its health check here.
};

ArtifactState LoadState(const std::string& path) {
  ArtifactState st;
  Result<Bytes> text = ReadFile(path, 1 << 20);
  if (!text.ok()) return st;
  try {
    const json doc = json::parse(text->begin(), text->end());
    st.installed_version = doc.value("installed_version", "");
    st.installed_sha256 = doc.value("installed_sha256", "");
    st.previous_version = doc.value("previous_version", "");
    st.previous_sha256 = doc.value("previous_sha256", "");
    st.trusted_counter = doc.value("trusted_counter", uint64_t{0});
    st.last_result = doc.value("last_result", "");
    st.failed_sha256 = doc.value("failed_sha256", "");
  } catch (const json::exception&) {
    // A damaged state file is rebuilt from what is installed; the trusted counter restarts from
    // the next verified metadata.
  }
  return st;
}

Status SaveState(const std::string& path, const ArtifactState& st) {
  const json doc = {
      {"installed_version", st.installed_version}, {"installed_sha256", st.installed_sha256},
      {"previous_version", st.previous_version},   {"previous_sha256", st.previous_sha256},
      {"trusted_counter", st.trusted_counter},     {"last_result", st.last_result},
      {"failed_sha256", st.failed_sha256}};
  return WriteFileAtomic(path, AsBytes(doc.dump(2) + "\n"), 0600);
}

// ---- Consumers: what the verified object bytes turn into ----

// The new version being built beside the installed one, "<install>.ds-new". Unlike a temporary
// file it survives a killed agent: with the applier's checkpoint it is where the next run
// continues. Commit() makes it the installed file atomically.
class StagedOutput {
 public:
  static Result<std::unique_ptr<StagedOutput>> Open(const std::string& dest, mode_t mode) {
    const std::string path = dest + ".ds-new";
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return ErrnoStatus("open " + path, errno);
    auto out = std::unique_ptr<StagedOutput>(new StagedOutput(fd, path, dest, mode));
    const off_t end = ::lseek(fd, 0, SEEK_END);
    if (end < 0) return ErrnoStatus("seek " + path, errno);
    out->size_ = static_cast<uint64_t>(end);
    return out;
  }
  ~StagedOutput() {
    if (fd_ >= 0) ::close(fd_);
  }
  uint64_t size() const { return size_; }
  Status Truncate(uint64_t size) {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
      return ErrnoStatus("truncate " + path_, errno);
    size_ = size;
    return Status::Ok();
  }
  Status Append(ByteView data) {
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n =
          ::pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(size_ + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("write " + path_, errno);
      }
      done += static_cast<size_t>(n);
    }
    size_ += data.size();
    return Status::Ok();
  }
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) const {
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t n =
          ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Error(ErrorCode::kIoError, "read back " + path_);
      done += static_cast<size_t>(n);
    }
    return Status::Ok();
  }
  Status Sync() {
    if (::fdatasync(fd_) != 0) return ErrnoStatus("fsync " + path_, errno);
    return Status::Ok();
  }
  // fsync, permission bits, rename over the destination, fsync of the directory.
  Status Commit() {
    DS_RETURN_IF_ERROR(Sync());
    if (::fchmod(fd_, mode_) != 0) return ErrnoStatus("chmod " + path_, errno);
    if (::rename(path_.c_str(), dest_.c_str()) != 0) {
      return ErrnoStatus("rename " + path_ + " over " + dest_, errno);
    }
    return FsyncDir(DirOf(dest_));
  }

 private:
  StagedOutput(int fd, std::string path, std::string dest, mode_t mode)
      : fd_(fd), path_(std::move(path)), dest_(std::move(dest)), mode_(mode) {}
  int fd_;
  std::string path_, dest_;
  mode_t mode_;
  uint64_t size_ = 0;
};

// Writes the rebuilt file to the staged output, hashing what it writes.
class InstallSink : public delta::OutputSink {
 public:
  explicit InstallSink(StagedOutput* w) : w_(w) {}
  Status Write(ByteView data) override {
    hash_.Update(data);
    return w_->Append(data);
  }
  Status ReadBack(uint64_t offset, std::span<uint8_t> out) override {
    return w_->ReadAt(offset, out);
  }
  // Keeps the first |size| bytes already in the output (hashing them) and drops the rest.
  Status KeepPrefix(uint64_t size) {
    hash_.Finish();  // Resets.
    DS_RETURN_IF_ERROR(w_->Truncate(size));
    Bytes buf(1 << 20);
    for (uint64_t off = 0; off < size;) {
      const uint64_t n = std::min<uint64_t>(buf.size(), size - off);
      DS_RETURN_IF_ERROR(w_->ReadAt(off, std::span<uint8_t>(buf.data(), n)));
      hash_.Update(ByteView(buf.data(), n));
      off += n;
    }
    return Status::Ok();
  }
  std::string Digest() { return ToHex(hash_.Finish()); }
  uint64_t size() const { return w_->size(); }
  StagedOutput* output() { return w_; }

 private:
  StagedOutput* w_;
  Sha256 hash_;
};

// The full artifact: copied as it arrives. The output itself is the checkpoint: a restart keeps
// the part of it that is within the verified prefix (and checks it in the final hash).
class CopyConsumer : public ObjectConsumer {
 public:
  explicit CopyConsumer(InstallSink* sink) : sink_(sink) {}
  Result<uint64_t> Start(const ReadFn&, uint64_t verified_prefix) override {
    const uint64_t keep = std::min(sink_->output()->size(), verified_prefix);
    DS_RETURN_IF_ERROR(sink_->KeepPrefix(keep));
    return keep;
  }
  Status Consume(ByteView data) override { return sink_->Write(data); }
  Status Finish() override { return sink_->output()->Sync(); }

 private:
  InstallSink* sink_;
};

// A patch (DSPF or VCDIFF, told apart by its first bytes) applied to the installed file. DSPF
// patches are checkpointed after every segment (the output synced, then "apply.json" written),
// so a restarted agent continues applying from the last completed segment.
class PatchConsumer : public ObjectConsumer {
 public:
  PatchConsumer(const delta::OldSource* old, InstallSink* sink, std::string checkpoint_path,
                std::string object_sha256, const delta::ApplyLimits& limits)
      : old_(old),
        sink_(sink),
        checkpoint_path_(std::move(checkpoint_path)),
        object_(std::move(object_sha256)),
        limits_(limits) {
    // The agent hashed the installed file itself before choosing this delta.
    limits_.verify_old_hash = false;
  }

  Result<uint64_t> Start(const ReadFn& read, uint64_t verified_prefix) override {
    std::optional<Saved> saved = LoadCheckpoint();
    if (saved && saved->cp.patch_offset <= verified_prefix &&
        saved->cp.output_bytes <= sink_->output()->size()) {
      Bytes header(saved->header_size);
      auto applier = std::make_unique<delta::PatchApplier>(old_, sink_, limits_);
      if (read(0, header).ok() && applier->Write(header).ok() && applier->header_parsed() &&
          applier->header_size() == saved->header_size && applier->ResumeAt(saved->cp).ok()) {
        DS_RETURN_IF_ERROR(sink_->KeepPrefix(saved->cp.output_bytes));
        dspf_ = std::move(applier);
        InstallCheckpoints();
        return saved->cp.patch_offset;
      }
    }
    ::unlink(checkpoint_path_.c_str());
    DS_RETURN_IF_ERROR(sink_->KeepPrefix(0));
    return 0;
  }

  Status Consume(ByteView data) override {
    if (dspf_ == nullptr && vcdiff_ == nullptr) {
      head_.insert(head_.end(), data.begin(), data.end());
      if (head_.size() < 4) return Status::Ok();
      switch (delta::DetectPatchFormat(head_)) {
        case delta::PatchFormat::kDspf:
          dspf_ = std::make_unique<delta::PatchApplier>(old_, sink_, limits_);
          InstallCheckpoints();
          break;
        case delta::PatchFormat::kVcdiff:
          vcdiff_ = std::make_unique<delta::VcdiffApplier>(old_, sink_, limits_);
          break;
        default:
          return Error(ErrorCode::kPatchBadMagic, "the delta is neither DSPF nor VCDIFF");
      }
      Bytes head = std::move(head_);
      return Write(head);
    }
    return Write(data);
  }
  Status Finish() override {
    if (dspf_)
      DS_RETURN_IF_ERROR(dspf_->Finish());
    else if (vcdiff_)
      DS_RETURN_IF_ERROR(vcdiff_->Finish());
    else
      return Error(ErrorCode::kPatchTruncated, "the delta is shorter than its magic");
    return sink_->output()->Sync();
  }

 private:
  struct Saved {
    delta::ApplyCheckpoint cp;
    uint64_t header_size = 0;
  };

  std::optional<Saved> LoadCheckpoint() {
    Result<Bytes> text = ReadFile(checkpoint_path_, 4096);
    if (!text.ok()) return std::nullopt;
    try {
      const json j = json::parse(text->begin(), text->end());
      if (j.at("object").get<std::string>() != object_) return std::nullopt;
      Saved s;
      s.header_size = j.at("header_size").get<uint64_t>();
      s.cp.patch_offset = j.at("patch_offset").get<uint64_t>();
      s.cp.segments_done = j.at("segments_done").get<uint64_t>();
      s.cp.output_bytes = j.at("output_bytes").get<uint64_t>();
      if (s.header_size == 0 || s.header_size > (1 << 20)) return std::nullopt;
      return s;
    } catch (const json::exception&) {
      return std::nullopt;
    }
  }

  void InstallCheckpoints() {
    dspf_->SetCheckpointCallback([this](const delta::ApplyCheckpoint& cp) -> Status {
      // The output first, then the record that it is there.
      DS_RETURN_IF_ERROR(sink_->output()->Sync());
      const json j = {{"object", object_},
                      {"header_size", dspf_->header_size()},
                      {"patch_offset", cp.patch_offset},
                      {"segments_done", cp.segments_done},
                      {"output_bytes", cp.output_bytes}};
      return WriteFileAtomic(checkpoint_path_, AsBytes(j.dump()), 0600);
    });
  }

  Status Write(ByteView data) { return dspf_ ? dspf_->Write(data) : vcdiff_->Write(data); }

  const delta::OldSource* old_;
  InstallSink* sink_;
  std::string checkpoint_path_, object_;
  delta::ApplyLimits limits_;
  Bytes head_;
  std::unique_ptr<delta::PatchApplier> dspf_;
  std::unique_ptr<delta::VcdiffApplier> vcdiff_;
};

bool IsLocalFailure(const Status& s) {
  return s.code() == ErrorCode::kNoSpace || s.code() == ErrorCode::kIoError;
}

int64_t WallNow() { return static_cast<int64_t>(std::time(nullptr)); }

}  // namespace

class Agent::Impl {
 public:
  Impl(AgentConfig config, EventSink events, int lock_fd)
      : config_(std::move(config)), events_(std::move(events)), lock_fd_(lock_fd) {
    net::ClientOptions o;
    o.bearer_token = config_.token;
    o.ca_file = config_.ca_file;
    o.connect_timeout_ms = config_.connect_timeout_ms;
    o.low_speed_timeout_ms = config_.stall_timeout_ms;
    o.max_body_bytes = kMaxChunkMapBytes;
    client_ = std::make_unique<net::Client>(o);
  }
  ~Impl() {
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  Result<CheckResult> Check(const std::string& name);
  Result<UpdateResult> Update(const std::string& name, std::optional<std::string> to);
  Status Rollback(const std::string& name);
  Result<ArtifactStatus> GetStatus(const std::string& name);

 private:
  struct Context {
    const ManagedArtifact* art = nullptr;
    std::string dir, state_path;
    ArtifactState state;
    stream::Release release;
    std::string installed_sha256;  // Empty: nothing installed.
    const stream::ReleaseVersion* installed = nullptr;
  };

  void Emit(Event e) {
    if (events_) events_(e);
  }
  void Say(const std::string& type, const std::string& artifact, const std::string& message) {
    Event e;
    e.type = type;
    e.artifact = artifact;
    e.message = message;
    e.elapsed = NowSeconds() - start_;
    Emit(e);
  }

  Result<const ManagedArtifact*> Find(const std::string& name) {
    const ManagedArtifact* a = config_.Find(name);
    if (a == nullptr) {
      return Error(ErrorCode::kNotFound, "artifact " + name + " is not managed by this agent");
    }
    return a;
  }

  // GET |path| from the proxies with retries and backoff; a 2xx answer, or the last error.
  // A 202/503 with Retry-After is returned as is when |accept_retry_after|.
  Result<net::ClientResponse> GetWithRetry(const std::string& path, bool accept_retry_after) {
    Status last;
    for (int attempt = 0; attempt <= config_.retry_budget; ++attempt) {
      if (attempt > 0) {
        const double ms = std::min<double>(
            static_cast<double>(config_.backoff_max_ms),
            static_cast<double>(config_.backoff_initial_ms) * std::pow(2.0, attempt - 1));
        std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms));
      }
      const std::string& base = config_.proxies[(proxy_ + attempt) % config_.proxies.size()];
      Result<net::ClientResponse> r = client_->Get(base + path);
      if (!r.ok()) {
        last = r.status();
        continue;
      }
      if (r->status >= 200 && r->status < 300 && r->status != 202) {
        proxy_ = (proxy_ + attempt) % config_.proxies.size();
        return r;
      }
      if (accept_retry_after && (r->status == 202 || r->status == 503) &&
          !r->Header("retry-after").empty()) {
        return r;
      }
      last = net::StatusFromResponse(*r);
      if (last.ok()) last = Error(ErrorCode::kProtocol, "HTTP " + std::to_string(r->status));
      // 4xx answers other than 408/429 will not change by asking again.
      if (r->status >= 400 && r->status < 500 && r->status != 408 && r->status != 429) {
        return last.WithContext("GET " + path);
      }
    }
    return last.WithContext("GET " + path);
  }

  Status Prepare(const std::string& name, Context* ctx);
  Result<stream::StreamDescriptor> OpenStream(Context& ctx, const stream::ReleaseVersion& target,
                                              bool want_delta, std::string* note);
  Result<stream::ChunkMap> FetchChunkMap(const stream::StreamDescriptor& d);
  Status Download(Context& ctx, const stream::ReleaseVersion& target,
                  const stream::StreamDescriptor& d, UpdateResult* out);
  // A chain: each step rebuilds an intermediate version under <state>/chain/ (kept, verified,
  // across restarts), the last one the target, which is installed.
  Status DownloadChain(Context& ctx, const stream::ReleaseVersion& target,
                       const stream::StreamDescriptor& d, UpdateResult* out);
  Status CheckSpace(Context& ctx, uint64_t object_size, uint64_t result_size);
  // Fetches |d|'s object and rebuilds |target| from it (a delta applies to |base_path|) into
  // "<dest>.ds-new", verified against the signed size and SHA-256; the caller commits it.
  Result<std::unique_ptr<StagedOutput>> Rebuild(Context& ctx, const stream::ReleaseVersion& target,
                                                const stream::StreamDescriptor& d,
                                                const std::string& base_path,
                                                const std::string& dest, mode_t mode,
                                                UpdateResult* out);
  Status Install(Context& ctx, const stream::ReleaseVersion& target,
                 std::unique_ptr<StagedOutput> writer);
  Status RunHealthCheck(const ManagedArtifact& art, const std::string& version);
  Status RestorePrevious(Context& ctx);
  Status RunHealthCheckOrRollBack(Context& ctx, const stream::ReleaseVersion& target,
                                  UpdateResult* out);

  AgentConfig config_;
  EventSink events_;
  int lock_fd_;
  std::unique_ptr<net::Client> client_;
  size_t proxy_ = 0;
  double start_ = NowSeconds();
};

Status Agent::Impl::Prepare(const std::string& name, Context* ctx) {
  DS_ASSIGN_OR_RETURN(ctx->art, Find(name));
  ctx->dir = config_.state_dir + "/" + name;
  DS_RETURN_IF_ERROR(MakeDir(ctx->dir, 0700));
  ctx->state_path = ctx->dir + "/state.json";
  ctx->state = LoadState(ctx->state_path);

  DS_ASSIGN_OR_RETURN(net::ClientResponse r,
                      GetWithRetry("/v1/artifacts/" + net::UrlEncode(name) + "/metadata", false));
  if (r.body.size() > kMaxMetadataBytes) return Error(ErrorCode::kTooLarge, "metadata too large");
  DS_ASSIGN_OR_RETURN(ctx->release, stream::VerifyRelease(r.body, config_.public_key_hex, WallNow(),
                                                          ctx->state.trusted_counter));
  if (ctx->release.artifact != name) {
    return Error(ErrorCode::kProtocol,
                 "signed metadata is for " + ctx->release.artifact + ", not " + name);
  }
  if (ctx->release.counter > ctx->state.trusted_counter) {
    ctx->state.trusted_counter = ctx->release.counter;
    DS_RETURN_IF_ERROR(SaveState(ctx->state_path, ctx->state));
  }
  Result<std::string> sha = HashFile(ctx->art->install_path);
  if (sha.ok()) {
    ctx->installed_sha256 = *sha;
    ctx->installed = ctx->release.FindVersionBySha256(*sha);
  } else if (sha.status().code() != ErrorCode::kNotFound) {
    return sha.status();
  }
  return Status::Ok();
}

Result<stream::StreamDescriptor> Agent::Impl::OpenStream(Context& ctx,
                                                         const stream::ReleaseVersion& target,
                                                         bool want_delta, std::string* note) {
  std::string path = "/v1/artifacts/" + net::UrlEncode(ctx.art->name) +
                     "/stream?to=" + net::UrlEncode(target.version);
  if (want_delta) path += "&from=" + ctx.installed_sha256 + "&chain=1";
  int64_t waited = 0;
  net::ClientResponse r;
  while (true) {
    DS_ASSIGN_OR_RETURN(r, GetWithRetry(path, want_delta));
    if (r.status != 202 && r.status != 503) break;
    // The proxy is making the delta: wait as told, within bounds; then take the full artifact.
    int64_t after = std::atoll(std::string(r.Header("retry-after")).c_str());
    after = std::clamp<int64_t>(after, 1, kMaxRetryAfterSeconds);
    if (waited + after > kMaxRetryAfterSeconds) {
      *note = "the proxy's delta was not ready after " + std::to_string(waited) + " s";
      path += "&fallback=full";
      want_delta = false;
      continue;
    }
    Say("wait", ctx.art->name,
        "proxy is preparing the delta; retry in " + std::to_string(after) + " s");
    std::this_thread::sleep_for(std::chrono::seconds(after));
    waited += after;
  }
  DS_ASSIGN_OR_RETURN(stream::StreamDescriptor d, stream::ParseDescriptor(r.body));
  // What the proxy says must agree with what the master signed.
  if (d.artifact != ctx.art->name || d.to != target.version || d.result_sha256 != target.sha256 ||
      d.result_size != target.length) {
    return Error(ErrorCode::kDigestMismatch,
                 "the stream descriptor does not match the signed version " + target.version);
  }
  if (d.is_chain()) {
    // ParseDescriptor checked that the steps follow each other up to the result; every version
    // on the way must be signed, with the size the step claims.
    if (d.base_sha256 != ctx.installed_sha256) {
      return Error(ErrorCode::kProtocol, "the proxy offered a chain from another base");
    }
    for (const stream::StreamDescriptor& step : d.steps) {
      const stream::ReleaseVersion* v = ctx.release.FindVersionBySha256(step.result_sha256);
      if (v == nullptr || v->length != step.result_size || v->version != step.to) {
        return Error(ErrorCode::kDigestMismatch,
                     "a chain step does not rebuild a signed version of " + ctx.art->name);
      }
    }
    *note = std::to_string(d.steps.size()) +
            " deltas in a chain; each result is verified "
            "against its signed hash";
  } else if (d.is_delta()) {
    if (d.base_sha256 != ctx.installed_sha256) {
      return Error(ErrorCode::kProtocol, "the proxy offered a delta from another base");
    }
    const stream::ReleaseDelta* signed_delta =
        ctx.release.FindDelta(ctx.installed_sha256, target.version);
    if (signed_delta != nullptr && signed_delta->sha256 == d.sha256 &&
        (signed_delta->chunk_map_sha256.empty() ||
         signed_delta->chunk_map_sha256 == d.chunk_map_sha256) &&
        signed_delta->length == d.size) {
      *note = "signed delta";
    } else {
      // Not signed by the master (a proxy's on-demand delta): acceptable because the rebuilt
      // result is checked against the signed target hash (docs/SECURITY.md).
      *note = "unsigned delta (" + (d.source.empty() ? std::string("proxy") : d.source) +
              "); the result is verified against the signed hash";
    }
  } else {
    if (d.sha256 != target.sha256 || d.size != target.length ||
        (!target.chunk_map_sha256.empty() && d.chunk_map_sha256 != target.chunk_map_sha256)) {
      return Error(ErrorCode::kDigestMismatch,
                   "the full-artifact stream does not match the signed version");
    }
  }
  return d;
}

Result<stream::ChunkMap> Agent::Impl::FetchChunkMap(const stream::StreamDescriptor& d) {
  DS_ASSIGN_OR_RETURN(net::ClientResponse r, GetWithRetry(d.chunk_map_url, false));
  DS_ASSIGN_OR_RETURN(stream::ChunkMap map, stream::ParseChunkMap(AsBytes(r.body)));
  if (ToHex(map.root()) != d.chunk_map_sha256 || map.total_size() != d.size) {
    return Error(ErrorCode::kDigestMismatch,
                 "chunk map " + d.chunk_map_sha256 + " does not match its name or the object size");
  }
  return map;
}

Status Agent::Impl::CheckSpace(Context& ctx, uint64_t object_size, uint64_t result_size) {
  // Disk space: the staged object beside the state, the new version beside the installed one
  // (and a copy of the old one if it cannot be hard-linked; counted on the state side).
  const std::string install_dir = DirOf(ctx.art->install_path);
  DS_ASSIGN_OR_RETURN(uint64_t free_state, FreeBytes(ctx.dir));
  DS_ASSIGN_OR_RETURN(uint64_t free_install, FreeBytes(install_dir));
  struct stat st_state, st_install;
  const bool same_fs = ::stat(ctx.dir.c_str(), &st_state) == 0 &&
                       ::stat(install_dir.c_str(), &st_install) == 0 &&
                       st_state.st_dev == st_install.st_dev;
  const uint64_t need_state = object_size + kDiskMargin;
  const uint64_t need_install = result_size + kDiskMargin;
  if (same_fs ? free_state < need_state + need_install
              : (free_state < need_state || free_install < need_install)) {
    return Error(ErrorCode::kNoSpace, "not enough free disk space for " +
                                          std::to_string(object_size) + " + " +
                                          std::to_string(result_size) + " bytes");
  }
  return Status::Ok();
}

Result<std::unique_ptr<StagedOutput>> Agent::Impl::Rebuild(
    Context& ctx, const stream::ReleaseVersion& target, const stream::StreamDescriptor& d,
    const std::string& base_path, const std::string& dest, mode_t mode, UpdateResult* out) {
  DS_ASSIGN_OR_RETURN(stream::ChunkMap map, FetchChunkMap(d));
  const std::string dl = ctx.dir + "/download";
  DS_RETURN_IF_ERROR(MakeDir(dl, 0700));
  // A staging file for another object is stale: start over.
  const std::string marker = dl + "/object.sha256";
  Result<Bytes> prev_marker = ReadFile(marker, 256);
  if (!prev_marker.ok() || std::string(prev_marker->begin(), prev_marker->end()) != d.sha256) {
    ::unlink((dest + ".ds-new").c_str());  // Output of the other object.
    DS_RETURN_IF_ERROR(RemoveTree(dl));
    DS_RETURN_IF_ERROR(MakeDir(dl, 0700));
    DS_RETURN_IF_ERROR(WriteFileAtomic(marker, AsBytes(d.sha256), 0600));
  }
  RemoveStaleTemps(dest);
  DS_ASSIGN_OR_RETURN(std::unique_ptr<StagedOutput> writer, StagedOutput::Open(dest, mode));
  InstallSink sink(writer.get());
  std::unique_ptr<RandomAccessFile> old_file;
  std::unique_ptr<delta::FileOldSource> old_source;
  std::unique_ptr<ObjectConsumer> consumer;
  if (d.is_delta()) {
    DS_ASSIGN_OR_RETURN(old_file, RandomAccessFile::Open(base_path));
    old_source = std::make_unique<delta::FileOldSource>(old_file.get());
    delta::ApplyLimits limits;
    if (config_.max_encoder_memory > 0) limits.max_encoder_memory = config_.max_encoder_memory;
    consumer = std::make_unique<PatchConsumer>(old_source.get(), &sink, dl + "/apply.json",
                                               d.sha256, limits);
  } else {
    consumer = std::make_unique<CopyConsumer>(&sink);
  }

  FetchSpec spec;
  spec.base_urls = config_.proxies;
  spec.chunks_path = d.chunks_url;
  spec.map = &map;
  spec.object_sha256 = d.sha256;
  spec.staging_path = dl + "/object";
  spec.progress_path = dl + "/progress.json";
  spec.artifact = ctx.art->name;
  spec.route = d.kind;
  // The metadata requests left client_ connected to the proxy: the UDP session request reuses it.
  spec.session_client = client_.get();
  FetchStats stats;
  Event plan;
  plan.type = "plan";
  plan.artifact = ctx.art->name;
  plan.message = d.kind + " " + (ctx.installed ? ctx.installed->version : std::string("-")) +
                 " -> " + target.version;
  plan.total = d.size;
  plan.elapsed = NowSeconds() - start_;
  Emit(plan);
  const Status fetched = FetchObject(config_, spec, consumer.get(), events_, start_, &stats);
  out->bytes_fetched += stats.bytes_fetched;
  out->object_size += d.size;
  out->resumed = out->resumed || stats.leaves_resumed > 0;
  old_source.reset();
  old_file.reset();
  if (!fetched.ok() || sink.size() != target.length || sink.Digest() != target.sha256) {
    // Whatever was built is not to be continued: the next attempt starts the output afresh
    // (the verified download is kept).
    ::unlink((dest + ".ds-new").c_str());
    ::unlink((dl + "/apply.json").c_str());
    DS_RETURN_IF_ERROR(fetched);
    return Error(ErrorCode::kDigestMismatch,
                 "the rebuilt " + target.version + " does not match its signed SHA-256");
  }
  Say("verified", ctx.art->name, target.version + " sha256 " + target.sha256);
  return writer;
}

Status Agent::Impl::Download(Context& ctx, const stream::ReleaseVersion& target,
                             const stream::StreamDescriptor& d, UpdateResult* out) {
  DS_RETURN_IF_ERROR(CheckSpace(ctx, d.size, target.length));
  mode_t mode = 0755;
  if (!ctx.installed_sha256.empty()) {
    DS_ASSIGN_OR_RETURN(mode, FileMode(ctx.art->install_path));
  }
  DS_ASSIGN_OR_RETURN(
      std::unique_ptr<StagedOutput> writer,
      Rebuild(ctx, target, d, ctx.art->install_path, ctx.art->install_path, mode, out));
  return Install(ctx, target, std::move(writer));
}

Status Agent::Impl::DownloadChain(Context& ctx, const stream::ReleaseVersion& target,
                                  const stream::StreamDescriptor& d, UpdateResult* out) {
  const std::string chain_dir = ctx.dir + "/chain";
  DS_RETURN_IF_ERROR(MakeDir(chain_dir, 0700));
  std::string base = ctx.art->install_path;
  for (size_t i = 0; i < d.steps.size(); ++i) {
    const stream::StreamDescriptor& step = d.steps[i];
    const stream::ReleaseVersion* v = ctx.release.FindVersionBySha256(step.result_sha256);
    if (v == nullptr) {
      return Error(ErrorCode::kProtocol, "a chain step rebuilds an unsigned version");
    }
    Say("step", ctx.art->name,
        "chain step " + std::to_string(i + 1) + "/" + std::to_string(d.steps.size()) + ": " +
            std::to_string(step.size) + " bytes to " + v->version);
    if (i + 1 == d.steps.size()) {
      DS_RETURN_IF_ERROR(CheckSpace(ctx, step.size, target.length));
      DS_ASSIGN_OR_RETURN(mode_t mode, FileMode(ctx.art->install_path));
      DS_ASSIGN_OR_RETURN(std::unique_ptr<StagedOutput> writer,
                          Rebuild(ctx, target, step, base, ctx.art->install_path, mode, out));
      DS_RETURN_IF_ERROR(Install(ctx, target, std::move(writer)));
      static_cast<void>(RemoveTree(chain_dir));  // Best effort.
      return Status::Ok();
    }
    const std::string intermediate = chain_dir + "/" + step.result_sha256;
    // Rebuilt (and verified) by an earlier run that did not finish the chain.
    if (Result<std::string> sha = HashFile(intermediate); sha.ok() && *sha == step.result_sha256) {
      base = intermediate;
      continue;
    }
    DS_RETURN_IF_ERROR(CheckSpace(ctx, step.size, v->length));
    DS_ASSIGN_OR_RETURN(std::unique_ptr<StagedOutput> writer,
                        Rebuild(ctx, *v, step, base, intermediate, 0600, out));
    DS_RETURN_IF_ERROR(writer->Commit());
    // The step before is no longer needed.
    if (base != ctx.art->install_path) ::unlink(base.c_str());
    base = intermediate;
  }
  return Error(ErrorCode::kProtocol, "an empty chain");
}

Status Agent::Impl::Install(Context& ctx, const stream::ReleaseVersion& target,
                            std::unique_ptr<StagedOutput> writer) {
  // Keep the old version for rollback before the swap.
  ArtifactState& st = ctx.state;
  if (!ctx.installed_sha256.empty()) {
    DS_RETURN_IF_ERROR(LinkOrCopy(ctx.art->install_path, ctx.dir + "/previous"));
    st.previous_sha256 = ctx.installed_sha256;
    st.previous_version = ctx.installed ? ctx.installed->version : std::string();
  }
  DS_RETURN_IF_ERROR(writer->Commit());  // The atomic swap: rename + directory fsync.
  st.installed_version = target.version;
  st.installed_sha256 = target.sha256;
  st.last_result = "installed " + target.version;
  DS_RETURN_IF_ERROR(SaveState(ctx.state_path, st));
  // Best effort: a leftover staging directory is replaced by the next download.
  static_cast<void>(RemoveTree(ctx.dir + "/download"));
  Say("installed", ctx.art->name, target.version + " at " + ctx.art->install_path);
  return Status::Ok();
}

Status Agent::Impl::RunHealthCheck(const ManagedArtifact& art, const std::string& version) {
  if (art.health_check.empty()) return Status::Ok();
  const pid_t pid = ::fork();
  if (pid < 0) return ErrnoStatus("fork", errno);
  if (pid == 0) {
    ::setenv("DS_ARTIFACT", art.name.c_str(), 1);
    ::setenv("DS_VERSION", version.c_str(), 1);
    ::setenv("DS_INSTALL_PATH", art.install_path.c_str(), 1);
    ::setpgid(0, 0);
    ::execl("/bin/sh", "sh", "-c", art.health_check.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  const double deadline = NowSeconds() + static_cast<double>(art.health_timeout_ms) / 1000.0;
  int status = 0;
  while (true) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) return ErrnoStatus("waitpid", errno);
    if (NowSeconds() > deadline) {
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return Error(ErrorCode::kHealthCheck,
                   "health check timed out after " + std::to_string(art.health_timeout_ms) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
  return Error(ErrorCode::kHealthCheck,
               "health check failed (" +
                   (WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                      : "signal " + std::to_string(WTERMSIG(status))) +
                   ")");
}

// Swaps the kept previous version back in, keeping the current one as the new "previous".
Status Agent::Impl::RestorePrevious(Context& ctx) {
  ArtifactState& st = ctx.state;
  const std::string prev = ctx.dir + "/previous";
  if (st.previous_sha256.empty() || !Exists(prev)) {
    return Error(ErrorCode::kNotFound, "no previous version of " + ctx.art->name + " is kept");
  }
  DS_ASSIGN_OR_RETURN(std::string prev_sha, HashFile(prev));
  if (prev_sha != st.previous_sha256) {
    return Error(ErrorCode::kDigestMismatch, "the kept previous version is damaged");
  }
  const std::string swap = ctx.dir + "/previous.swap";
  Result<std::string> cur_sha = HashFile(ctx.art->install_path);
  if (cur_sha.ok()) DS_RETURN_IF_ERROR(LinkOrCopy(ctx.art->install_path, swap));
  // previous -> installed path, atomically.
  const std::string staged = ctx.art->install_path + ".ds-rollback";
  ::unlink(staged.c_str());
  if (::link(prev.c_str(), staged.c_str()) != 0) {
    DS_ASSIGN_OR_RETURN(mode_t mode, FileMode(prev));
    DS_RETURN_IF_ERROR(CopyFileAtomic(prev, staged, mode));
  }
  if (::rename(staged.c_str(), ctx.art->install_path.c_str()) != 0) {
    const int err = errno;
    ::unlink(staged.c_str());
    return ErrnoStatus("rename over " + ctx.art->install_path, err);
  }
  DS_RETURN_IF_ERROR(FsyncDir(DirOf(ctx.art->install_path)));
  const std::string restored_version = st.previous_version;
  if (cur_sha.ok()) {
    if (::rename(swap.c_str(), prev.c_str()) != 0) return ErrnoStatus("rename " + swap, errno);
    st.previous_sha256 = *cur_sha;
    st.previous_version = st.installed_version;
  } else {
    ::unlink(prev.c_str());
    st.previous_sha256.clear();
    st.previous_version.clear();
  }
  st.installed_sha256 = prev_sha;
  st.installed_version = restored_version;
  st.last_result = "rolled back to " + restored_version;
  return SaveState(ctx.state_path, st);
}

Status Agent::Impl::RunHealthCheckOrRollBack(Context& ctx, const stream::ReleaseVersion& target,
                                             UpdateResult* out) {
  const Status health = RunHealthCheck(*ctx.art, target.version);
  if (health.ok()) return Status::Ok();
  Say("health_failed", ctx.art->name, health.ToString());
  const Status restored = RestorePrevious(ctx);
  if (!restored.ok()) {
    return health.WithContext("and the rollback failed: " + restored.ToString());
  }
  out->rolled_back = true;
  // Remember the bad version so that a plain `update` does not install it again.
  ctx.state.failed_sha256 = target.sha256;
  ctx.state.last_result =
      target.version + " failed its health check; rolled back to " + ctx.state.installed_version;
  DS_RETURN_IF_ERROR(SaveState(ctx.state_path, ctx.state));
  Say("rolled_back", ctx.art->name, ctx.state.last_result);
  return health.WithContext("rolled back to " + ctx.state.installed_version);
}

Result<CheckResult> Agent::Impl::Check(const std::string& name) {
  Context ctx;
  DS_RETURN_IF_ERROR(Prepare(name, &ctx));
  CheckResult c;
  c.artifact = name;
  c.installed_sha256 = ctx.installed_sha256;
  c.installed_version = ctx.installed ? ctx.installed->version : std::string();
  c.latest = ctx.release.latest;
  const stream::ReleaseVersion* latest = ctx.release.FindVersion(ctx.release.latest);
  if (latest == nullptr) {
    c.route = "none";
    return c;
  }
  c.full_bytes = latest->length;
  c.update_available = latest->sha256 != ctx.installed_sha256;
  if (!c.update_available) {
    c.route = "none";
    return c;
  }
  std::string note;
  Result<stream::StreamDescriptor> d =
      OpenStream(ctx, *latest, !ctx.installed_sha256.empty(), &note);
  if (!d.ok()) return d.status();
  c.route = d->kind;
  c.source = d->source;
  if (d->is_delta() || d->is_chain()) c.delta_bytes = d->size;
  return c;
}

Result<UpdateResult> Agent::Impl::Update(const std::string& name, std::optional<std::string> to) {
  start_ = NowSeconds();
  Context ctx;
  DS_RETURN_IF_ERROR(Prepare(name, &ctx));
  UpdateResult out;
  out.artifact = name;
  out.from_version = ctx.installed ? ctx.installed->version : std::string();
  const std::string want = to.value_or(ctx.release.latest);
  const stream::ReleaseVersion* target = ctx.release.FindVersion(want);
  if (target == nullptr) {
    return Error(ErrorCode::kNotFound, "version " + want + " of " + name + " is not signed");
  }
  out.to_version = target->version;
  if (target->sha256 == ctx.installed_sha256) {
    out.route = "none";
    if (ctx.state.installed_sha256 != target->sha256) {
      ctx.state.installed_sha256 = target->sha256;
      ctx.state.installed_version = target->version;
      DS_RETURN_IF_ERROR(SaveState(ctx.state_path, ctx.state));
    }
    static_cast<void>(RemoveTree(ctx.dir + "/download"));  // Best effort.
    ::unlink((ctx.art->install_path + ".ds-new").c_str());
    return out;
  }
  if (!to && target->sha256 == ctx.state.failed_sha256) {
    return Error(ErrorCode::kHealthCheck, target->version +
                                              " failed its health check here before; name it "
                                              "with --to to try again");
  }
  // A version only goes up: semver precedence when both are semver, publish order otherwise.
  if (ctx.installed != nullptr) {
    std::optional<int> cmp = stream::CompareSemver(target->version, ctx.installed->version);
    const bool newer = cmp ? *cmp > 0 : target->seq > ctx.installed->seq;
    if (!newer) {
      return Error(ErrorCode::kRollback, target->version + " is not newer than the installed " +
                                             ctx.installed->version + " (use rollback to go back)");
    }
  }

  Status delta_status = Error(ErrorCode::kNotFound, "nothing installed to apply a delta to");
  if (!ctx.installed_sha256.empty()) {
    std::string note;
    Result<stream::StreamDescriptor> d = OpenStream(ctx, *target, /*want_delta=*/true, &note);
    if (d.ok() && (d->is_delta() || d->is_chain())) {
      Say("route", name, d->kind + " of " + std::to_string(d->size) + " bytes (" + note + ")");
      out.route = d->kind;
      delta_status =
          d->is_chain() ? DownloadChain(ctx, *target, *d, &out) : Download(ctx, *target, *d, &out);
      if (delta_status.ok()) {
        DS_RETURN_IF_ERROR(RunHealthCheckOrRollBack(ctx, *target, &out));
        return out;
      }
      if (IsLocalFailure(delta_status)) return delta_status;
    } else if (d.ok()) {
      delta_status = Error(ErrorCode::kNotFound,
                           "the proxy offers no delta" + (note.empty() ? "" : ": " + note));
    } else {
      delta_status = d.status();
      if (IsLocalFailure(delta_status)) return delta_status;
    }
    out.fallback_reason = delta_status.ToString();
    switch (ctx.art->fallback) {
      case FallbackPolicy::kFail:
        return delta_status.WithContext("delta path failed (fallback policy: fail)");
      case FallbackPolicy::kDefer:
        Say("deferred", name, out.fallback_reason);
        return Error(ErrorCode::kDeferred,
                     "delta path failed, full download deferred: " + out.fallback_reason);
      case FallbackPolicy::kFull:
        Say("fallback", name, "full download: " + out.fallback_reason);
        break;
    }
  }
  std::string note;
  DS_ASSIGN_OR_RETURN(stream::StreamDescriptor full,
                      OpenStream(ctx, *target, /*want_delta=*/false, &note));
  out.route = "full";
  out.object_size = 0;  // The full artifact's size, not what the failed delta path added.
  DS_RETURN_IF_ERROR(Download(ctx, *target, full, &out));
  DS_RETURN_IF_ERROR(RunHealthCheckOrRollBack(ctx, *target, &out));
  return out;
}

Status Agent::Impl::Rollback(const std::string& name) {
  Context ctx;
  DS_ASSIGN_OR_RETURN(ctx.art, Find(name));
  ctx.dir = config_.state_dir + "/" + name;
  ctx.state_path = ctx.dir + "/state.json";
  ctx.state = LoadState(ctx.state_path);
  DS_RETURN_IF_ERROR(RestorePrevious(ctx));
  Say("rolled_back", name, ctx.state.last_result);
  return Status::Ok();
}

Result<ArtifactStatus> Agent::Impl::GetStatus(const std::string& name) {
  DS_ASSIGN_OR_RETURN(const ManagedArtifact* art, Find(name));
  const std::string dir = config_.state_dir + "/" + name;
  const ArtifactState st = LoadState(dir + "/state.json");
  ArtifactStatus s;
  s.artifact = name;
  s.install_path = art->install_path;
  Result<std::string> sha = HashFile(art->install_path);
  if (sha.ok()) s.installed_sha256 = *sha;
  // The state file names the version only while it describes what is really installed.
  if (sha.ok() && *sha == st.installed_sha256) s.installed_version = st.installed_version;
  s.previous_version = st.previous_version;
  s.trusted_counter = st.trusted_counter;
  s.last_result = st.last_result;
  Result<Bytes> progress = ReadFile(dir + "/download/progress.json", 16 << 20);
  if (progress.ok()) {
    try {
      const json doc = json::parse(progress->begin(), progress->end());
      const std::string bits = doc.value("verified", "");
      uint64_t set = 0;
      for (char c : bits) {
        const int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : 0;
        set += static_cast<uint64_t>(__builtin_popcount(static_cast<unsigned>(v)));
      }
      s.pending = doc.value("route", "") + " " + std::to_string(set) + "/" +
                  std::to_string(doc.value("leaves", uint64_t{0})) + " leaves";
    } catch (const json::exception&) {
    }
  }
  return s;
}

// ---- Agent ----

Result<std::unique_ptr<Agent>> Agent::Open(AgentConfig config, EventSink events) {
  if (config.state_dir.empty()) return Error(ErrorCode::kInvalidArgument, "no state directory");
  DS_RETURN_IF_ERROR(MakeDir(config.state_dir, 0700));
  const std::string lock_path = config.state_dir + "/lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus("open " + lock_path, errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return Error(ErrorCode::kBusy, "another agent is using " + config.state_dir);
  }
  return std::unique_ptr<Agent>(
      new Agent(std::make_unique<Impl>(std::move(config), std::move(events), fd)));
}

Agent::Agent(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Agent::~Agent() = default;

Result<CheckResult> Agent::Check(const std::string& artifact) { return impl_->Check(artifact); }
Result<UpdateResult> Agent::Update(const std::string& artifact, std::optional<std::string> to) {
  return impl_->Update(artifact, std::move(to));
}
Status Agent::Rollback(const std::string& artifact) { return impl_->Rollback(artifact); }
Result<ArtifactStatus> Agent::GetStatus(const std::string& artifact) {
  return impl_->GetStatus(artifact);
}

}  // namespace ds::agent
