// `deltastream-agent run`: enrolment, long-polled instructions, journalled events (run.h).
#include "agent/run.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>

#include "common/fs.h"
#include "net/http.h"

#ifndef DS_AGENT_VERSION
#define DS_AGENT_VERSION "0.0.0"
#endif

namespace ds::agent {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxJournalBytes = 512ull << 20;
constexpr uint64_t kMaxDeviceStateBytes = 64 << 10;
constexpr size_t kEventsPerPost = 200;

double WallSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
double MonoSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "device";
  return buf;
}

std::string Machine() {
  struct utsname u;
  if (::uname(&u) != 0) return "";
  return u.machine;
}

// Exponential backoff with jitter: initial * 2^n, capped, times a factor in [0.5, 1].
class Backoff {
 public:
  Backoff(int64_t initial_ms, int64_t max_ms)
      : initial_(initial_ms), max_(max_ms), rng_(std::random_device{}()) {}
  int64_t NextMs() {
    const double base = std::min<double>(static_cast<double>(max_),
                                         static_cast<double>(initial_) * std::pow(2.0, failures_));
    if (failures_ < 40) ++failures_;
    return static_cast<int64_t>(base * std::uniform_real_distribution<double>(0.5, 1.0)(rng_));
  }
  void Reset() { failures_ = 0; }

 private:
  int64_t initial_, max_;
  int failures_ = 0;
  std::mt19937_64 rng_;
};

Status WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write events journal", errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

}  // namespace

// ---- DeployEvent ----

std::string DeployEvent::ToJson() const {
  json j = {{"seq", seq},
            {"deployment_id", deployment_id},
            {"artifact", artifact},
            {"state", state},
            {"bytes", bytes},
            {"total_bytes", total_bytes},
            {"rate_bps", rate_bps},
            {"chunk_size", chunk_size},
            {"carrier", carrier},
            {"repair_overhead", repair_overhead},
            {"error_code", error_code},
            {"result", result},
            {"full_bytes", full_bytes},
            {"bytes_saved", bytes_saved},
            {"from_version", from_version},
            {"to_version", to_version},
            {"time", time}};
  if (!message.empty()) j["message"] = message;
  return j.dump();
}

Result<DeployEvent> DeployEvent::Parse(std::string_view text) {
  try {
    const json j = json::parse(text);
    if (!j.is_object() || !j.contains("seq") || !j["seq"].is_number_unsigned() ||
        !j.contains("deployment_id") || !j.contains("state")) {
      return Error(ErrorCode::kProtocol, "not an event: lacks seq, deployment_id or state");
    }
    DeployEvent e;
    e.seq = j["seq"].get<uint64_t>();
    e.deployment_id = j["deployment_id"].get<std::string>();
    e.state = j["state"].get<std::string>();
    e.artifact = j.value("artifact", "");
    e.bytes = j.value("bytes", uint64_t{0});
    e.total_bytes = j.value("total_bytes", uint64_t{0});
    e.rate_bps = j.value("rate_bps", 0.0);
    e.chunk_size = j.value("chunk_size", uint64_t{0});
    e.carrier = j.value("carrier", "");
    e.repair_overhead = j.value("repair_overhead", 0.0);
    e.error_code = j.value("error_code", 0);
    e.result = j.value("result", "");
    e.full_bytes = j.value("full_bytes", uint64_t{0});
    e.bytes_saved = j.value("bytes_saved", uint64_t{0});
    e.from_version = j.value("from_version", "");
    e.to_version = j.value("to_version", "");
    e.message = j.value("message", "");
    e.time = j.value("time", 0.0);
    return e;
  } catch (const json::exception& e) {
    return Error(ErrorCode::kProtocol, std::string("malformed event: ") + e.what());
  }
}

// ---- EventJournal ----

EventJournal::EventJournal(std::string path, int fd, size_t max_pending)
    : path_(std::move(path)), fd_(fd), max_pending_(std::max<size_t>(max_pending, 1)) {}

