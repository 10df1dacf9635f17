// The deployment service's store and rollout engine (docs/DEPLOY.md): devices, deployments,
// waves, per-device state and events in SQLite; waves advance, halt and finish here.
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "common/hash.h"
#include "deploy/deploy_impl.h"

namespace ds::deploy {
namespace {

constexpr size_t kMaxEventsPerPost = 1000;
constexpr size_t kMaxInventory = 1000;
constexpr size_t kMaxLabels = 100;
constexpr size_t kMaxString = 256;
constexpr size_t kMaxWaves = 100;
constexpr int kMaxParkedPerDevice = 4;

Status Invalid(std::string msg) { return Error(ErrorCode::kInvalidArgument, std::move(msg)); }

// [A-Za-z0-9][A-Za-z0-9._-]{0,127}; versions also allow '+'.
bool ValidName(std::string_view s, bool version) {
  if (s.empty() || s.size() > 128 || !std::isalnum(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' &&
        !(version && c == '+')) {
      return false;
    }
  }
  return true;
}

std::string Sha256Hex(std::string_view s) {
  return ToHex(Sha256::Of(ByteView(reinterpret_cast<const uint8_t*>(s.data()), s.size())));
}

Result<json> ParseObject(std::string_view body) {
  json j = json::parse(body.begin(), body.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Invalid("the body is not a JSON object");
  return j;
}

bool ShortString(const json& j) {
  return j.is_string() && j.get_ref<const std::string&>().size() <= kMaxString;
}

Status CheckLabels(const json& j) {
  if (!j.is_object() || j.size() > kMaxLabels) return Invalid("labels: an object of strings");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key().empty() || it.key().size() > kMaxString || !ShortString(it.value())) {
      return Invalid("labels: an object of short strings");
    }
  }
  return Status::Ok();
}

Status CheckInventory(const json& j) {
  if (!j.is_array() || j.size() > kMaxInventory) return Invalid("inventory: an array");
  for (const json& e : j) {
    if (!e.is_object() || !e.contains("artifact") || !ShortString(e["artifact"]) ||
        (e.contains("version") && !ShortString(e["version"])) ||
        (e.contains("sha256") && !ShortString(e["sha256"]))) {
      return Invalid("inventory entries are {\"artifact\",\"version\",\"sha256\"} strings");
    }
  }
  return Status::Ok();
}

// The installed (version, sha256) of |artifact| in an inventory.
std::pair<std::string, std::string> Installed(const json& inventory, const std::string& artifact) {
  if (!inventory.is_array()) return {};
  for (const json& e : inventory) {
    if (e.is_object() && e.value("artifact", "") == artifact) {
      return {e.value("version", ""), e.value("sha256", "")};
    }
  }
  return {};
}

std::string RandomToken() {
  uint8_t raw[32];
  if (RAND_bytes(raw, sizeof(raw)) != 1) std::abort();  // No entropy: nothing safe to do.
  return ToHex(ByteView(raw, sizeof(raw)));
}

template <typename F>
auto Guard(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const SQLite::Exception& e) {
    return Error(ErrorCode::kIoError, std::string("deploy store: ") + e.what());
  } catch (const json::exception& e) {
    return Invalid(std::string("JSON: ") + e.what());
  }
}

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices(
  id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, epoch INTEGER NOT NULL DEFAULT 1,
  last_seq INTEGER NOT NULL DEFAULT 0, labels TEXT NOT NULL DEFAULT '{}',
  hardware TEXT NOT NULL DEFAULT '', agent_version TEXT NOT NULL DEFAULT '',
  inventory TEXT NOT NULL DEFAULT '[]', enrolled REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deployments(
  id TEXT PRIMARY KEY, num INTEGER NOT NULL UNIQUE, artifact TEXT NOT NULL, version TEXT NOT NULL,
  target_sha256 TEXT NOT NULL, full_bytes INTEGER NOT NULL, selector TEXT NOT NULL,
  waves_spec TEXT NOT NULL, success_threshold REAL NOT NULL, failure_threshold REAL NOT NULL,
  policy TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
  created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS waves(
  deployment_id TEXT NOT NULL, idx INTEGER NOT NULL, devices INTEGER NOT NULL,
  state TEXT NOT NULL, prewarm_done INTEGER NOT NULL DEFAULT 0,
  expected_delta_bytes INTEGER NOT NULL DEFAULT 0, expected_full_bytes INTEGER NOT NULL DEFAULT 0,
  prewarm TEXT NOT NULL DEFAULT '[]', started REAL NOT NULL DEFAULT 0,
  finished REAL NOT NULL DEFAULT 0, PRIMARY KEY(deployment_id, idx));
CREATE TABLE IF NOT EXISTS targets(
  deployment_id TEXT NOT NULL, device_id TEXT NOT NULL, wave INTEGER NOT NULL,
  state TEXT NOT NULL, from_version TEXT NOT NULL DEFAULT '',
  base_sha256 TEXT NOT NULL DEFAULT '', bytes INTEGER NOT NULL DEFAULT 0,
  total_bytes INTEGER NOT NULL DEFAULT 0, full_bytes INTEGER NOT NULL DEFAULT 0,
  rate_bps REAL NOT NULL DEFAULT 0, carrier TEXT NOT NULL DEFAULT '',
  result TEXT NOT NULL DEFAULT '', error_code INTEGER NOT NULL DEFAULT 0,
  bytes_saved INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 1,
  updated REAL NOT NULL DEFAULT 0, PRIMARY KEY(deployment_id, device_id));
CREATE INDEX IF NOT EXISTS targets_device ON targets(device_id);
CREATE TABLE IF NOT EXISTS events(
  device_id TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
  deployment_id TEXT NOT NULL, state TEXT NOT NULL, body TEXT NOT NULL, received REAL NOT NULL,
  PRIMARY KEY(device_id, epoch, seq));
)sql";

struct WaveCounts {
  int64_t n = 0, installed = 0, failed = 0, deferred = 0, active = 0, queued = 0, pending = 0;
};

}  // namespace

double WallNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool IsFinalState(std::string_view s) {
  return s == "installed" || s == "failed" || s == "deferred";
}
bool IsActiveState(std::string_view s) {
  return s == "started" || s == "downloading" || s == "applying" || s == "installing";
}
bool IsEventState(std::string_view s) { return IsFinalState(s) || IsActiveState(s); }

