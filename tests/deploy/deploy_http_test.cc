// The deployment service over HTTP on 127.0.0.1, served by a real net::Server beside the master
// API (as `deltastream serve` does): enrolment, device authentication (wrong token 401, another
// device's id 403), replayed and reordered events, the parked long poll (answered at once when a
// wave starts, empty after its wait), Server-Sent Events, the operator's admin token.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "deploy/deploy_fixture.h"

namespace ds::testing {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class DeployHttpTest : public DeployFixture {
 protected:
  void SetUp() override { StartMaster(true); }

  net::ClientResponse Call(const std::string& method, const std::string& path,
                           const std::string& token, const std::string& body = "") {
    net::ClientOptions o;
    o.bearer_token = token;
    net::Client c(o);
    Result<net::ClientResponse> r =
        method == "GET" ? c.Get(url_ + path) : c.Send(method, url_ + path, body);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : net::ClientResponse{};
  }

  std::string EnrolHttp(const std::string& id) {
    const json body = {
        {"enrollment_token", kEnroll},
        {"device_id", id},
        {"labels", {{"site", "lab"}}},
        {"inventory", {{{"artifact", "app"}, {"version", "1.0.0"}, {"sha256", sha1_}}}}};
    net::ClientResponse r = Call("POST", "/v1/devices/enroll", "", body.dump());
    EXPECT_EQ(r.status, 200) << r.body;
    return json::parse(r.body, nullptr, false).value("device_token", "");
  }

  json Events(const std::string& id, const std::string& token, const json& events, int want = 200) {
    net::ClientResponse r =
        Call("POST", "/v1/devices/" + id + "/events", token, json{{"events", events}}.dump());
    EXPECT_EQ(r.status, want) << r.body;
    return json::parse(r.body, nullptr, false);
  }

  json DeviceRow(const std::string& dep, const std::string& id) {
    net::ClientResponse r = Call("GET", "/v1/deployments/" + dep, admin_);
    EXPECT_EQ(r.status, 200) << r.body;
    const json dep_json = json::parse(r.body);
    for (const json& d : dep_json["devices"]) {
      if (d["device_id"] == id) return d;
    }
    return json();
  }