EventJournal::~EventJournal() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<EventJournal>> EventJournal::Open(const std::string& path,
                                                         size_t max_pending) {
  std::unique_ptr<EventJournal> j(new EventJournal(path, -1, max_pending));
  Result<Bytes> data = ReadFile(path, kMaxJournalBytes);
  if (!data.ok() && data.status().code() != ErrorCode::kNotFound) return data.status();
  uint64_t max_seq = 0;
  if (data.ok()) {
    std::string_view text(reinterpret_cast<const char*>(data->data()), data->size());
    while (!text.empty()) {
      const size_t nl = text.find('\n');
      // A line without its newline is a torn append: it was never acknowledged as written.
      if (nl == std::string_view::npos) break;
      const std::string_view line = text.substr(0, nl);
      text.remove_prefix(nl + 1);
      if (line.empty()) continue;
      json obj;
      try {
        obj = json::parse(line);
      } catch (const json::exception&) {
        continue;  // Unreadable: nothing better to do than to skip it.
      }
      if (obj.is_object() && obj.contains("journal")) {
        j->acked_seq_ = std::max(j->acked_seq_, obj.value("acked_seq", uint64_t{0}));
        j->next_seq_ = std::max(j->next_seq_, obj.value("next_seq", uint64_t{1}));
        continue;
      }
      Result<DeployEvent> e = DeployEvent::Parse(line);
      if (!e.ok()) continue;
      max_seq = std::max(max_seq, e->seq);
      const bool state_change = !obj.value("progress", false);
      j->pending_.push_back(Entry{std::move(*e), state_change});
    }
  }
  std::stable_sort(j->pending_.begin(), j->pending_.end(),
                   [](const Entry& a, const Entry& b) { return a.event.seq < b.event.seq; });
  while (!j->pending_.empty() && j->pending_.front().event.seq <= j->acked_seq_) {
    j->pending_.pop_front();
  }
  j->next_seq_ = std::max({j->next_seq_, max_seq + 1, j->acked_seq_ + 1});
  std::lock_guard<std::mutex> lock(j->mu_);
  DS_RETURN_IF_ERROR(j->RewriteLocked());  // Drops a torn line and acknowledged events.
  return j;
}

std::string EventJournal::HeaderLocked() const {
  return json{{"journal", 1}, {"acked_seq", acked_seq_}, {"next_seq", next_seq_}}.dump() + "\n";
}

Status EventJournal::RewriteLocked() {
  std::string text = HeaderLocked();
  for (const Entry& e : pending_) {
    std::string line = e.event.ToJson();
    if (!e.state_change) line.insert(line.size() - 1, ",\"progress\":true");
    text += line;
    text += '\n';
  }
  DS_RETURN_IF_ERROR(WriteFileAtomic(path_, AsBytes(text), 0600));
  if (fd_ >= 0) ::close(fd_);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd_ < 0) return ErrnoStatus("open " + path_, errno);
  return Status::Ok();
}

Result<uint64_t> EventJournal::Append(DeployEvent event, bool state_change) {
  std::lock_guard<std::mutex> lock(mu_);
  event.seq = next_seq_++;
  const uint64_t seq = event.seq;
  bool rewrite = false;
  if (pending_.size() >= max_pending_) {
    // Offline for long: thin out plain progress reports, oldest first; state changes stay.
    auto it = std::find_if(pending_.begin(), pending_.end(),
                           [](const Entry& e) { return !e.state_change; });
    if (it != pending_.end()) {
      pending_.erase(it);
      rewrite = true;
    }
  }
  std::string line = event.ToJson();
  if (!state_change) line.insert(line.size() - 1, ",\"progress\":true");
  pending_.push_back(Entry{std::move(event), state_change});
  cv_.notify_all();
  if (rewrite) {
    DS_RETURN_IF_ERROR(RewriteLocked());
    return seq;
  }
  line += '\n';
  DS_RETURN_IF_ERROR(WriteAll(fd_, line));
  if (::fdatasync(fd_) != 0) return ErrnoStatus("fdatasync " + path_, errno);
  return seq;
}

std::vector<DeployEvent> EventJournal::Pending(size_t max) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<DeployEvent> out;
  for (const Entry& e : pending_) {
    if (out.size() >= max) break;
    out.push_back(e.event);
  }
  return out;
}

Status EventJournal::Ack(uint64_t acked_seq) {
  std::lock_guard<std::mutex> lock(mu_);
  acked_seq = std::min(acked_seq, next_seq_ - 1);
  if (acked_seq <= acked_seq_) return Status::Ok();
  acked_seq_ = acked_seq;
  while (!pending_.empty() && pending_.front().event.seq <= acked_seq_) pending_.pop_front();
  cv_.notify_all();
  return RewriteLocked();
}

