// Shared by the agent's tests: synthetic artifact versions, a real master with them published,
// and the real deltastream-agent binary run against it.
#ifndef DELTASTREAM_TESTS_AGENT_AGENT_FIXTURE_H_
#define DELTASTREAM_TESTS_AGENT_AGENT_FIXTURE_H_

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "support/process_util.h"
#include "support/test_util.h"

namespace ds::testing {

inline const std::string kDs = DS_CLI_PATH;
inline const std::string kAgent = DS_AGENT_PATH;

// Version 1: |size| pseudo-random bytes. Version 2: version 1 with |edits| scattered blocks of
// |edit_size| fresh random bytes (incompressible, so the delta is about edits * edit_size).
inline std::pair<Bytes, Bytes> MakeVersions(size_t size, int edits, size_t edit_size,
                                            uint64_t seed = 7) {
  std::mt19937_64 rng(seed);
  Bytes v1(size);
  for (size_t i = 0; i < size; i += 8) {
    const uint64_t r = rng();
    for (size_t k = 0; k < 8 && i + k < size; ++k) v1[i + k] = static_cast<uint8_t>(r >> (8 * k));
  }
  Bytes v2 = v1;
  for (int e = 0; e < edits; ++e) {
    const size_t at = (size / edits) * e + (rng() % (size / edits / 2));
    for (size_t k = 0; k < edit_size && at + k < size; ++k)
      v2[at + k] = static_cast<uint8_t>(rng());
  }
  return {v1, v2};
}

inline std::string Sha(const Bytes& b) { return ToHex(Sha256::Of(b)); }

inline std::string FileSha(const std::string& path) {
  Result<Bytes> b = ReadFile(path);
  return b.ok() ? Sha(*b) : std::string();
}

inline void WriteExecutable(const std::string& path, const Bytes& data) {
  ASSERT_TRUE(WriteFileAtomic(path, data, 0755).ok());
}

// A master with artifact "app" at 1.0.0 and 2.0.0 and the delta between them ready.
class PublishedMaster {
 public:
  PublishedMaster(const TempDir& dir, const Bytes& v1, const Bytes& v2, ServerLaunch launch = {},
                  std::vector<std::string> serve_args = {})
      : dir_(dir), prefix_(launch.prefix) {
    WriteExecutable(dir.Join("v1"), v1);
    WriteExecutable(dir.Join("v2"), v2);
    server_ = std::make_unique<ServerProcess>(kDs, dir.Join("master"), dir.Join("master.log"),
                                              std::move(serve_args), launch);
    if (server_->url().empty()) return;
    const std::vector<std::string> client = {"--server", server_->url(), "--token-file",
                                             dir.Join("master/admin.token")};
    auto publish = [&](const std::string& version, const std::string& file, bool wait) {
      std::vector<std::string> args = {"publish"};
      args.insert(args.end(), client.begin(), client.end());
      args.insert(args.end(), {"--artifact", "app", "--version", version, file});
      if (wait) args.push_back("--wait");
      RunResult r = RunProgram(kDs, dir_, args, prefix_);
      EXPECT_EQ(r.exit_code, 0) << r.err;
    };
    publish("1.0.0", dir.Join("v1"), false);
    publish("2.0.0", dir.Join("v2"), true);
    Result<Bytes> key = ReadFile(dir.Join("master/keys/signing.pub"));
    if (key.ok()) public_key_.assign(key->begin(), key->end());
    while (!public_key_.empty() && (public_key_.back() == '\n')) public_key_.pop_back();
  }

  const std::string& url() const { return server_->url(); }
  const std::string& public_key() const { return public_key_; }
  ServerProcess& server() { return *server_; }

  // The signed part of the metadata, verified by `deltastream metadata`.
  nlohmann::json Metadata() const {
    RunResult r = RunProgram(kDs, dir_,
                             {"metadata", "--server", url(), "--public-key",
                              dir_.Join("master/keys/signing.pub"), "app"},
                             prefix_);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out);
  }

 private:
  const TempDir& dir_;
  std::vector<std::string> prefix_;  // Runs the CLI where the server is (a namespace).
  std::unique_ptr<ServerProcess> server_;
  std::string public_key_;
};

// Writes an agent configuration file and returns its path.
inline std::string WriteAgentConfig(const TempDir& dir, const std::vector<std::string>& proxies,
                                    const std::string& public_key, const std::string& install,
                                    const std::string& extra_artifact_json = "",
                                    const std::string& extra_top_json = "") {
  nlohmann::json art = {{"install_path", install}};
  if (!extra_artifact_json.empty()) art.update(nlohmann::json::parse(extra_artifact_json));
  nlohmann::json c = {
      {"proxies", proxies},       {"public_key", public_key}, {"state_dir", dir.Join("state")},
      {"backoff_initial_ms", 50}, {"backoff_max_ms", 400},    {"artifacts", {{"app", art}}}};
  if (!extra_top_json.empty()) c.update(nlohmann::json::parse(extra_top_json));
  const std::string path = dir.Join("agent.json");
  EXPECT_TRUE(WriteFileAtomic(path, AsBytes(c.dump(2)), 0600).ok());
  return path;
}

// The JSON lines of an agent run's stdout.
inline std::vector<nlohmann::json> JsonLines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  size_t start = 0;
  while (start < out.size()) {
    size_t end = out.find('\n', start);
    if (end == std::string::npos) end = out.size();
    // Error messages on stderr may be interleaved when both go to one log.
    if (end > start && out[start] == '{') {
      lines.push_back(nlohmann::json::parse(out.substr(start, end - start)));
    }
    start = end + 1;
  }
  return lines;
}

inline nlohmann::json Last(const std::vector<nlohmann::json>& lines, const std::string& event) {
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if ((*it)["event"] == event) return *it;
  }
  return nlohmann::json();
}

}  // namespace ds::testing

#endif  // DELTASTREAM_TESTS_AGENT_AGENT_FIXTURE_H_