Result<std::unique_ptr<Deploy>> Deploy::Open(DeployOptions options) {
  if (options.enrollment_token.empty())
    return Invalid("the deployment service needs an enrolment token");
  if (!options.check_admin) return Invalid("the deployment service needs an admin token check");
  auto d = std::make_unique<DeployImpl>(std::move(options));
  DS_RETURN_IF_ERROR(d->Init());
  return std::unique_ptr<Deploy>(std::move(d));
}

DeployImpl::DeployImpl(DeployOptions options)
    : opt_(std::move(options)), repo_url_(opt_.repo_url) {}

DeployImpl::~DeployImpl() { Stop(); }

Status DeployImpl::Init() {
  return Guard([&]() -> Status {
    db_ = std::make_unique<SQLite::Database>(opt_.data_dir + "/deploy.db",
                                             SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db_->exec("PRAGMA journal_mode=WAL");
    db_->exec("PRAGMA synchronous=NORMAL");
    db_->exec("PRAGMA foreign_keys=ON");
    db_->setBusyTimeout(5000);
    SQLite::Transaction t(*db_);
    db_->exec(kSchema);
    SQLite::Statement v(*db_, "SELECT value FROM meta WHERE key='schema_version'");
    if (v.executeStep()) {
      const int have = std::atoi(v.getColumn(0).getString().c_str());
      if (have > kSchemaVersion) {
        return Error(ErrorCode::kUnsupported, "deploy.db has schema version " +
                                                  std::to_string(have) + ", this build knows " +
                                                  std::to_string(kSchemaVersion));
      }
    } else {
      db_->exec("INSERT INTO meta(key, value) VALUES('schema_version', '" +
                std::to_string(kSchemaVersion) + "')");
    }
    t.commit();
    // A restart resumes: waves that were pre-warming get their job again (EvaluateLocked).
    if (opt_.start_threads) {
      engine_ = std::thread([this] { EngineLoop(); });
      prewarmer_ = std::thread([this] { PrewarmLoop(); });
    }
    return Status::Ok();
  });
}

void DeployImpl::SetRepoUrl(std::string url) {
  std::lock_guard<std::mutex> lock(mu_);
  while (!url.empty() && url.back() == '/') url.pop_back();
  repo_url_ = std::move(url);
}

std::string DeployImpl::RepoUrl() {
  std::lock_guard<std::mutex> lock(mu_);
  return repo_url_;
}

void DeployImpl::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopping_ = true;
    ExpireParkedLocked(true);
    cv_.notify_all();
  }
  if (engine_.joinable()) engine_.join();
  if (prewarmer_.joinable()) prewarmer_.join();
  {
    std::lock_guard<std::mutex> lock(sse_mu_);
    for (auto& s : streams_) s->Close();
    streams_.clear();
  }
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
}

void DeployImpl::EngineLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(opt_.tick_ms));
    if (stopping_) break;
    lock.unlock();
    Tick();
    lock.lock();
  }
}

void DeployImpl::Tick() {
  std::lock_guard<std::mutex> lock(mu_);
  try {
    std::vector<std::string> active;
    SQLite::Statement q(*db_, "SELECT id FROM deployments WHERE state='running' ORDER BY num");
    while (q.executeStep()) active.push_back(q.getColumn(0).getString());
    for (const std::string& id : active) EvaluateLocked(id);
    FlushDirtyLocked();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deltastream: deploy engine: %s\n", e.what());
  }
  ExpireParkedLocked(false);
  const double now = WallNow();
  if (now - last_heartbeat_ >= static_cast<double>(opt_.sse_heartbeat_ms) / 1000.0) {
    last_heartbeat_ = now;
    SseHeartbeat();
  }
}

// ---- Devices ----

Result<std::string> DeployImpl::Enroll(std::string_view body) {
  DS_ASSIGN_OR_RETURN(json j, ParseObject(body));
  const std::string given = j.value("enrollment_token", "");
  // Constant time: compare digests of equal length.
  const std::string a = Sha256Hex(given), b = Sha256Hex(opt_.enrollment_token);
  if (given.empty() || CRYPTO_memcmp(a.data(), b.data(), a.size()) != 0) {
    return Error(ErrorCode::kUnauthenticated, "wrong enrollment token");
  }
  const std::string id = j.value("device_id", "");
  if (!ValidName(id, false)) {
    return Invalid("device_id: [A-Za-z0-9][A-Za-z0-9._-]{0,127}");
  }
  const json labels = j.value("labels", json::object());
  const json inventory = j.value("inventory", json::array());
  DS_RETURN_IF_ERROR(CheckLabels(labels));
  DS_RETURN_IF_ERROR(CheckInventory(inventory));
  const json hardware = j.value("hardware", json(""));
  const json agent = j.value("agent_version", json(""));
  if (!ShortString(hardware) || !ShortString(agent)) {
    return Invalid("hardware and agent_version are short strings");
  }
  const std::string token = RandomToken();
  std::lock_guard<std::mutex> lock(mu_);
  return Guard([&]() -> Result<std::string> {
    const double now = WallNow();
    // A re-enrolment rotates the token and starts a new event sequence (epoch): the device's
    // journal went with its old token.
    SQLite::Statement q(*db_,
                        "INSERT INTO devices(id, token_hash, labels, hardware, agent_version, "
                        "inventory, enrolled, last_seen) VALUES(?,?,?,?,?,?,?,?) "
                        "ON CONFLICT(id) DO UPDATE SET token_hash=excluded.token_hash, "
                        "epoch=epoch+1, last_seq=0, labels=excluded.labels, "
                        "hardware=excluded.hardware, agent_version=excluded.agent_version, "
                        "inventory=excluded.inventory, enrolled=excluded.enrolled, "
                        "last_seen=excluded.last_seen");
    q.bind(1, id);
    q.bind(2, Sha256Hex(token));
    q.bind(3, labels.dump());
    q.bind(4, hardware.get<std::string>());
    q.bind(5, agent.get<std::string>());
    q.bind(6, inventory.dump());
    q.bind(7, now);
    q.bind(8, now);
    q.exec();
    return json{{"device_id", id}, {"device_token", token}}.dump();
  });
}

Status DeployImpl::AuthorizeDevice(std::string_view token, std::string_view device_id) {
  if (token.empty()) return Error(ErrorCode::kUnauthenticated, "a device token is required");
  const std::string token_hash = Sha256Hex(token);
  std::lock_guard<std::mutex> lock(mu_);
  return Guard([&]() -> Status {
    CachedStatement h = Stmt("SELECT id FROM devices WHERE token_hash=?");
    SQLite::Statement& q = *h;
    q.bind(1, token_hash);
    if (!q.executeStep()) return Error(ErrorCode::kUnauthenticated, "unknown device token");
    if (q.getColumn(0).getString() != device_id) {
      return Error(ErrorCode::kPermissionDenied, "this token belongs to another device");
    }
    return Status::Ok();
  });
}