bool EventJournal::HasPendingFinal(const std::string& deployment_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const Entry& e : pending_) {
    if (e.event.deployment_id == deployment_id && e.event.is_final()) return true;
  }
  return false;
}

size_t EventJournal::pending_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size();
}
uint64_t EventJournal::acked_seq() const {
  std::lock_guard<std::mutex> lock(mu_);
  return acked_seq_;
}
uint64_t EventJournal::next_seq() const {
  std::lock_guard<std::mutex> lock(mu_);
  return next_seq_;
}

bool EventJournal::WaitEmpty(int64_t timeout_ms) const {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t wake = wake_;
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
               [&] { return pending_.empty() || wake_ != wake; });
  return pending_.empty();
}

void EventJournal::WaitPending(int64_t timeout_ms) const {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t wake = wake_;
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
               [&] { return !pending_.empty() || wake_ != wake; });
}

void EventJournal::Wake() {
  std::lock_guard<std::mutex> lock(mu_);
  ++wake_;
  cv_.notify_all();
}

void EventJournal::Freeze() { mu_.lock(); }  // Never unlocked: the process is about to exit.

// ---- DeployRunner ----

namespace {

struct Instruction {
  std::string deployment_id, artifact, version;
  bool prefer_delta = true;
  std::string carrier = "http";
  std::string fallback;  // Empty: the artifact's configured policy.
};

bool Permanent(const Status& s) {
  return s.code() == ErrorCode::kUnauthenticated || s.code() == ErrorCode::kPermissionDenied ||
         s.code() == ErrorCode::kInvalidArgument || s.code() == ErrorCode::kNotFound;
}

}  // namespace

class DeployRunner::Impl {
 public:
  Impl(AgentConfig config, RunOptions options, int lock_fd, std::unique_ptr<EventJournal> journal)
      : config_(std::move(config)),
        opt_(std::move(options)),
        lock_fd_(lock_fd),
        journal_(std::move(journal)) {
    net::ClientOptions o;
    o.ca_file = config_.ca_file;
    o.connect_timeout_ms = config_.connect_timeout_ms;
    // A long poll sends nothing for up to poll_wait_seconds.
    o.low_speed_timeout_ms = (config_.deploy.poll_wait_seconds + 30) * 1000;
    o.max_body_bytes = 4 << 20;
    client_ = std::make_unique<net::Client>(o);
    sender_client_ = std::make_unique<net::Client>(o);
    device_id_ = config_.deploy.device_id.empty() ? HostName() : config_.deploy.device_id;
  }
  ~Impl() {
    Stop();
    if (sender_.joinable()) sender_.join();
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  Status Run();
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    journal_->Wake();
  }
  void Freeze() { journal_->Freeze(); }
  bool updating() const { return updating_; }

 private:
  class Reporter;

