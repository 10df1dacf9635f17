// The deployment service's HTTP routes (docs/DEPLOY.md): device routes with per-device tokens and
// the parked long poll, operator routes with the admin token, Server-Sent Events and the
// dashboard's static files (compiled into the binary: dashboard_assets.h).
#include <openssl/crypto.h>

#include <chrono>
#include <cstdlib>

#include "deploy/dashboard_assets.h"
#include "deploy/deploy_impl.h"

namespace ds::deploy {
namespace {

std::string_view BearerOf(const net::Request& req) {
  std::string_view h = req.Header("authorization");
  constexpr std::string_view kBearer = "Bearer ";
  if (h.size() > kBearer.size() && h.substr(0, kBearer.size()) == kBearer) {
    return h.substr(kBearer.size());
  }
  return {};
}

net::Response JsonOr(const Result<std::string>& r, int status = 200) {
  if (!r.ok()) return net::Response::FromStatus(r.status());
  return net::Response::Json(status, *r);
}

double SteadyNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Status DeployImpl::CheckAdmin(const net::Request& req) {
  std::string token(BearerOf(req));
  // EventSource cannot set headers: GET routes also take ?token=.
  if (token.empty() && (req.method == "GET" || req.method == "HEAD")) {
    token = req.QueryParam("token").value_or("");
  }
  if (token.empty()) {
    return Error(ErrorCode::kUnauthenticated, "an admin token is required (Authorization: Bearer)");
  }
  return opt_.check_admin(token);
}

Result<std::string> DeployImpl::DeviceFromRequest(const net::Request& req) {
  auto it = req.params.find("id");
  if (it == req.params.end()) return Error(ErrorCode::kInvalidArgument, "no device id");
  DS_RETURN_IF_ERROR(AuthorizeDevice(BearerOf(req), it->second));
  return it->second;
}

void DeployImpl::HandleInstructions(net::Request& req, net::Responder responder) {
  Result<std::string> dev = DeviceFromRequest(req);
  if (!dev.ok()) return responder.Send(net::Response::FromStatus(dev.status()));
  int wait = 25;
  if (std::optional<std::string> w = req.QueryParam("wait")) {
    char* end = nullptr;
    const long v = std::strtol(w->c_str(), &end, 10);
    if (w->empty() || *end != '\0' || v < 0 || v > 60) {
      return responder.Send(net::Response::FromStatus(
          Error(ErrorCode::kInvalidArgument, "wait: seconds from 0 to 60")));
    }
    wait = static_cast<int>(v);
  }
  std::lock_guard<std::mutex> lock(mu_);
  json list;
  try {
    list = InstructionsLocked(*dev);
  } catch (const std::exception& e) {
    return responder.Send(net::Response::FromStatus(
        Error(ErrorCode::kIoError, std::string("deploy store: ") + e.what())));
  }
  if (!list.empty() || wait == 0 || stopping_) {
    return responder.Send(net::Response::Json(200, json{{"instructions", list}}.dump()));
  }
  // Parked without a worker thread: answered when an instruction appears (NotifyDevicesLocked)
  // or when the wait is over (the timer).
  parked_[*dev].push_back({std::move(responder), SteadyNow() + wait});
}

void DeployImpl::Register(net::Server& server) {
  server.Route("POST", "/v1/devices/enroll",
               [this](net::Request& req) { return JsonOr(Enroll(req.body)); });
  server.Route("POST", "/v1/devices/{id}/heartbeat", [this](net::Request& req) {
    Result<std::string> dev = DeviceFromRequest(req);
    if (!dev.ok()) return net::Response::FromStatus(dev.status());
    Status s = Heartbeat(*dev, req.body);
    if (!s.ok()) return net::Response::FromStatus(s);
    return net::Response::Json(200, R"({"ok":true})");
  });
  server.AsyncRoute(
      "GET", "/v1/devices/{id}/instructions",
      [this](net::Request& req, net::Responder r) { HandleInstructions(req, std::move(r)); });
  server.Route("POST", "/v1/devices/{id}/events", [this](net::Request& req) {
    Result<std::string> dev = DeviceFromRequest(req);
    if (!dev.ok()) return net::Response::FromStatus(dev.status());
    return JsonOr(PostEvents(*dev, req.body));
  });
  server.Route("GET", "/v1/devices", [this](net::Request& req) {
    if (Status s = CheckAdmin(req); !s.ok()) return net::Response::FromStatus(s);
    return JsonOr(ListDevices());
  });
  server.Route("POST", "/v1/deployments", [this](net::Request& req) {
    if (Status s = CheckAdmin(req); !s.ok()) return net::Response::FromStatus(s);
    Result<std::string> r = CreateDeployment(req.body);
    net::Response res = JsonOr(r, 201);
    if (r.ok()) {
      const json j = json::parse(*r, nullptr, false);
      if (j.is_object()) res.With("Location", "/v1/deployments/" + j.value("id", ""));
    }
    return res;
  });
  server.Route("GET", "/v1/deployments", [this](net::Request& req) {
    if (Status s = CheckAdmin(req); !s.ok()) return net::Response::FromStatus(s);
    return JsonOr(ListDeployments());
  });
  server.Route("GET", "/v1/deployments/{id}", [this](net::Request& req) {
    if (Status s = CheckAdmin(req); !s.ok()) return net::Response::FromStatus(s);
    return JsonOr(GetDeployment(req.params["id"]));
  });
  server.Route("POST", "/v1/deployments/{id}/{action}", [this](net::Request& req) {
    if (Status s = CheckAdmin(req); !s.ok()) return net::Response::FromStatus(s);
    return JsonOr(Act(req.params["id"], req.params["action"]));
  });
  server.Route("GET", "/v1/events", [this](net::Request& req) {
    if (Status s = CheckAdmin(req); !s.ok()) return net::Response::FromStatus(s);
    std::shared_ptr<net::BodyStream> stream;
    net::Response res = net::Response::Streamed(200, "text/event-stream", &stream);
    res.With("X-Accel-Buffering", "no");
    stream->Write("retry: 2000\n: deltastream deployment events\n\n");
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::lock_guard<std::mutex> streams_lock(sse_mu_);
      if (stopped_ || stopping_) {
        stream->Close();
      } else {
        streams_.push_back(stream);
      }
    }
    return res;
  });
  auto serve_asset = [](std::string_view name) {
    for (size_t i = 0; i < kDashboardAssetCount; ++i) {
      const DashboardAsset& a = kDashboardAssets[i];
      if (name == a.name) {
        net::Response r = net::Response::Text(
            200, std::string(reinterpret_cast<const char*>(a.data), a.size), a.content_type);
        r.With("Cache-Control", "no-cache");
        return r;
      }
    }
    return net::Response::FromStatus(Error(ErrorCode::kNotFound, "no such dashboard file"));
  };
  server.Route("GET", "/dashboard",
               [serve_asset](net::Request&) { return serve_asset("index.html"); });
  server.Route("GET", "/dashboard/{file}",
               [serve_asset](net::Request& req) { return serve_asset(req.params["file"]); });
}

}  // namespace ds::deploy
