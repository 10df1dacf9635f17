// The deployment service in `deltastream serve` (with --role master, or alone with --role deploy)
// and the operator's `deltastream deploy create|list|show|pause|resume|cancel|retry`
// (docs/DEPLOY.md).
#ifndef DELTASTREAM_CLI_DEPLOY_COMMANDS_H_
#define DELTASTREAM_CLI_DEPLOY_COMMANDS_H_

#include <signal.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cli/repo_commands.h"
#include "common/status.h"
#include "deploy/deploy.h"

namespace CLI {
class App;
}

namespace ds::cli {

// Opens the deployment service for `serve` under args.data_dir: the enrolment token comes from
// --enroll-token-file, else <data_dir>/enroll.token (made, 0600, on first start).
Result<std::unique_ptr<deploy::Deploy>> OpenDeployService(
    const ServeArgs& args, std::function<Status(std::string_view)> check_admin);

// "http(s)://host:port" of a server listening on |host|:|port| (a wildcard host names loopback).
std::string SelfUrl(const ServeArgs& args, const std::string& host, uint16_t port);

// `serve --role deploy`: the deployment service alone, against --repo; its own admin token in
// <data_dir>/admin.token (made on first start). Runs until a signal in |stop| arrives.
Status RunDeployRole(const ServeArgs& args, const std::string& host, uint16_t port,
                     const sigset_t& stop);

struct DeployCliArgs : ClientArgs {
  std::string action;  // create, list, show, pause, resume, cancel, retry
  std::string id;
  std::string artifact, version;
  std::vector<std::string> labels;   // k=v, ANDed
  std::vector<std::string> devices;  // device ids
  std::string waves = "100%";        // comma-separated counts and percentages
  double success_threshold = 1.0;
  double failure_threshold = 0.0;
  bool no_prefer_delta = false;
  std::string carrier = "http";
  std::string fallback = "full";
  bool json = false;
};

// Adds the `deploy` subcommand with its actions; RunDeploy runs the parsed one.
CLI::App* AddDeployCommand(CLI::App& app, DeployCliArgs* args);
Status RunDeploy(const DeployCliArgs& args);

}  // namespace ds::cli

#endif  // DELTASTREAM_CLI_DEPLOY_COMMANDS_H_