  bool stopped() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stop_;
  }
  // Sleeps |ms| unless stopped first; false when stopped.
  bool SleepFor(int64_t ms) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stop_; });
    return !stop_;
  }
  void Log(const json& j) {
    if (!opt_.log) return;
    std::lock_guard<std::mutex> lock(log_mu_);
    opt_.log(j.dump());
  }
  void Note(const std::string& what, const Status& s = Status::Ok(), json extra = json::object()) {
    extra["note"] = what;
    extra["time"] = WallSeconds();
    if (!s.ok()) {
      extra["code"] = static_cast<int>(s.code());
      extra["error"] = s.ToString();
    }
    Log(extra);
  }
  std::string Token() const {
    std::lock_guard<std::mutex> lock(mu_);
    return token_;
  }

  // A call to the service; transport failures are kUnavailable, an error answer its Status.
  Result<net::ClientResponse> Call(net::Client& client, const std::string& method,
                                   const std::string& path, const std::string& body,
                                   const std::string& token) {
    std::vector<std::pair<std::string, std::string>> headers;
    if (!token.empty()) headers.emplace_back("Authorization", "Bearer " + token);
    if (method != "GET") headers.emplace_back("Content-Type", "application/json");
    const std::string url = config_.deploy.url + path;
    Result<net::ClientResponse> r =
        method == "GET" ? client.Get(url, headers) : client.Send(method, url, body, headers);
    if (!r.ok()) return r.status().WithContext(method + " " + path);
    if (r->status < 200 || r->status >= 300) {
      Status s = net::StatusFromResponse(*r);
      if (s.ok()) s = Error(ErrorCode::kProtocol, "HTTP " + std::to_string(r->status));
      if (r->status == 401) {
        std::lock_guard<std::mutex> lock(mu_);
        need_enrol_ = true;
      }
      return s.WithContext(method + " " + path);
    }
    return r;
  }
  std::string DevicePath(const std::string& what) const {
    return "/v1/devices/" + net::UrlEncode(device_id_) + "/" + what;
  }

  Status LoadDeviceState();
  Status Enrol();
  json Inventory();
  Status Heartbeat();
  Result<std::vector<Instruction>> Poll(int wait_seconds);
  Status Execute(const Instruction& in);
  void Emit(DeployEvent e, bool state_change);
  void SendLoop();

  AgentConfig config_;
  RunOptions opt_;
  int lock_fd_;
  std::unique_ptr<EventJournal> journal_;
  std::unique_ptr<net::Client> client_, sender_client_;
  std::string device_id_;
  json last_inventory_ = json::array();
  // Artifact name -> (identity of its files, inventory entry).
  std::map<std::string, std::pair<std::string, json>> inventory_cache_;

  mutable std::mutex mu_;  // Guards what follows.
  std::condition_variable cv_;
  bool stop_ = false;
  std::string token_;
  bool need_enrol_ = false;

  std::mutex log_mu_;
  std::thread sender_;
  std::atomic<bool> updating_{false};
};

Status DeployRunner::Impl::LoadDeviceState() {
  Result<Bytes> b = ReadFile(config_.state_dir + "/deploy.json", kMaxDeviceStateBytes);
  if (!b.ok()) return b.status().code() == ErrorCode::kNotFound ? Status::Ok() : b.status();
  try {
    const json j = json::parse(b->begin(), b->end());
    // A token for another service or another identity is of no use: enrol again.
    if (j.value("url", "") == config_.deploy.url && j.value("device_id", "") == device_id_) {
      std::lock_guard<std::mutex> lock(mu_);
      token_ = j.value("device_token", "");
    }
  } catch (const json::exception&) {
    Note("deploy.json is unreadable; enrolling again");
  }
  return Status::Ok();
}

Status DeployRunner::Impl::Enrol() {
  if (config_.deploy.enrollment_token.empty()) {
    return Error(ErrorCode::kUnauthenticated,
                 "no device token and no enrollment token (deploy.enrollment_token, "
                 "--enroll-token)");
  }
  const json body = {{"enrollment_token", config_.deploy.enrollment_token},
                     {"device_id", device_id_},
                     {"labels", config_.deploy.labels},
                     {"hardware", Machine()},
                     {"agent_version", DS_AGENT_VERSION},
                     {"inventory", Inventory()}};
  DS_ASSIGN_OR_RETURN(net::ClientResponse r,
                      Call(*client_, "POST", "/v1/devices/enroll", body.dump(), ""));
  std::string token;
  try {
    const json j = json::parse(r.body);
    token = j.at("device_token").get<std::string>();
    if (j.contains("device_id") && j["device_id"].get<std::string>() != device_id_) {
      return Error(ErrorCode::kProtocol, "the service enrolled another device id");
    }
  } catch (const json::exception& e) {
    return Error(ErrorCode::kProtocol, std::string("malformed enrolment answer: ") + e.what());
  }
  if (token.empty()) return Error(ErrorCode::kProtocol, "empty device token");
  const json state = {{"url", config_.deploy.url},
                      {"device_id", device_id_},
                      {"device_token", token},
                      {"enrolled", WallSeconds()}};
  DS_RETURN_IF_ERROR(
      WriteFileAtomic(config_.state_dir + "/deploy.json", AsBytes(state.dump(2)), 0600));
  {
    std::lock_guard<std::mutex> lock(mu_);
    token_ = token;
    need_enrol_ = false;
  }
  journal_->Wake();
  Note("enrolled", Status::Ok(), {{"device_id", device_id_}});
  return Status::Ok();
}