Status DeployImpl::Heartbeat(std::string_view device_id, std::string_view body) {
  DS_ASSIGN_OR_RETURN(json j, ParseObject(body));
  if (j.contains("inventory")) DS_RETURN_IF_ERROR(CheckInventory(j["inventory"]));
  if (j.contains("labels")) DS_RETURN_IF_ERROR(CheckLabels(j["labels"]));
  if (j.contains("agent_version") && !ShortString(j["agent_version"])) {
    return Invalid("agent_version is a short string");
  }
  std::lock_guard<std::mutex> lock(mu_);
  return Guard([&]() -> Status {
    SQLite::Statement q(*db_,
                        "UPDATE devices SET last_seen=?, inventory=COALESCE(?, inventory), "
                        "labels=COALESCE(?, labels), agent_version=COALESCE(?, agent_version) "
                        "WHERE id=?");
    q.bind(1, WallNow());
    if (j.contains("inventory")) q.bind(2, j["inventory"].dump());
    if (j.contains("labels")) q.bind(3, j["labels"].dump());
    if (j.contains("agent_version")) q.bind(4, j["agent_version"].get<std::string>());
    q.bind(5, std::string(device_id));
    if (q.exec() == 0) return Error(ErrorCode::kNotFound, "no such device");
    return Status::Ok();
  });
}

json DeployImpl::InstructionsLocked(const std::string& device_id) {
  json list = json::array();
  CachedStatement h = Stmt(
      "SELECT t.deployment_id, d.artifact, d.version, d.policy, d.state, t.state "
      "FROM targets t JOIN deployments d ON d.id = t.deployment_id "
      "WHERE t.device_id=? AND d.state IN ('running','paused','halted') ORDER BY d.num");
  SQLite::Statement& q = *h;
  q.bind(1, device_id);
  while (q.executeStep()) {
    const std::string dep_state = q.getColumn(4).getString();
    const std::string state = q.getColumn(5).getString();
    // Paused and halted deployments hand out nothing new; what a device already does goes on.
    if (!((dep_state == "running" && state == "queued") || IsActiveState(state))) continue;
    list.push_back({{"deployment_id", q.getColumn(0).getString()},
                    {"artifact", q.getColumn(1).getString()},
                    {"version", q.getColumn(2).getString()},
                    {"policy", json::parse(q.getColumn(3).getString())}});
  }
  return list;
}

Result<std::string> DeployImpl::Instructions(std::string_view device_id) {
  std::lock_guard<std::mutex> lock(mu_);
  return Guard([&]() -> Result<std::string> {
    return json{{"instructions", InstructionsLocked(std::string(device_id))}}.dump();
  });
}

void DeployImpl::NotifyDevicesLocked(const std::vector<std::string>& device_ids) {
  for (const std::string& id : device_ids) {
    auto it = parked_.find(id);
    if (it == parked_.end()) continue;
    json list = InstructionsLocked(id);
    if (list.empty()) continue;
    const std::string body = json{{"instructions", list}}.dump();
    for (Parked& p : it->second) p.responder.Send(net::Response::Json(200, body));
    parked_.erase(it);
  }
}

