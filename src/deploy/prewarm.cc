// Delta pre-warming (docs/DEPLOY.md): for one wave, the distinct installed bases of its devices
// are looked up on the repository the devices use; a delta job still running on the master is
// waited for, and the proxy's on-demand flow (202 + Retry-After) is followed until the delta is
// ready, so that the wave's devices find it made. Records the expected bytes (deltas) vs full.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "deploy/deploy_impl.h"

namespace ds::deploy {
namespace {

double SteadyNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

void DeployImpl::PrewarmLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (prewarm_queue_.empty()) {
      cv_.wait(lock);
      continue;
    }
    PrewarmJob job = prewarm_queue_.front();
    prewarm_queue_.pop_front();
    prewarm_busy_.insert({job.deployment_id, job.wave});
    lock.unlock();
    RunPrewarm(job);
    lock.lock();
  }
}

void DeployImpl::RunPrewarmOnce() {
  for (;;) {
    PrewarmJob job;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (prewarm_queue_.empty() || stopping_) return;
      job = prewarm_queue_.front();
      prewarm_queue_.pop_front();
      prewarm_busy_.insert({job.deployment_id, job.wave});
    }
    RunPrewarm(job);
  }
}

void DeployImpl::RunPrewarm(const PrewarmJob& job) {
  struct Group {
    std::string from_version;
    int64_t devices = 0;
    std::string kind;   // delta | full | current
    std::string state;  // ready | full | current | timeout | error
    std::string source, error;
    int64_t delta_bytes = 0;
  };
  std::string artifact, version, target_sha, repo;
  int64_t full_bytes = 0;
  std::map<std::string, Group> groups;  // By installed sha256 ("" = not installed).
  {
    std::unique_lock<std::mutex> lock(mu_);
    repo = repo_url_;
    if (repo.empty()) {
      // The server names itself once it listens: try again shortly.
      prewarm_busy_.erase({job.deployment_id, job.wave});
      cv_.wait_for(lock, std::chrono::seconds(1), [&] { return stopping_; });
      if (!stopping_) QueuePrewarmLocked(job.deployment_id, job.wave, job.start);
      return;
    }
    try {
      SQLite::Statement d(*db_,
                          "SELECT artifact, version, target_sha256, full_bytes, state FROM "
                          "deployments WHERE id=?");
      d.bind(1, job.deployment_id);
      if (!d.executeStep() || d.getColumn(4).getString() == "cancelled") {
        prewarm_busy_.erase({job.deployment_id, job.wave});
        return;
      }
      artifact = d.getColumn(0).getString();
      version = d.getColumn(1).getString();
      target_sha = d.getColumn(2).getString();
      full_bytes = d.getColumn(3).getInt64();
      // The wave's devices as they are now (an inventory may have changed since creation). One
      // transaction for the whole wave (10,000 devices were 10,000 commits).
      SQLite::Transaction tx(*db_);
      SQLite::Statement u(*db_,
                          "UPDATE targets SET from_version=?, base_sha256=? WHERE "
                          "deployment_id=? AND device_id=?");
      SQLite::Statement t(*db_,
                          "SELECT t.device_id, t.state, dv.inventory FROM targets t JOIN devices "
                          "dv ON dv.id = t.device_id WHERE t.deployment_id=? AND t.wave=?");
      t.bind(1, job.deployment_id);
      t.bind(2, job.wave);
      while (t.executeStep()) {
        std::string v, sha;
        const json inv = json::parse(t.getColumn(2).getString(), nullptr, false);
        if (inv.is_array()) {
          for (const json& e : inv) {
            if (e.is_object() && e.value("artifact", "") == artifact) {
              v = e.value("version", "");
              sha = e.value("sha256", "");
            }
          }
        }
        Group& g = groups[sha];
        g.from_version = v;
        ++g.devices;
        if (t.getColumn(1).getString() == "pending") {
          u.reset();
          u.bind(1, v);
          u.bind(2, sha);
          u.bind(3, job.deployment_id);
          u.bind(4, t.getColumn(0).getString());
          u.exec();
        }
      }
      tx.commit();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "deltastream: deploy pre-warm: %s\n", e.what());
      prewarm_busy_.erase({job.deployment_id, job.wave});
      return;
    }
  }

  net::ClientOptions co;
  co.ca_file = opt_.repo_ca_file;
  co.connect_timeout_ms = 5000;
  co.low_speed_timeout_ms = 10000;  // Stop() waits for a request in flight: keep it short.
  co.max_body_bytes = 16 << 20;
  net::Client client(co);
  const double deadline = SteadyNow() + static_cast<double>(opt_.prewarm_timeout_ms) / 1000.0;
  // Sleeps up to |seconds|, false when the service stops or the deadline passes.
  auto pause = [&](double seconds) {
    seconds = std::min(seconds, deadline - SteadyNow());
    if (seconds <= 0) return false;
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return stopping_; });
    return !stopping_ && SteadyNow() < deadline;
  };
  const std::string art = net::UrlEncode(artifact);
  for (auto& [sha, g] : groups) {
    if (sha == target_sha) {
      g.kind = g.state = "current";
      continue;
    }
    if (sha.empty() || repo.empty()) {
      g.kind = g.state = "full";
      continue;
    }
    // A master delta job for this pair still queued or running: wait for it first.
    if (!g.from_version.empty()) {
      for (;;) {
        Result<net::ClientResponse> r = client.Get(
            repo + "/v1/artifacts/" + art + "/deltas?from=" + net::UrlEncode(g.from_version) +
            "&to=" + net::UrlEncode(version));
        bool busy = false;
        if (r.ok() && r->status == 200) {
          const json j = json::parse(r->body, nullptr, false);
          if (j.is_object() && j.contains("deltas") && j["deltas"].is_array()) {
            for (const json& d : j["deltas"]) {
              const std::string st = d.is_object() ? d.value("status", "") : "";
              if (st == "queued" || st == "running") busy = true;
            }
          }
        }
        if (!busy || !pause(1.0)) break;
      }
    }
    // The stream route says what a device gets; a proxy answers 202 while it makes the delta.
    g.kind = "full";
    g.state = "error";
    for (;;) {
      Result<net::ClientResponse> r = client.Get(
          repo + "/v1/artifacts/" + art + "/stream?from=" + sha + "&to=" + net::UrlEncode(version));
      if (!r.ok()) {
        g.error = r.status().ToString();
        break;
      }
      if (r->status == 202) {
        g.state = "making";
        double wait = 1;
        const std::string ra(r->Header("retry-after"));
        if (!ra.empty()) wait = std::clamp(std::atof(ra.c_str()), 0.2, 5.0);
        if (!pause(wait)) {
          g.state = "timeout";
          break;
        }
        continue;
      }
      if (r->status != 200) {
        g.error = net::StatusFromResponse(*r).ToString();
        break;
      }
      const json j = json::parse(r->body, nullptr, false);
      if (!j.is_object()) {
        g.error = "malformed stream descriptor";
        break;
      }
      g.source = j.value("source", "");
      if (j.value("kind", "") == "delta") {
        g.kind = "delta";
        g.state = "ready";
        g.delta_bytes = j.value("size", int64_t{0});
      } else {
        g.state = "full";
      }
      break;
    }
  }

  int64_t expected_delta = 0, expected_full = 0;
  json report = json::array();
  for (const auto& [sha, g] : groups) {
    if (g.kind != "current") {
      expected_full += g.devices * full_bytes;
      expected_delta += g.devices * (g.kind == "delta" ? g.delta_bytes : full_bytes);
    }
    json e = {{"from_version", g.from_version},
              {"base_sha256", sha},
              {"devices", g.devices},
              {"kind", g.kind},
              {"state", g.state},
              {"delta_bytes", g.delta_bytes}};
    if (!g.source.empty()) e["source"] = g.source;
    if (!g.error.empty()) e["error"] = g.error;
    report.push_back(std::move(e));
  }
  std::lock_guard<std::mutex> lock(mu_);
  prewarm_busy_.erase({job.deployment_id, job.wave});
  if (stopping_) return;  // Not recorded: the restarted service runs the job again.
  try {
    SQLite::Statement u(*db_,
                        "UPDATE waves SET expected_delta_bytes=?, expected_full_bytes=?, "
                        "prewarm=?, prewarm_done=MAX(prewarm_done, ?) WHERE deployment_id=? AND "
                        "idx=?");
    u.bind(1, expected_delta);
    u.bind(2, expected_full);
    u.bind(3, report.dump());
    u.bind(4, job.start ? 1 : 0);
    u.bind(5, job.deployment_id);
    u.bind(6, job.wave);
    u.exec();
    MarkDirtyLocked(job.deployment_id);
    if (job.start) EvaluateLocked(job.deployment_id);
    FlushDirtyLocked();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deltastream: deploy pre-warm: %s\n", e.what());
  }
}

}  // namespace ds::deploy