  // Creates a deployment over HTTP and waits until its first wave runs.
  std::string CreateRunning(const json& selector) {
    const json body = {{"artifact", "app"}, {"version", "2.0.0"},       {"selector", selector},
                       {"waves", {"100%"}}, {"success_threshold", 1.0}, {"failure_threshold", 0.5}};
    net::ClientResponse r = Call("POST", "/v1/deployments", admin_, body.dump());
    EXPECT_EQ(r.status, 201) << r.body;
    const std::string id = json::parse(r.body, nullptr, false).value("id", "");
    const double until = Now() + 20;
    while (Now() < until) {
      json d = json::parse(Call("GET", "/v1/deployments/" + id, admin_).body);
      if (d["waves"][0]["state"] == "running") return id;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "the wave did not start";
    return id;
  }
};

TEST_F(DeployHttpTest, EnrolmentAndDeviceAuthentication) {
  // Wrong enrolment token: 401 with the project's error body.
  net::ClientResponse r = Call("POST", "/v1/devices/enroll", "",
                               json{{"enrollment_token", "nope"}, {"device_id", "dev-a"}}.dump());
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(json::parse(r.body)["error"]["code"], 51);
  r = Call("POST", "/v1/devices/enroll", "",
           json{{"enrollment_token", kEnroll}, {"device_id", "../etc"}}.dump());
  EXPECT_EQ(r.status, 400);

  const std::string a = EnrolHttp("dev-a");
  const std::string b = EnrolHttp("dev-b");
  ASSERT_EQ(a.size(), 64u);
  ASSERT_NE(a, b);
  // The store keeps only the token's SHA-256.
  const Bytes db = ReadFileOrDie(dir_.Join("deploy.db"));
  EXPECT_EQ(std::string(db.begin(), db.end()).find(a), std::string::npos);

  const std::string hb = json{{"inventory", json::array()}, {"agent_version", "0.2"}}.dump();
  EXPECT_EQ(Call("POST", "/v1/devices/dev-a/heartbeat", a, hb).status, 200);
  // No token, a wrong token: 401. Another device's id with a valid token: 403.
  EXPECT_EQ(Call("POST", "/v1/devices/dev-a/heartbeat", "", hb).status, 401);
  EXPECT_EQ(Call("POST", "/v1/devices/dev-a/heartbeat", a + "x", hb).status, 401);
  EXPECT_EQ(Call("POST", "/v1/devices/dev-a/heartbeat", b, hb).status, 403);
  EXPECT_EQ(Call("GET", "/v1/devices/dev-a/instructions?wait=0", b).status, 403);
  EXPECT_EQ(Call("GET", "/v1/devices/dev-a/instructions?wait=0", "bad").status, 401);
  const json ev = json::array({json{{"seq", 1}, {"deployment_id", "d-1"}, {"state", "started"}}});
  EXPECT_EQ(Call("POST", "/v1/devices/dev-a/events", b, json{{"events", ev}}.dump()).status, 403);
  EXPECT_EQ(Call("GET", "/v1/devices/dev-a/instructions?wait=61", a).status, 400);
  // A device token is no operator token, and operator routes need one.
  EXPECT_EQ(Call("GET", "/v1/devices", a).status, 401);
  EXPECT_EQ(Call("GET", "/v1/deployments", "").status, 401);
  r = Call("GET", "/v1/devices", admin_);
  ASSERT_EQ(r.status, 200);
  const json devices = json::parse(r.body)["devices"];
  ASSERT_EQ(devices.size(), 2u);
  EXPECT_EQ(devices[0]["agent_version"], "0.2");
  EXPECT_EQ(devices[0]["labels"]["site"], "lab");

  // Re-enrolling rotates the token: the old one is refused.
  const std::string a2 = EnrolHttp("dev-a");
  EXPECT_EQ(Call("POST", "/v1/devices/dev-a/heartbeat", a, hb).status, 401);
  EXPECT_EQ(Call("POST", "/v1/devices/dev-a/heartbeat", a2, hb).status, 200);
}

TEST_F(DeployHttpTest, ReplayedEventsAreIgnoredAndOrdered) {
  const std::string tok = EnrolHttp("dev-a");
  const std::string dep = CreateRunning({{"devices", {"dev-a"}}});
  auto ev = [&](uint64_t seq, const std::string& state, uint64_t bytes) {
    return json{{"seq", seq},          {"deployment_id", dep}, {"state", state},   {"bytes", bytes},
                {"total_bytes", 1000}, {"rate_bps", 1e6},      {"carrier", "http"}};
  };
  EXPECT_EQ(Events("dev-a", tok, {ev(1, "started", 0), ev(2, "downloading", 100)})["acked_seq"], 2);
  // The same batch again (the agent did not see the answer): acknowledged, nothing changes.
  EXPECT_EQ(Events("dev-a", tok, {ev(1, "started", 0), ev(2, "downloading", 100)})["acked_seq"], 2);
  EXPECT_EQ(DeviceRow(dep, "dev-a")["bytes"], 100);
  // Out of order in one batch: applied in seq order; the older seq 3 does not win over 4.
  EXPECT_EQ(
      Events("dev-a", tok, {ev(4, "downloading", 400), ev(3, "downloading", 300)})["acked_seq"], 4);
  EXPECT_EQ(DeviceRow(dep, "dev-a")["bytes"], 400);
  // A stale event (seq below the last) that would fail the device is ignored.
  json stale = ev(3, "failed", 0);
  stale["error_code"] = 26;
  EXPECT_EQ(Events("dev-a", tok, json::array({stale}))["acked_seq"], 4);
  json row = DeviceRow(dep, "dev-a");
  EXPECT_EQ(row["state"], "downloading");
  EXPECT_EQ(row["error_code"], 0);
  // Malformed events are refused whole (400) and change nothing.
  Events("dev-a", tok, json::array({ev(5, "exploded", 0)}), 400);
  Events("dev-a", tok,
         json::array({json{{"seq", -1}, {"deployment_id", dep}, {"state", "started"}}}), 400);
  EXPECT_EQ(Events("dev-a", tok, json::array())["acked_seq"], 4);
  // The final event finishes the deployment.
  json fin = ev(5, "installed", 500);
  fin.update({{"result", "delta"},
              {"full_bytes", 2000},
              {"bytes_saved", 1500},
              {"from_version", "1.0.0"},
              {"to_version", "2.0.0"},
              {"error_code", 0}});
  EXPECT_EQ(Events("dev-a", tok, json::array({fin}))["acked_seq"], 5);
  const json d = json::parse(Call("GET", "/v1/deployments/" + dep, admin_).body);
  EXPECT_EQ(d["state"], "finished");
  EXPECT_EQ(d["bytes_saved_total"], 1500);
  EXPECT_EQ(d["devices"][0]["result"], "delta");
}

TEST_F(DeployHttpTest, LongPollIsAnsweredWhenTheWaveStarts) {
  const std::string tok = EnrolHttp("dev-a");
  EnrolHttp("dev-b");
  // Nothing to do: the poll waits, then answers an empty list.
  double t0 = Now();
  net::ClientResponse r = Call("GET", "/v1/devices/dev-a/instructions?wait=1", tok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body)["instructions"].size(), 0u);
  EXPECT_GE(Now() - t0, 0.9);