Result<std::string> DeployImpl::PostEvents(std::string_view device_id, std::string_view body) {
  DS_ASSIGN_OR_RETURN(json j, ParseObject(body));
  if (!j.contains("events") || !j["events"].is_array() || j["events"].size() > kMaxEventsPerPost) {
    return Invalid("events: an array of at most 1000 events");
  }
  std::vector<json> events;
  for (const json& e : j["events"]) {
    if (!e.is_object() || !e.contains("seq") || !e["seq"].is_number_unsigned() ||
        e["seq"].get<uint64_t>() == 0 || e["seq"].get<uint64_t>() > (1ull << 62)) {
      return Invalid("every event has a positive integer seq");
    }
    if (!e.contains("state") || !e["state"].is_string() ||
        !IsEventState(e["state"].get<std::string>())) {
      return Invalid(
          "event state: started, downloading, applying, installing, installed, "
          "failed or deferred");
    }
    if (!e.contains("deployment_id") || !ShortString(e["deployment_id"])) {
      return Invalid("every event names its deployment_id");
    }
    for (const char* k : {"bytes", "total_bytes", "full_bytes", "bytes_saved", "rate_bps",
                          "error_code", "chunk_size", "repair_overhead", "time"}) {
      if (e.contains(k) && !e[k].is_number()) return Invalid(std::string(k) + " is a number");
    }
    for (const char* k : {"carrier", "result", "from_version", "to_version"}) {
      if (e.contains(k) && !ShortString(e[k])) return Invalid(std::string(k) + " is a string");
    }
    events.push_back(e);
  }
  std::sort(events.begin(), events.end(), [](const json& a, const json& b) {
    return a["seq"].get<uint64_t>() < b["seq"].get<uint64_t>();
  });
  std::lock_guard<std::mutex> lock(mu_);
  return Guard([&]() -> Result<std::string> {
    const std::string dev(device_id);
    SQLite::Transaction t(*db_);
    CachedStatement dh = Stmt("SELECT epoch, last_seq FROM devices WHERE id=?");
    SQLite::Statement& d = *dh;
    d.bind(1, dev);
    if (!d.executeStep()) return Error(ErrorCode::kNotFound, "no such device");
    const int64_t epoch = d.getColumn(0).getInt64();
    uint64_t last = static_cast<uint64_t>(d.getColumn(1).getInt64());
    const double now = WallNow();
    std::set<std::string> touched;
    struct Move {
      std::string deployment_id;
      int wave;
      std::string from, to;
    };
    std::vector<Move> moves;  // Applied to state_counts_ once the transaction commits.
    for (const json& e : events) {
      const uint64_t seq = e["seq"].get<uint64_t>();
      if (seq <= last) continue;  // A replay, or older than what we have: ignored.
      last = seq;
      const std::string dep = e["deployment_id"].get<std::string>();
      const std::string state = e["state"].get<std::string>();
      CachedStatement insh = Stmt(
          "INSERT OR IGNORE INTO events(device_id, epoch, seq, deployment_id, state, body, "
          "received) VALUES(?,?,?,?,?,?,?)");
      SQLite::Statement& ins = *insh;
      ins.bind(1, dev);
      ins.bind(2, epoch);
      ins.bind(3, static_cast<int64_t>(seq));
      ins.bind(4, dep);
      ins.bind(5, state);
      ins.bind(6, e.dump());
      ins.bind(7, now);
      ins.exec();
      auto num = [&](const char* k) -> std::optional<double> {
        if (!e.contains(k)) return std::nullopt;
        return e[k].get<double>();
      };
      auto str = [&](const char* k) -> std::optional<std::string> {
        if (!e.contains(k)) return std::nullopt;
        return e[k].get<std::string>();
      };
      CachedStatement uph = Stmt(
          "UPDATE targets SET state=?, bytes=COALESCE(?, bytes), "
          "total_bytes=COALESCE(?, total_bytes), full_bytes=COALESCE(?, "
          "full_bytes), rate_bps=COALESCE(?, rate_bps), carrier=COALESCE(?, "
          "carrier), result=COALESCE(?, result), error_code=COALESCE(?, "
          "error_code), bytes_saved=COALESCE(?, bytes_saved), "
          "from_version=COALESCE(?, from_version), updated=? "
          "WHERE deployment_id=? AND device_id=?");
      SQLite::Statement& up = *uph;
      up.bind(1, state);
      int i = 2;
      for (const char* k : {"bytes", "total_bytes", "full_bytes"}) {
        if (auto v = num(k)) up.bind(i, static_cast<int64_t>(*v));
        ++i;
      }
      if (auto v = num("rate_bps")) up.bind(5, *v);
      if (auto v = str("carrier")) up.bind(6, *v);
      if (auto v = str("result")) up.bind(7, *v);
      if (auto v = num("error_code")) up.bind(8, static_cast<int64_t>(*v));
      if (auto v = num("bytes_saved")) up.bind(9, static_cast<int64_t>(*v));
      if (auto v = str("from_version"); v && !v->empty()) up.bind(10, *v);
      up.bind(11, now);
      up.bind(12, dep);
      up.bind(13, dev);
      CachedStatement curh =
          Stmt("SELECT wave, state FROM targets WHERE deployment_id=? AND device_id=?");
      SQLite::Statement& cur = *curh;
      cur.bind(1, dep);
      cur.bind(2, dev);
      // An event for a deployment the device is not part of is kept, and changes nothing.
      if (!cur.executeStep()) continue;
      moves.push_back({dep, cur.getColumn(0).getInt(), cur.getColumn(1).getString(), state});
      up.exec();
      touched.insert(dep);
    }
    CachedStatement uh = Stmt("UPDATE devices SET last_seq=?, last_seen=? WHERE id=?");
    SQLite::Statement& u = *uh;
    u.bind(1, static_cast<int64_t>(last));
    u.bind(2, now);
    u.bind(3, dev);
    u.exec();
    t.commit();
    for (const Move& m : moves) {
      auto it = state_counts_.find(m.deployment_id);
      if (it == state_counts_.end() || m.from == m.to) continue;
      --it->second[{m.wave, m.from}];
      ++it->second[{m.wave, m.to}];
    }
    // Live: the device's row in each deployment it reported for (the last state of each).
    for (const std::string& dep : touched) {
      CachedStatement rh = Stmt(
          "SELECT wave, state, bytes, rate_bps, carrier, result, error_code, bytes_saved, "
          "from_version, total_bytes, attempts FROM targets WHERE deployment_id=? AND "
          "device_id=?");
      SQLite::Statement& r = *rh;
      r.bind(1, dep);
      r.bind(2, dev);
      if (r.executeStep()) {
        json row = {{"deployment_id", dep},
                    {"device_id", dev},
                    {"wave", r.getColumn(0).getInt64()},
                    {"state", r.getColumn(1).getString()},
                    {"bytes", r.getColumn(2).getInt64()},
                    {"rate_bps", r.getColumn(3).getDouble()},
                    {"carrier", r.getColumn(4).getString()},
                    {"result", r.getColumn(5).getString()},
                    {"error_code", r.getColumn(6).getInt64()},
                    {"bytes_saved", r.getColumn(7).getInt64()},
                    {"from_version", r.getColumn(8).getString()},
                    {"total_bytes", r.getColumn(9).getInt64()},
                    {"attempts", r.getColumn(10).getInt64()}};
        Broadcast("device", row.dump());
      }
      EvaluateLocked(dep);
      MarkDirtyLocked(dep);
    }
    return json{{"acked_seq", last}}.dump();
  });
}

Result<std::string> DeployImpl::ListDevices() {
  std::lock_guard<std::mutex> lock(mu_);
  return Guard([&]() -> Result<std::string> {
    json list = json::array();
    SQLite::Statement q(*db_,
                        "SELECT id, labels, hardware, agent_version, inventory, enrolled, "
                        "last_seen FROM devices ORDER BY id");
    while (q.executeStep()) {
      list.push_back({{"device_id", q.getColumn(0).getString()},
                      {"labels", json::parse(q.getColumn(1).getString())},
                      {"hardware", q.getColumn(2).getString()},
                      {"agent_version", q.getColumn(3).getString()},
                      {"inventory", json::parse(q.getColumn(4).getString())},
                      {"enrolled", q.getColumn(5).getDouble()},
                      {"last_seen", q.getColumn(6).getDouble()}});
    }
    return json{{"devices", list}}.dump();
  });
}

// ---- Deployments ----

namespace {

// Cumulative wave ends: absolute counts add to the previous end; "P%" is P% of the selection.
Result<std::vector<int64_t>> WaveSizes(const json& spec, int64_t total) {
  if (!spec.is_array() || spec.empty() || spec.size() > kMaxWaves) {
    return Invalid("waves: a non-empty array (at most 100) of counts or \"P%\" strings");
  }
  std::vector<int64_t> sizes;
  int64_t end = 0;
  for (const json& w : spec) {
    int64_t next = end;
    if (w.is_number_integer() && w.get<int64_t>() > 0) {
      next = std::min(total, end + w.get<int64_t>());
    } else if (w.is_string()) {
      const std::string s = w.get<std::string>();
      char* stop = nullptr;
      const double p = s.size() >= 2 && s.back() == '%' ? std::strtod(s.c_str(), &stop) : -1;
      if (p <= 0 || p > 100 || stop != s.c_str() + s.size() - 1) {
        return Invalid("wave '" + s + "': a percentage in (0, 100], e.g. \"25%\"");
      }
      next =
          std::max(end, std::min(total, static_cast<int64_t>(std::ceil(p * total / 100.0 - 1e-9))));
    } else {
      return Invalid("a wave is a positive count or a \"P%\" string");
    }
    sizes.push_back(next - end);
    end = next;
  }
  return sizes;
}

}  // namespace