json DeployRunner::Impl::Inventory() {
  // Hashing a large installed file every heartbeat would be wasteful: an entry is reused while
  // the file (inode, size, mtime) and the state file are unchanged.
  auto identity = [](const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return std::string("-");
    return std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
           std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
  };
  std::unique_ptr<Agent> agent;
  json inv = json::array();
  for (const ManagedArtifact& a : config_.artifacts) {
    const std::string key =
        identity(a.install_path) + "|" + identity(config_.state_dir + "/" + a.name + "/state.json");
    auto cached = inventory_cache_.find(a.name);
    if (cached != inventory_cache_.end() && cached->second.first == key) {
      inv.push_back(cached->second.second);
      continue;
    }
    if (!agent) {
      Result<std::unique_ptr<Agent>> opened = Agent::Open(config_);
      if (!opened.ok()) return last_inventory_;  // Busy (a manual update runs): the last one.
      agent = std::move(*opened);
    }
    Result<ArtifactStatus> s = agent->GetStatus(a.name);
    if (!s.ok()) continue;
    json entry = {
        {"artifact", a.name}, {"version", s->installed_version}, {"sha256", s->installed_sha256}};
    inventory_cache_[a.name] = {key, entry};
    inv.push_back(std::move(entry));
  }
  last_inventory_ = inv;
  return inv;
}

Status DeployRunner::Impl::Heartbeat() {
  const json body = {{"inventory", Inventory()}, {"agent_version", DS_AGENT_VERSION}};
  return Call(*client_, "POST", DevicePath("heartbeat"), body.dump(), Token()).status();
}

Result<std::vector<Instruction>> DeployRunner::Impl::Poll(int wait_seconds) {
  DS_ASSIGN_OR_RETURN(
      net::ClientResponse r,
      Call(*client_, "GET", DevicePath("instructions") + "?wait=" + std::to_string(wait_seconds),
           "", Token()));
  std::vector<Instruction> out;
  try {
    const json j = json::parse(r.body);
    for (const json& i : j.at("instructions")) {
      Instruction in;
      in.deployment_id = i.at("deployment_id").get<std::string>();
      in.artifact = i.at("artifact").get<std::string>();
      in.version = i.at("version").get<std::string>();
      if (i.contains("policy") && i["policy"].is_object()) {
        const json& p = i["policy"];
        in.prefer_delta = p.value("prefer_delta", true);
        in.carrier = p.value("carrier", "http");
        in.fallback = p.value("fallback", "");
      }
      out.push_back(std::move(in));
    }
  } catch (const json::exception& e) {
    return Error(ErrorCode::kProtocol, std::string("malformed instructions: ") + e.what());
  }
  return out;
}

void DeployRunner::Impl::Emit(DeployEvent e, bool state_change) {
  e.time = WallSeconds();
  Result<uint64_t> seq = journal_->Append(e, state_change);
  if (!seq.ok()) {
    Note("journal", seq.status());
    return;
  }
  e.seq = *seq;
  json j = json::parse(e.ToJson());
  j["event"] = "deploy_event";
  Log(j);
}

// Turns the Agent's events during one update into the wire spec's events: every state change,
// progress at most every progress_interval_seconds.
class DeployRunner::Impl::Reporter {
 public:
  Reporter(Impl* run, const Instruction& in, std::string from_version, std::string note,
           std::string carrier)
      : run_(run),
        in_(in),
        from_(std::move(from_version)),
        note_(std::move(note)),
        carrier_(std::move(carrier)) {}

  void Start() {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = "started";
    SendLocked(true, note_);
  }

  void OnEvent(const Event& e) {
    std::lock_guard<std::mutex> lock(mu_);
    const double now = MonoSeconds();
    if (e.type == "plan") {
      route_ = e.message.substr(0, e.message.find(' '));
      earlier_ += done_;
      done_ = 0;
      total_ = e.total;
      state_ = "downloading";
      SendLocked(true, e.message);
    } else if (e.type == "progress") {
      done_ = e.done;
      total_ = e.total;
      rate_ = e.rate;
      chunk_ = e.chunk_size;
      if (!e.carrier.empty()) carrier_ = e.carrier;
      repair_ = e.repair_overhead;
      if (state_ == "downloading" && total_ > 0 && done_ >= total_) {
        state_ = "applying";  // Everything is here; the applier may still be working.
        SendLocked(true, "");
      } else if (now - last_progress_ >= run_->config_.deploy.progress_interval_seconds) {
        SendLocked(false, "");
      }
    } else if (e.type == "fallback") {
      route_ = "full";
      state_ = "downloading";
      SendLocked(true, e.message);
    } else if (e.type == "verified") {
      state_ = "installing";
      SendLocked(true, e.message);
    } else if (e.type == "health_failed" || e.type == "rolled_back") {
      detail_ = e.message;
    }
  }