  // Parked polls hold no worker thread: more of them than the server has workers (4).
  std::vector<std::future<net::ClientResponse>> polls;
  for (int i = 0; i < 6; ++i) {
    polls.push_back(std::async(std::launch::async, [&] {
      return Call("GET", "/v1/devices/dev-a/instructions?wait=30", tok);
    }));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // The server still answers while they are parked.
  EXPECT_EQ(Call("GET", "/v1/devices", admin_).status, 200);
  t0 = Now();
  const std::string dep = CreateRunning({{"devices", {"dev-a"}}});
  int answered_with_instruction = 0;
  for (auto& f : polls) {
    ASSERT_EQ(f.wait_for(std::chrono::seconds(20)), std::future_status::ready);
    net::ClientResponse p = f.get();
    EXPECT_EQ(p.status, 200);
    const json list = json::parse(p.body)["instructions"];
    if (list.size() == 1 && list[0]["deployment_id"] == dep) ++answered_with_instruction;
  }
  // At most 4 polls stay parked per device (the oldest are answered empty), the rest get the
  // instruction as soon as the wave starts, long before their 30 s.
  EXPECT_GE(answered_with_instruction, 4);
  EXPECT_LT(Now() - t0, 15);
  // With an instruction pending, a poll answers at once.
  t0 = Now();
  r = Call("GET", "/v1/devices/dev-a/instructions?wait=30", tok);
  EXPECT_EQ(json::parse(r.body)["instructions"].size(), 1u);
  EXPECT_LT(Now() - t0, 5);
}

TEST_F(DeployHttpTest, ServerSentEventsCarryDeviceAndDeploymentChanges) {
  const std::string tok = EnrolHttp("dev-a");
  std::atomic<bool> saw_device{false}, saw_deployment{false};
  std::string content_type;
  std::promise<void> connected;
  std::thread reader([&] {
    net::Client c;
    std::string buf;
    bool once = false;
    (void)c.GetStream(
        url_ + "/v1/events?token=" + admin_,
        [&](const net::ClientResponse& head) {
          content_type = std::string(head.Header("content-type"));
          return Status::Ok();
        },
        [&](int, ByteView data) -> Status {
          buf.append(reinterpret_cast<const char*>(data.data()), data.size());
          if (!once) {
            once = true;
            connected.set_value();
          }
          if (buf.find("event: device\ndata: {") != std::string::npos &&
              buf.find("\"state\":\"downloading\"") != std::string::npos) {
            saw_device = true;
          }
          if (buf.find("event: deployment\ndata: {") != std::string::npos) saw_deployment = true;
          if (saw_device && saw_deployment) return Error(ErrorCode::kUnavailable, "enough");
          return Status::Ok();
        });
  });
  ASSERT_EQ(connected.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const std::string dep = CreateRunning({{"devices", {"dev-a"}}});
  Events("dev-a", tok,
         json::array(
             {json{{"seq", 1}, {"deployment_id", dep}, {"state", "downloading"}, {"bytes", 10}}}));
  const double until = Now() + 10;
  while (!(saw_device && saw_deployment) && Now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(saw_device);
  EXPECT_TRUE(saw_deployment);
  if (!(saw_device && saw_deployment)) deploy_->Stop();  // Ends the stream: the reader returns.
  reader.join();
  EXPECT_EQ(content_type.rfind("text/event-stream", 0), 0u) << content_type;
  // Without the admin token: no stream.
  EXPECT_EQ(Call("GET", "/v1/events?token=wrong", "").status, 401);
}

TEST_F(DeployHttpTest, StopAnswersParkedPollsAndEndsStreams) {
  const std::string tok = EnrolHttp("dev-a");
  auto poll = std::async(std::launch::async, [&] {
    return Call("GET", "/v1/devices/dev-a/instructions?wait=60", tok);
  });
  std::atomic<bool> stream_ended{false};
  std::thread reader([&] {
    net::Client c;
    (void)c.GetStream(url_ + "/v1/events?token=" + admin_,
                      [&](int, ByteView) { return Status::Ok(); });
    stream_ended = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const double t0 = Now();
  deploy_->Stop();
  ASSERT_EQ(poll.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(json::parse(poll.get().body)["instructions"].size(), 0u);
  reader.join();
  EXPECT_TRUE(stream_ended);
  EXPECT_LT(Now() - t0, 10);
}

TEST_F(DeployHttpTest, DashboardIsServedFromTheBinary) {
  net::ClientResponse r = Call("GET", "/dashboard", "");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(std::string(r.Header("content-type")).rfind("text/html", 0), 0u);
  EXPECT_NE(r.body.find("/dashboard/app.js"), std::string::npos);
  r = Call("GET", "/dashboard/app.js", "");
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("EventSource"), std::string::npos);
  EXPECT_EQ(Call("GET", "/dashboard/style.css", "").status, 200);
  EXPECT_EQ(Call("GET", "/dashboard/nope.js", "").status, 404);
}

}  // namespace
}  // namespace ds::testing