Result<std::string> DeployImpl::CreateDeployment(std::string_view body) {
  DS_ASSIGN_OR_RETURN(json j, ParseObject(body));
  const std::string artifact = j.value("artifact", "");
  const std::string version = j.value("version", "");
  if (!ValidName(artifact, false)) return Invalid("artifact: a valid artifact name");
  if (!ValidName(version, true)) return Invalid("version: a valid version");
  if (!j.contains("selector") || !j["selector"].is_object()) {
    return Invalid("selector: {\"labels\":{...}} and/or {\"devices\":[...]}");
  }
  const json& sel = j["selector"];
  if (!sel.contains("labels") && !sel.contains("devices")) {
    return Invalid("selector: give labels, devices or both");
  }
  if (sel.contains("labels")) DS_RETURN_IF_ERROR(CheckLabels(sel["labels"]));
  std::set<std::string> wanted;
  if (sel.contains("devices")) {
    if (!sel["devices"].is_array()) return Invalid("selector.devices: an array of device ids");
    for (const json& d : sel["devices"]) {
      if (!d.is_string() || !ValidName(d.get<std::string>(), false)) {
        return Invalid("selector.devices: device ids");
      }
      wanted.insert(d.get<std::string>());
    }
  }
  const json waves_spec = j.value("waves", json::array({"100%"}));
  const double success = j.value("success_threshold", 1.0);
  const double failure = j.value("failure_threshold", 0.0);
  if (!(success >= 0 && success <= 1) || !(failure >= 0 && failure <= 1)) {
    return Invalid("success_threshold and failure_threshold are fractions in [0, 1]");
  }
  json policy = {{"prefer_delta", true}, {"carrier", "http"}, {"fallback", "full"}};
  if (j.contains("policy")) {
    const json& p = j["policy"];
    if (!p.is_object()) return Invalid("policy: an object");
    if (p.contains("prefer_delta")) {
      if (!p["prefer_delta"].is_boolean()) return Invalid("policy.prefer_delta: a boolean");
      policy["prefer_delta"] = p["prefer_delta"];
    }
    if (p.contains("carrier")) {
      const std::string c = p["carrier"].is_string() ? p["carrier"].get<std::string>() : "";
      if (c != "http" && c != "udp" && c != "auto")
        return Invalid("policy.carrier: http, udp or auto");
      policy["carrier"] = c;
    }
    if (p.contains("fallback")) {
      const std::string f = p["fallback"].is_string() ? p["fallback"].get<std::string>() : "";
      if (f != "full" && f != "fail" && f != "defer") {
        return Invalid("policy.fallback: full, fail or defer");
      }
      policy["fallback"] = f;
    }
  }

  // The target version must exist in the repository the devices use: its size and hash.
  const std::string repo = RepoUrl();
  if (repo.empty()) return Error(ErrorCode::kUnavailable, "no repository URL configured");
  net::ClientOptions co;
  co.ca_file = opt_.repo_ca_file;
  co.connect_timeout_ms = 5000;
  net::Client client(co);
  DS_ASSIGN_OR_RETURN(net::ClientResponse vr,
                      client.Get(repo + "/v1/artifacts/" + net::UrlEncode(artifact) + "/versions/" +
                                 net::UrlEncode(version)));
  if (vr.status != 200) {
    Status s = net::StatusFromResponse(vr);
    return Status(s.code(),
                  "the repository has no " + artifact + " " + version + ": " + s.message());
  }
  json vinfo = json::parse(vr.body, nullptr, false);
  if (vinfo.is_discarded() || !vinfo.contains("size") || !vinfo.contains("sha256")) {
    return Error(ErrorCode::kProtocol, "the repository's version answer is malformed");
  }
  const int64_t full_bytes = vinfo["size"].get<int64_t>();
  const std::string target_sha = vinfo["sha256"].get<std::string>();

  std::lock_guard<std::mutex> lock(mu_);
  return Guard([&]() -> Result<std::string> {
    struct Dev {
      std::string id, from_version, base_sha;
    };
    std::vector<Dev> selected;
    SQLite::Statement q(*db_, "SELECT id, labels, inventory FROM devices ORDER BY id");
    while (q.executeStep()) {
      const std::string id = q.getColumn(0).getString();
      if (sel.contains("devices") && wanted.count(id) == 0) continue;
      if (sel.contains("labels")) {
        const json labels = json::parse(q.getColumn(1).getString());
        bool match = true;
        for (auto it = sel["labels"].begin(); it != sel["labels"].end(); ++it) {
          if (!labels.contains(it.key()) || labels[it.key()] != it.value()) match = false;
        }
        if (!match) continue;
      }
      auto [v, sha] = Installed(json::parse(q.getColumn(2).getString()), artifact);
      selected.push_back({id, v, sha});
    }
    if (selected.empty()) return Invalid("the selector matches no enrolled device");
    DS_ASSIGN_OR_RETURN(std::vector<int64_t> sizes,
                        WaveSizes(waves_spec, static_cast<int64_t>(selected.size())));
    SQLite::Statement n(*db_, "SELECT COALESCE(MAX(num), 0) + 1 FROM deployments");
    n.executeStep();
    const int64_t num = n.getColumn(0).getInt64();
    const std::string id = "d-" + std::to_string(num);
    const double now = WallNow();
    SQLite::Transaction t(*db_);
    SQLite::Statement ins(*db_,
                          "INSERT INTO deployments(id, num, artifact, version, target_sha256, "
                          "full_bytes, selector, waves_spec, success_threshold, "
                          "failure_threshold, policy, state, created, updated) "
                          "VALUES(?,?,?,?,?,?,?,?,?,?,?,'running',?,?)");
    ins.bind(1, id);
    ins.bind(2, num);
    ins.bind(3, artifact);
    ins.bind(4, version);
    ins.bind(5, target_sha);
    ins.bind(6, full_bytes);
    ins.bind(7, sel.dump());
    ins.bind(8, waves_spec.dump());
    ins.bind(9, success);
    ins.bind(10, failure);
    ins.bind(11, policy.dump());
    ins.bind(12, now);
    ins.bind(13, now);
    ins.exec();
    size_t next = 0;
    for (size_t w = 0; w < sizes.size(); ++w) {
      SQLite::Statement wi(*db_,
                           "INSERT INTO waves(deployment_id, idx, devices, state) "
                           "VALUES(?,?,?,'pending')");
      wi.bind(1, id);
      wi.bind(2, static_cast<int64_t>(w));
      wi.bind(3, sizes[w]);
      wi.exec();
      for (int64_t k = 0; k < sizes[w]; ++k, ++next) {
        CachedStatement tih = Stmt(
            "INSERT INTO targets(deployment_id, device_id, wave, state, from_version, "
            "base_sha256, updated) VALUES(?,?,?,'pending',?,?,?)");
        SQLite::Statement& ti = *tih;
        ti.bind(1, id);
        ti.bind(2, selected[next].id);
        ti.bind(3, static_cast<int64_t>(w));
        ti.bind(4, selected[next].from_version);
        ti.bind(5, selected[next].base_sha);
        ti.bind(6, now);
        ti.exec();
      }
    }
    t.commit();
    state_counts_.erase(id);
    EvaluateLocked(id);  // The first wave starts pre-warming.
    for (size_t w = 1; w < sizes.size(); ++w) QueuePrewarmLocked(id, static_cast<int>(w), false);
    MarkDirtyLocked(id);
    return DeploymentJsonLocked(id, true).dump();
  });
}