  void Finish(const Result<UpdateResult>& r, const ManagedArtifact* art) {
    std::lock_guard<std::mutex> lock(mu_);
    DeployEvent ev = BaseLocked();
    ev.to_version = in_.version;
    if (r.ok()) {
      ev.state = "installed";
      // "none": the device already had the version (e.g. it was installed before a restart).
      // A chain of deltas is still a delta update on the wire.
      ev.result = r->route == "chain" ? "delta" : r->route;
      ev.bytes = r->bytes_fetched;
      Result<uint64_t> full = FileSize(art->install_path);
      ev.full_bytes = full.ok() ? *full : 0;
      ev.total_bytes = r->object_size;
      ev.from_version = r->from_version.empty() ? from_ : r->from_version;
      ev.message = r->fallback_reason.empty() ? "" : "fell back: " + r->fallback_reason;
    } else {
      const Status& s = r.status();
      const bool deferred = s.code() == ErrorCode::kDeferred;
      ev.state = deferred ? "deferred" : "failed";
      ev.result = deferred ? "deferred" : "failed";
      ev.error_code = static_cast<int>(s.code());
      ev.bytes = earlier_ + done_;
      ev.message = s.ToString();
      if (!detail_.empty() && ev.message.find(detail_) == std::string::npos) {
        ev.message += "; " + detail_;
      }
    }
    ev.bytes_saved = ev.full_bytes > ev.bytes && ev.result != "none" ? ev.full_bytes - ev.bytes : 0;
    state_ = ev.state;
    run_->Emit(std::move(ev), true);
  }

 private:
  DeployEvent BaseLocked() const {
    DeployEvent ev;
    ev.deployment_id = in_.deployment_id;
    ev.artifact = in_.artifact;
    ev.state = state_;
    ev.bytes = earlier_ + done_;
    ev.total_bytes = total_;
    ev.rate_bps = rate_;
    ev.chunk_size = chunk_;
    ev.carrier = carrier_;
    ev.repair_overhead = repair_;
    ev.from_version = from_;
    ev.to_version = in_.version;
    ev.result = "";
    return ev;
  }
  void SendLocked(bool state_change, const std::string& message) {
    DeployEvent ev = BaseLocked();
    ev.message = message;
    last_progress_ = MonoSeconds();
    run_->Emit(std::move(ev), state_change);
  }

  Impl* run_;
  const Instruction& in_;
  std::string from_, note_, carrier_;
  double repair_ = 0;
  std::mutex mu_;  // The Agent reports from its fetch threads too.
  std::string state_, route_, detail_;
  uint64_t earlier_ = 0;  // Bytes of objects fetched before the current one (a fallback).
  uint64_t done_ = 0, total_ = 0, chunk_ = 0;
  double rate_ = 0;
  double last_progress_ = 0;
};