std::vector<std::string> DeployImpl::WaveDevicesLocked(const std::string& id, int wave) {
  std::vector<std::string> out;
  SQLite::Statement q(*db_, "SELECT device_id FROM targets WHERE deployment_id=? AND wave=?");
  q.bind(1, id);
  q.bind(2, wave);
  while (q.executeStep()) out.push_back(q.getColumn(0).getString());
  return out;
}

void DeployImpl::SetDeploymentStateLocked(const std::string& id, const std::string& state,
                                          const std::string& reason) {
  SQLite::Statement u(*db_, "UPDATE deployments SET state=?, reason=?, updated=? WHERE id=?");
  u.bind(1, state);
  u.bind(2, reason);
  u.bind(3, WallNow());
  u.bind(4, id);
  u.exec();
  MarkDirtyLocked(id);
}

void DeployImpl::QueuePrewarmLocked(const std::string& id, int wave, bool start) {
  if (prewarm_busy_.count({id, wave}) != 0) return;
  for (PrewarmJob& j : prewarm_queue_) {
    if (j.deployment_id == id && j.wave == wave) {
      j.start = j.start || start;
      return;
    }
  }
  prewarm_queue_.push_back({id, wave, start});
  cv_.notify_all();
}

CachedStatement DeployImpl::Stmt(const char* sql) {
  std::unique_ptr<SQLite::Statement>& st = stmts_[sql];
  if (st == nullptr) {
    st = std::make_unique<SQLite::Statement>(*db_, sql);
  } else {
    st->reset();
    st->clearBindings();
  }
  return CachedStatement(*st);
}

const DeployImpl::StateCounts& DeployImpl::StateCountsLocked(const std::string& id) {
  auto it = state_counts_.find(id);
  if (it != state_counts_.end()) return it->second;
  StateCounts counts;
  SQLite::Statement c(*db_,
                      "SELECT wave, state, COUNT(*) FROM targets WHERE deployment_id=? "
                      "GROUP BY wave, state");
  c.bind(1, id);
  while (c.executeStep()) {
    counts[{c.getColumn(0).getInt(), c.getColumn(1).getString()}] = c.getColumn(2).getInt64();
  }
  return state_counts_[id] = std::move(counts);
}

void DeployImpl::StartWaveLocked(const std::string& id, int wave) {
  const double now = WallNow();
  state_counts_.erase(id);
  SQLite::Statement w(
      *db_, "UPDATE waves SET state='running', started=? WHERE deployment_id=? AND idx=?");
  w.bind(1, now);
  w.bind(2, id);
  w.bind(3, wave);
  w.exec();
  SQLite::Statement t(*db_,
                      "UPDATE targets SET state='queued', updated=? WHERE deployment_id=? AND "
                      "wave=? AND state='pending'");
  t.bind(1, now);
  t.bind(2, id);
  t.bind(3, wave);
  t.exec();
  state_counts_.erase(id);
  MarkDirtyLocked(id);
  NotifyDevicesLocked(WaveDevicesLocked(id, wave));
}

bool DeployImpl::EvaluateLocked(const std::string& id) {
  CachedStatement dh =
      Stmt("SELECT state, success_threshold, failure_threshold FROM deployments WHERE id=?");
  SQLite::Statement& d = *dh;
  d.bind(1, id);
  if (!d.executeStep() || d.getColumn(0).getString() != "running") return false;
  const double success = d.getColumn(1).getDouble();
  const double failure = d.getColumn(2).getDouble();
  struct Wave {
    int idx;
    int64_t n;
    std::string state;
    bool prewarmed;
    WaveCounts c;
  };
  std::vector<Wave> waves;
  CachedStatement wh = Stmt(
      "SELECT idx, devices, state, prewarm_done FROM waves WHERE deployment_id=? ORDER BY "
      "idx");
  SQLite::Statement& w = *wh;
  w.bind(1, id);
  while (w.executeStep()) {
    waves.push_back({w.getColumn(0).getInt(),
                     w.getColumn(1).getInt64(),
                     w.getColumn(2).getString(),
                     w.getColumn(3).getInt() != 0,
                     {}});
  }
  bool any_open = false;
  for (const auto& [key, k] : StateCountsLocked(id)) {
    const size_t wi = static_cast<size_t>(key.first);
    const std::string& st = key.second;
    if (wi >= waves.size() || k == 0) continue;
    WaveCounts& wc = waves[wi].c;
    wc.n += k;
    if (st == "installed")
      wc.installed += k;
    else if (st == "failed")
      wc.failed += k;
    else if (st == "deferred")
      wc.deferred += k;
    else if (st == "queued")
      wc.queued += k;
    else if (st == "pending")
      wc.pending += k;
    else
      wc.active += k;
    if (!IsFinalState(st)) any_open = true;
  }
  auto set_wave = [&](int idx, const char* state) {
    SQLite::Statement u(
        *db_, std::string("UPDATE waves SET state=?") +
                  (std::string(state) == "done" ? ", finished=?" : ", finished=finished") +
                  " WHERE deployment_id=? AND idx=?");
    int i = 1;
    u.bind(i++, state);
    if (std::string(state) == "done") u.bind(i++, WallNow());
    u.bind(i++, id);
    u.bind(i++, idx);
    u.exec();
    MarkDirtyLocked(id);
  };
  bool changed = false;
  for (Wave& wave : waves) {
    const WaveCounts& k = wave.c;
    if ((wave.state == "running" || wave.state == "done") && k.n > 0 &&
        static_cast<double>(k.failed) > failure * static_cast<double>(k.n) + 1e-9) {
      set_wave(wave.idx, "halted");
      char why[160];
      std::snprintf(why, sizeof(why), "wave %d: %lld of %lld failed (failure threshold %.2f)",
                    wave.idx, static_cast<long long>(k.failed), static_cast<long long>(k.n),
                    failure);
      SetDeploymentStateLocked(id, "halted", why);
      return true;
    }
    if (wave.state == "running") {
      const int64_t need =
          static_cast<int64_t>(std::ceil(success * static_cast<double>(k.n) - 1e-9));
      if (k.installed >= need) {
        set_wave(wave.idx, "done");
        changed = true;
        continue;
      }
      if (k.installed + k.failed + k.deferred >= k.n) {
        set_wave(wave.idx, "halted");
        char why[160];
        std::snprintf(why, sizeof(why),
                      "wave %d: every device finished and only %lld of %lld installed (success "
                      "threshold %.2f)",
                      wave.idx, static_cast<long long>(k.installed), static_cast<long long>(k.n),
                      success);
        SetDeploymentStateLocked(id, "halted", why);
        return true;
      }
      return changed;
    }
    if (wave.state == "done") continue;
    if (wave.state == "pending") {
      if (wave.n == 0) {
        set_wave(wave.idx, "done");
        changed = true;
        continue;
      }
      set_wave(wave.idx, "prewarming");
      QueuePrewarmLocked(id, wave.idx, true);
      return true;
    }
    if (wave.state == "prewarming") {
      if (wave.prewarmed) {
        StartWaveLocked(id, wave.idx);
        return true;
      }
      QueuePrewarmLocked(id, wave.idx, true);  // After a restart: the job again.
      return changed;
    }
    return changed;  // A halted wave in a running deployment: retry sets it running again.
  }
  if (!any_open) {
    SetDeploymentStateLocked(id, "finished", "");
    return true;
  }
  return changed;
}

json DeployImpl::DeploymentJsonLocked(const std::string& id, bool full) {
  SQLite::Statement d(*db_,
                      "SELECT artifact, version, state, reason, created, updated, selector, "
                      "waves_spec, success_threshold, failure_threshold, policy, full_bytes, "
                      "target_sha256 FROM deployments WHERE id=?");
  d.bind(1, id);
  if (!d.executeStep()) return json();
  json out = {{"id", id},
              {"artifact", d.getColumn(0).getString()},
              {"version", d.getColumn(1).getString()},
              {"state", d.getColumn(2).getString()},
              {"reason", d.getColumn(3).getString()},
              {"created", d.getColumn(4).getDouble()},
              {"updated", d.getColumn(5).getDouble()},
              {"selector", json::parse(d.getColumn(6).getString())},
              {"wave_spec", json::parse(d.getColumn(7).getString())},
              {"success_threshold", d.getColumn(8).getDouble()},
              {"failure_threshold", d.getColumn(9).getDouble()},
              {"policy", json::parse(d.getColumn(10).getString())},
              {"full_bytes", d.getColumn(11).getInt64()},
              {"target_sha256", d.getColumn(12).getString()}};
  std::vector<WaveCounts> counts;
  json waves = json::array();
  SQLite::Statement w(*db_,
                      "SELECT idx, devices, state, expected_delta_bytes, expected_full_bytes, "
                      "prewarm, started, finished FROM waves WHERE deployment_id=? ORDER BY idx");
  w.bind(1, id);
  while (w.executeStep()) {
    json wave = {{"index", w.getColumn(0).getInt()},
                 {"devices", w.getColumn(1).getInt64()},
                 {"state", w.getColumn(2).getString()},
                 {"expected_delta_bytes", w.getColumn(3).getInt64()},
                 {"expected_full_bytes", w.getColumn(4).getInt64()},
                 {"started", w.getColumn(6).getDouble()},
                 {"finished", w.getColumn(7).getDouble()}};
    if (full) wave["prewarm"] = json::parse(w.getColumn(5).getString());
    waves.push_back(std::move(wave));
    counts.emplace_back();
  }
  json devices = json::array();
  int64_t bytes_total = 0, saved_total = 0;
  WaveCounts all;
  SQLite::Statement t(*db_,
                      "SELECT device_id, wave, state, bytes, rate_bps, carrier, result, "
                      "error_code, bytes_saved, from_version, total_bytes, full_bytes, attempts, "
                      "updated FROM targets WHERE deployment_id=? ORDER BY wave, device_id");
  t.bind(1, id);
  while (t.executeStep()) {
    const size_t wi = static_cast<size_t>(t.getColumn(1).getInt());
    const std::string st = t.getColumn(2).getString();
    bytes_total += t.getColumn(3).getInt64();
    saved_total += t.getColumn(8).getInt64();
    for (WaveCounts* k : {wi < counts.size() ? &counts[wi] : nullptr, &all}) {
      if (k == nullptr) continue;
      ++k->n;
      if (st == "installed")
        ++k->installed;
      else if (st == "failed")
        ++k->failed;
      else if (st == "deferred")
        ++k->deferred;
      else if (st == "queued")
        ++k->queued;
      else if (st == "pending")
        ++k->pending;
      else
        ++k->active;
    }
    if (full) {
      devices.push_back({{"device_id", t.getColumn(0).getString()},
                         {"wave", t.getColumn(1).getInt()},
                         {"state", st},
                         {"bytes", t.getColumn(3).getInt64()},
                         {"rate_bps", t.getColumn(4).getDouble()},
                         {"carrier", t.getColumn(5).getString()},
                         {"result", t.getColumn(6).getString()},
                         {"error_code", t.getColumn(7).getInt64()},
                         {"bytes_saved", t.getColumn(8).getInt64()},
                         {"from_version", t.getColumn(9).getString()},
                         {"total_bytes", t.getColumn(10).getInt64()},
                         {"full_bytes", t.getColumn(11).getInt64()},
                         {"attempts", t.getColumn(12).getInt64()},
                         {"updated", t.getColumn(13).getDouble()}});
    }
  }
  for (size_t i = 0; i < waves.size(); ++i) {
    waves[i]["installed"] = counts[i].installed;
    waves[i]["failed"] = counts[i].failed;
    waves[i]["deferred"] = counts[i].deferred;
    waves[i]["in_progress"] = counts[i].active;
    waves[i]["queued"] = counts[i].queued;
  }
  out["waves"] = std::move(waves);
  if (full) out["devices"] = std::move(devices);
  out["counts"] = {{"devices", all.n},         {"installed", all.installed}, {"failed", all.failed},
                   {"deferred", all.deferred}, {"in_progress", all.active},  {"queued", all.queued},
                   {"pending", all.pending}};
  out["bytes_total"] = bytes_total;
  out["bytes_saved_total"] = saved_total;
  return out;
}