Status DeployRunner::Impl::Execute(const Instruction& in) {
  AgentConfig cfg = config_;
  std::string note;
  for (ManagedArtifact& a : cfg.artifacts) {
    if (a.name != in.artifact || in.fallback.empty()) continue;
    Result<FallbackPolicy> p = ParseFallbackPolicy(in.fallback);
    if (p.ok()) {
      a.fallback = *p;
    } else {
      note = "unknown fallback policy \"" + in.fallback + "\"; using the configured one";
    }
  }
  if (in.carrier == "http" || in.carrier == "udp") {
    cfg.carrier = in.carrier;
  } else {
    note += (note.empty() ? "" : "; ") + std::string("carrier \"") + in.carrier +
            "\" is not known to this agent; using " + cfg.carrier;
  }
  if (!in.prefer_delta) {
    note += (note.empty() ? "" : "; ") +
            std::string("prefer_delta=false is not supported: a delta is tried first");
  }
  const ManagedArtifact* art = cfg.Find(in.artifact);
  if (art == nullptr) {
    Reporter rep(this, in, "", note, cfg.carrier);
    rep.Start();
    Status s = Error(ErrorCode::kNotFound, "artifact " + in.artifact + " is not managed here");
    rep.Finish(s, nullptr);
    return s;
  }
  // Reporter is referenced by the sink; it outlives the Agent.
  std::unique_ptr<Reporter> rep;
  Result<std::unique_ptr<Agent>> agent = Agent::Open(cfg, [&rep](const Event& e) {
    if (rep) rep->OnEvent(e);
  });
  if (!agent.ok()) return agent.status();  // Busy: the caller retries the instruction later.
  std::string from;
  if (Result<ArtifactStatus> st = (*agent)->GetStatus(in.artifact); st.ok()) {
    from = st->installed_version;
  }
  rep = std::make_unique<Reporter>(this, in, from, note, cfg.carrier);
  rep->Start();
  Note("update", Status::Ok(),
       {{"deployment_id", in.deployment_id}, {"artifact", in.artifact}, {"to", in.version}});
  updating_ = true;
  Result<UpdateResult> r = (*agent)->Update(in.artifact, in.version);
  updating_ = false;
  agent->reset();  // Stop reporting before the final event.
  rep->Finish(r, art);
  return r.status();
}

void DeployRunner::Impl::SendLoop() {
  Backoff backoff(config_.deploy.backoff_initial_ms, config_.deploy.backoff_max_ms);
  while (!stopped()) {
    if (journal_->pending_count() == 0) {
      journal_->WaitPending(1000);
      continue;
    }
    const std::string token = Token();
    if (token.empty()) {
      journal_->WaitPending(200);  // Wakes on enrolment.
      if (Token().empty()) SleepFor(200);
      continue;
    }
    const std::vector<DeployEvent> batch = journal_->Pending(kEventsPerPost);
    std::string body = "{\"events\":[";
    for (size_t i = 0; i < batch.size(); ++i) {
      if (i) body += ',';
      body += batch[i].ToJson();
    }
    body += "]}";
    Result<net::ClientResponse> r =
        Call(*sender_client_, "POST", DevicePath("events"), body, token);
    uint64_t acked = 0;
    Status s = r.status();
    if (r.ok()) {
      try {
        acked = json::parse(r->body).at("acked_seq").get<uint64_t>();
      } catch (const json::exception& e) {
        s = Error(ErrorCode::kProtocol, std::string("malformed events answer: ") + e.what());
      }
    }
    if (s.ok() && acked >= batch.front().seq) {
      if (Status a = journal_->Ack(acked); !a.ok()) Note("journal", a);
      Note("delivered", Status::Ok(), {{"from_seq", batch.front().seq}, {"acked_seq", acked}});
      backoff.Reset();
      continue;
    }
    if (s.ok()) s = Error(ErrorCode::kProtocol, "the service acknowledged none of the events");
    Note("events_not_delivered", s, {{"pending", journal_->pending_count()}});
    SleepFor(backoff.NextMs());
  }
}