Result<std::string> DeployImpl::ListDeployments() {
  std::lock_guard<std::mutex> lock(mu_);
  return Guard([&]() -> Result<std::string> {
    std::vector<std::string> ids;
    SQLite::Statement q(*db_, "SELECT id FROM deployments ORDER BY num DESC");
    while (q.executeStep()) ids.push_back(q.getColumn(0).getString());
    json list = json::array();
    for (const std::string& id : ids) list.push_back(DeploymentJsonLocked(id, false));
    return json{{"deployments", list}}.dump();
  });
}

Result<std::string> DeployImpl::GetDeployment(std::string_view id) {
  std::lock_guard<std::mutex> lock(mu_);
  return Guard([&]() -> Result<std::string> {
    json j = DeploymentJsonLocked(std::string(id), true);
    if (j.is_null()) return Error(ErrorCode::kNotFound, "no deployment " + std::string(id));
    return j.dump();
  });
}

Result<std::string> DeployImpl::Act(std::string_view id_view, std::string_view action) {
  const std::string id(id_view);
  std::lock_guard<std::mutex> lock(mu_);
  return Guard([&]() -> Result<std::string> {
    SQLite::Statement d(*db_, "SELECT state FROM deployments WHERE id=?");
    d.bind(1, id);
    if (!d.executeStep()) return Error(ErrorCode::kNotFound, "no deployment " + id);
    const std::string state = d.getColumn(0).getString();
    auto refuse = [&]() -> Status {
      return Invalid("cannot " + std::string(action) + " a deployment that is " + state);
    };
    if (action == "pause") {
      if (state != "running" && state != "paused") return refuse();
      SetDeploymentStateLocked(id, "paused", "paused by the operator");
    } else if (action == "resume") {
      if (state != "running" && state != "paused") return refuse();
      SetDeploymentStateLocked(id, "running", "");
      EvaluateLocked(id);
      std::vector<std::string> devs;
      SQLite::Statement q(*db_,
                          "SELECT device_id FROM targets WHERE deployment_id=? AND state='queued'");
      q.bind(1, id);
      while (q.executeStep()) devs.push_back(q.getColumn(0).getString());
      NotifyDevicesLocked(devs);
    } else if (action == "cancel") {
      if (state == "finished") return refuse();
      SetDeploymentStateLocked(id, "cancelled", "cancelled by the operator");
    } else if (action == "retry") {
      if (state == "cancelled") return refuse();
      std::vector<std::string> devs;
      SQLite::Statement q(*db_,
                          "SELECT device_id FROM targets WHERE deployment_id=? AND state IN "
                          "('failed','deferred')");
      q.bind(1, id);
      while (q.executeStep()) devs.push_back(q.getColumn(0).getString());
      SQLite::Transaction t(*db_);
      SQLite::Statement u(*db_,
                          "UPDATE targets SET state='queued', attempts=attempts+1, result='', "
                          "error_code=0, bytes=0, bytes_saved=0, rate_bps=0, updated=? "
                          "WHERE deployment_id=? AND state IN ('failed','deferred')");
      u.bind(1, WallNow());
      u.bind(2, id);
      state_counts_.erase(id);
      u.exec();
      SQLite::Statement wv(*db_,
                           "UPDATE waves SET state='running' WHERE deployment_id=? AND "
                           "state='halted'");
      wv.bind(1, id);
      wv.exec();
      t.commit();
      state_counts_.erase(id);
      if (state == "halted" || state == "finished") SetDeploymentStateLocked(id, "running", "");
      MarkDirtyLocked(id);
      EvaluateLocked(id);
      NotifyDevicesLocked(devs);
    } else {
      return Error(ErrorCode::kNotFound,
                   "no action '" + std::string(action) + "' (pause, resume, cancel, retry)");
    }
    FlushDirtyLocked();
    return DeploymentJsonLocked(id, true).dump();
  });
}

// ---- Long polls and events ----

void DeployImpl::ExpireParkedLocked(bool all) {
  const double now =
      std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  const std::string empty = R"({"instructions":[]})";
  for (auto it = parked_.begin(); it != parked_.end();) {
    auto& v = it->second;
    for (auto p = v.begin(); p != v.end();) {
      if (all || p->deadline <= now) {
        p->responder.Send(net::Response::Json(200, empty));
        p = v.erase(p);
      } else {
        ++p;
      }
    }
    // Too many polls parked by one device: the oldest are answered.
    while (v.size() > static_cast<size_t>(kMaxParkedPerDevice)) {
      v.front().responder.Send(net::Response::Json(200, empty));
      v.erase(v.begin());
    }
    it = v.empty() ? parked_.erase(it) : std::next(it);
  }
}

void DeployImpl::Broadcast(const std::string& event, const std::string& data) {
  std::string msg = "event: " + event + "\ndata: " + data + "\n\n";
  std::lock_guard<std::mutex> lock(sse_mu_);
  for (auto it = streams_.begin(); it != streams_.end();) {
    auto& s = *it;
    // A client that cannot keep up is dropped rather than buffered without bound.
    if (s->gone() || s->pending() > opt_.sse_max_pending || !s->Write(msg)) {
      s->Close();
      it = streams_.erase(it);
    } else {
      ++it;
    }
  }
}

void DeployImpl::SseHeartbeat() {
  std::lock_guard<std::mutex> lock(sse_mu_);
  for (auto it = streams_.begin(); it != streams_.end();) {
    if ((*it)->gone() || (*it)->pending() > opt_.sse_max_pending || !(*it)->Write(": ping\n\n")) {
      (*it)->Close();
      it = streams_.erase(it);
    } else {
      ++it;
    }
  }
}

void DeployImpl::FlushDirtyLocked() {
  if (dirty_.empty()) return;
  std::set<std::string> dirty;
  dirty.swap(dirty_);
  for (const std::string& id : dirty) {
    json j = DeploymentJsonLocked(id, false);
    if (!j.is_null()) Broadcast("deployment", j.dump());
  }
}

}  // namespace ds::deploy