Status DeployRunner::Impl::Run() {
  DS_RETURN_IF_ERROR(LoadDeviceState());
  sender_ = std::thread([this] { SendLoop(); });
  Backoff backoff(config_.deploy.backoff_initial_ms, config_.deploy.backoff_max_ms);
  const double once_limit = static_cast<double>(opt_.once_timeout_ms) / 1000.0;
  double last_contact = MonoSeconds();
  double heartbeat_due = 0;
  Status result, last_error;
  // Deployments whose final event the service may not have seen when it answered a poll.
  std::map<std::string, uint64_t> finals;
  for (const DeployEvent& e : journal_->Pending(SIZE_MAX)) {
    if (e.is_final()) finals[e.deployment_id] = e.seq;
  }
  // After a failure: false when Run() must return.
  auto wait_after = [&](const Status& s) {
    last_error = s;
    Note("retry", s);
    if (opt_.once && MonoSeconds() - last_contact > once_limit) return false;
    return SleepFor(backoff.NextMs());
  };

  bool done = false;
  while (!done && !stopped()) {
    bool enrol;
    {
      std::lock_guard<std::mutex> lock(mu_);
      enrol = token_.empty() || need_enrol_;
    }
    if (enrol) {
      Status s = Enrol();
      if (!s.ok()) {
        // A refused enrolment token will not start working by asking again.
        if (Permanent(s)) {
          result = s;
          break;
        }
        if (!wait_after(s)) break;
        continue;
      }
      heartbeat_due = 0;
    }
    if (MonoSeconds() >= heartbeat_due) {
      Status s = Heartbeat();
      if (!s.ok()) {
        if (!wait_after(s)) break;
        continue;
      }
      heartbeat_due =
          MonoSeconds() + static_cast<double>(config_.deploy.heartbeat_interval_ms) / 1000.0;
    }
    const uint64_t acked_before = journal_->acked_seq();
    Result<std::vector<Instruction>> polled =
        Poll(opt_.once ? 0 : config_.deploy.poll_wait_seconds);
    if (!polled.ok()) {
      if (!wait_after(polled.status())) break;
      continue;
    }
    backoff.Reset();
    last_contact = MonoSeconds();
    std::vector<Instruction> todo;
    bool waiting = false;
    for (Instruction& in : *polled) {
      auto f = finals.find(in.deployment_id);
      if (f != finals.end() && f->second > acked_before) {
        waiting = true;  // Our final event was not acknowledged yet when the service answered.
      } else {
        todo.push_back(std::move(in));
      }
    }
    if (todo.empty()) {
      if (waiting || (opt_.once && polled->empty())) {
        // Let the events go out before asking again (or before leaving).
        journal_->WaitEmpty(opt_.once ? 1000 : 5000);
        if (opt_.once && polled->empty()) {
          while (journal_->pending_count() > 0 && !stopped() &&
                 MonoSeconds() - last_contact <= once_limit) {
            journal_->WaitEmpty(1000);
          }
          if (journal_->pending_count() > 0) {
            result = Error(ErrorCode::kUnavailable,
                           std::to_string(journal_->pending_count()) +
                               " events were not acknowledged by the deployment service");
          }
          done = true;
        }
      }
      continue;
    }
    for (const Instruction& in : todo) {
      if (stopped()) break;
      Status s = Execute(in);
      if (s.code() == ErrorCode::kBusy) {
        Note("busy", s);
        SleepFor(backoff.NextMs());
        break;
      }
      const std::vector<DeployEvent> pending = journal_->Pending(SIZE_MAX);
      for (auto it = pending.rbegin(); it != pending.rend(); ++it) {
        if (it->deployment_id == in.deployment_id && it->is_final()) {
          finals[in.deployment_id] = it->seq;
          break;
        }
      }
      if (!s.ok() && opt_.once && result.ok()) result = s;
      heartbeat_due = 0;  // The inventory changed.
    }
  }
  if (!done && opt_.once && result.ok() && !stopped() && !last_error.ok()) result = last_error;
  Stop();
  if (sender_.joinable()) sender_.join();
  return result;
}

Result<std::unique_ptr<DeployRunner>> DeployRunner::Create(AgentConfig config, RunOptions options) {
  if (config.deploy.url.empty()) {
    return Error(ErrorCode::kInvalidArgument,
                 "no deployment service: set deploy.url in the configuration or --deploy-url");
  }
  DS_RETURN_IF_ERROR(ValidateDeployConfig(config.deploy));
  if (config.state_dir.empty()) return Error(ErrorCode::kInvalidArgument, "no state directory");
  if (::mkdir(config.state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus("mkdir " + config.state_dir, errno);
  }
  const std::string lock_path = config.state_dir + "/deploy.lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus("open " + lock_path, errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return Error(ErrorCode::kBusy, "another `run` is using " + config.state_dir);
  }
  Result<std::unique_ptr<EventJournal>> journal =
      EventJournal::Open(config.state_dir + "/events.jsonl");
  if (!journal.ok()) {
    ::close(fd);
    return journal.status();
  }
  return std::unique_ptr<DeployRunner>(new DeployRunner(
      std::make_unique<Impl>(std::move(config), std::move(options), fd, std::move(*journal))));
}

DeployRunner::DeployRunner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeployRunner::~DeployRunner() = default;
Status DeployRunner::Run() { return impl_->Run(); }
void DeployRunner::Stop() { impl_->Stop(); }
void DeployRunner::Freeze() { impl_->Freeze(); }
bool DeployRunner::updating() const { return impl_->updating(); }

}  // namespace ds::agent
