// Signed release metadata: Ed25519 over the canonical "signed" object, expiry, rollback.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "common/fs.h"
#include "common/hash.h"
#include "repo/repo.h"
#include "repo_test_util.h"
#include "support/test_util.h"

namespace ds::repo {
namespace {

using ::ds::testing::CodeOf;
using ::ds::testing::TempDir;
using nlohmann::json;
using testing::BinaryImage;
using testing::EditImage;
using testing::OpenOrDie;
using testing::PublishBytes;
using testing::TestOptions;

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)); }

std::string ReadText(const std::string& path) {
  const Bytes b = ReadFile(path).value();
  return std::string(b.begin(), b.end());
}

uint64_t CounterOf(const std::string& envelope) {
  return json::parse(envelope)["signed"]["counter"].get<uint64_t>();
}

class SigningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RepoOptions o = TestOptions(dir_.path());
    o.metadata_ttl_seconds = 3600;
    repo_ = OpenOrDie(o);
    ASSERT_NE(repo_, nullptr);
    v1_ = BinaryImage(200 << 10, 11);
    v2_ = EditImage(v1_, 12);
    ASSERT_TRUE(PublishBytes(repo_.get(), "app", "1.0.0", v1_).ok());
    ASSERT_TRUE(PublishBytes(repo_.get(), "app", "1.1.0", v2_).ok());
    ASSERT_TRUE(repo_->RunJobsOnce().ok());
  }

  TempDir dir_;
  std::unique_ptr<Repository> repo_;
  Bytes v1_, v2_;
};

TEST_F(SigningTest, MetadataVerifiesWithThePublicKey) {
  Result<std::string> envelope = repo_->SignedMetadata("app");
  ASSERT_TRUE(envelope.ok()) << envelope.status().ToString();
  Result<std::string> canonical = VerifyMetadata(*envelope, repo_->public_key_hex(), Now(), 0);
  ASSERT_TRUE(canonical.ok()) << canonical.status().ToString();

  const json doc = json::parse(*envelope);
  EXPECT_EQ(doc["signed"].dump(), *canonical);
  ASSERT_EQ(doc["signatures"].size(), 1u);
  EXPECT_EQ(doc["signatures"][0]["keyid"], repo_->key_id());
  EXPECT_EQ(doc["signatures"][0]["sig"].get<std::string>().size(), 128u);

  const json s = json::parse(*canonical);
  EXPECT_EQ(s["_type"], "deltastream-release");
  EXPECT_EQ(s["spec_version"], 1);
  EXPECT_EQ(s["artifact"], "app");
  EXPECT_EQ(s["latest"], "1.1.0");
  EXPECT_GT(s["expires"].get<int64_t>(), s["signed_at"].get<int64_t>());
  ASSERT_EQ(s["versions"].size(), 2u);
  EXPECT_EQ(s["versions"][0]["version"], "1.0.0");
  EXPECT_EQ(s["versions"][0]["length"], v1_.size());
  EXPECT_EQ(s["versions"][0]["sha256"], ToHex(Sha256::Of(v1_)));
  EXPECT_EQ(s["versions"][1]["seq"], 2);
  ASSERT_EQ(s["deltas"].size(), 1u);
  const json& d = s["deltas"][0];
  EXPECT_EQ(d["from"], "1.0.0");
  EXPECT_EQ(d["to"], "1.1.0");
  EXPECT_EQ(d["format"], "dspf");
  EXPECT_EQ(d["base_sha256"], ToHex(Sha256::Of(v1_)));
  EXPECT_EQ(d["result_sha256"], ToHex(Sha256::Of(v2_)));
  const DeltaInfo info = repo_->GetDelta(d["id"].get<int64_t>()).value();
  EXPECT_EQ(d["sha256"], info.sha256);
  EXPECT_EQ(d["length"], info.size);

  // The key id is the SHA-256 of the public key bytes; signing.pub holds the public key.
  Bytes pub;
  for (size_t i = 0; i < 64; i += 2) {
    pub.push_back(
        static_cast<uint8_t>(std::stoi(repo_->public_key_hex().substr(i, 2), nullptr, 16)));
  }
  EXPECT_EQ(ToHex(Sha256::Of(pub)), repo_->key_id());
  EXPECT_EQ(ReadText(dir_.Join("keys/signing.pub")), repo_->public_key_hex() + "\n");
  struct stat st;
  ASSERT_EQ(::stat(dir_.Join("keys/signing.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // Whitespace and key order in transit do not matter: the canonical text is rebuilt.
  EXPECT_TRUE(VerifyMetadata(doc.dump(2), repo_->public_key_hex(), Now(), 0).ok());
}

TEST_F(SigningTest, TamperingOrAnotherKeyIsRejected) {
  const std::string envelope = repo_->SignedMetadata("app").value();
  const std::string key = repo_->public_key_hex();

  json doc = json::parse(envelope);
  doc["signed"]["versions"][0]["length"] = 1;
  EXPECT_EQ(CodeOf(VerifyMetadata(doc.dump(), key, Now(), 0)), ErrorCode::kBadSignature);

  doc = json::parse(envelope);
  doc["signed"]["latest"] = "1.0.0";
  EXPECT_EQ(CodeOf(VerifyMetadata(doc.dump(), key, Now(), 0)), ErrorCode::kBadSignature);

  doc = json::parse(envelope);
  doc["signed"]["extra"] = true;
  EXPECT_EQ(CodeOf(VerifyMetadata(doc.dump(), key, Now(), 0)), ErrorCode::kBadSignature);

  doc = json::parse(envelope);
  std::string sig = doc["signatures"][0]["sig"];
  sig[5] = sig[5] == 'a' ? 'b' : 'a';
  doc["signatures"][0]["sig"] = sig;
  EXPECT_EQ(CodeOf(VerifyMetadata(doc.dump(), key, Now(), 0)), ErrorCode::kBadSignature);

  doc = json::parse(envelope);
  doc["signatures"] = json::array();
  EXPECT_EQ(CodeOf(VerifyMetadata(doc.dump(), key, Now(), 0)), ErrorCode::kBadSignature);

  TempDir other;
  ASSERT_TRUE(GenerateKeyPair(other.Join("k.key"), other.Join("k.pub")).ok());
  std::string other_key = ReadText(other.Join("k.pub"));
  EXPECT_EQ(CodeOf(VerifyMetadata(envelope, other_key, Now(), 0)), ErrorCode::kBadSignature);
  // The right signature under a claimed key id does not help: the pinned key decides.
  doc = json::parse(envelope);
  doc["signatures"][0]["keyid"] = "00";
  EXPECT_EQ(CodeOf(VerifyMetadata(doc.dump(), key, Now(), 0)), ErrorCode::kBadSignature);

  EXPECT_EQ(CodeOf(VerifyMetadata("not json", key, Now(), 0)), ErrorCode::kProtocol);
  EXPECT_EQ(CodeOf(VerifyMetadata("{\"signed\":{}}", key, Now(), 0)), ErrorCode::kProtocol);
  EXPECT_EQ(CodeOf(VerifyMetadata("[1,2]", key, Now(), 0)), ErrorCode::kProtocol);
  EXPECT_EQ(CodeOf(VerifyMetadata(envelope, "abcd", Now(), 0)), ErrorCode::kInvalidArgument);
}

TEST_F(SigningTest, ExpiredMetadataIsRejected) {
  const std::string envelope = repo_->SignedMetadata("app").value();
  const int64_t expires = json::parse(envelope)["signed"]["expires"].get<int64_t>();
  EXPECT_TRUE(VerifyMetadata(envelope, repo_->public_key_hex(), expires - 1, 0).ok());
  EXPECT_EQ(CodeOf(VerifyMetadata(envelope, repo_->public_key_hex(), expires, 0)),
            ErrorCode::kExpired);
  EXPECT_EQ(CodeOf(VerifyMetadata(envelope, repo_->public_key_hex(), Now() + 7200, 0)),
            ErrorCode::kExpired);
}

TEST_F(SigningTest, CounterGrowsAndRollbackIsRejected) {
  const std::string first = repo_->SignedMetadata("app").value();
  const uint64_t c1 = CounterOf(first);
  // Publish 1.0.0 (1), publish 1.1.0 (2), the delta became ready (3).
  EXPECT_EQ(c1, 3u);
  // Fresh metadata is served as stored, not re-signed.
  EXPECT_EQ(repo_->SignedMetadata("app").value(), first);

  ASSERT_TRUE(PublishBytes(repo_.get(), "app", "1.2.0", EditImage(v2_, 13)).ok());
  const std::string second = repo_->SignedMetadata("app").value();
  const uint64_t c2 = CounterOf(second);
  EXPECT_EQ(c2, c1 + 1);
  EXPECT_EQ(json::parse(second)["signed"]["latest"], "1.2.0");

  const std::string key = repo_->public_key_hex();
  EXPECT_TRUE(VerifyMetadata(second, key, Now(), c2).ok());
  EXPECT_TRUE(VerifyMetadata(second, key, Now(), c1).ok());
  EXPECT_EQ(CodeOf(VerifyMetadata(first, key, Now(), c2)), ErrorCode::kRollback);
  EXPECT_EQ(CodeOf(VerifyMetadata(second, key, Now(), c2 + 1)), ErrorCode::kRollback);

  // Counters survive a restart and keep growing.
  repo_.reset();
  repo_ = OpenOrDie(TestOptions(dir_.path()));
  ASSERT_NE(repo_, nullptr);
  EXPECT_EQ(CounterOf(repo_->SignedMetadata("app").value()), c2);
  ASSERT_TRUE(repo_->RunJobsOnce().ok());
  EXPECT_GT(CounterOf(repo_->SignedMetadata("app").value()), c2);
  EXPECT_EQ(CodeOf(repo_->SignedMetadata("unknown")), ErrorCode::kNotFound);
}

TEST(SigningRefreshTest, MetadataIsResignedAfterHalfItsLifetime) {
  TempDir dir;
  RepoOptions o = TestOptions(dir.path());
  o.metadata_ttl_seconds = 1;  // Half-life 0: stale as soon as the clock ticks.
  auto repo = OpenOrDie(o);
  ASSERT_NE(repo, nullptr);
  ASSERT_TRUE(PublishBytes(repo.get(), "app", "1.0.0", BinaryImage(1000, 1)).ok());
  const std::string first = repo->SignedMetadata("app").value();
  const int64_t signed_at = json::parse(first)["signed"]["signed_at"].get<int64_t>();
  while (Now() <= signed_at) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const std::string second = repo->SignedMetadata("app").value();
  EXPECT_EQ(CounterOf(second), CounterOf(first) + 1);
  EXPECT_GT(json::parse(second)["signed"]["expires"].get<int64_t>(),
            json::parse(first)["signed"]["expires"].get<int64_t>());
  EXPECT_TRUE(VerifyMetadata(second, repo->public_key_hex(), Now(), CounterOf(first)).ok());
}

TEST(SigningKeyTest, GeneratedKeyIsUsedAndCorruptKeyRefused) {
  TempDir dir;
  ASSERT_TRUE(GenerateKeyPair(dir.Join("release.key"), dir.Join("release.pub")).ok());
  struct stat st;
  ASSERT_EQ(::stat(dir.Join("release.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(ReadText(dir.Join("release.key")).size(), 129u);  // 128 hex + newline.
  const std::string pub = ReadText(dir.Join("release.pub"));
  EXPECT_EQ(pub.size(), 65u);

  RepoOptions o = TestOptions(dir.Join("repo"));
  o.signing_key_path = dir.Join("release.key");
  auto repo = OpenOrDie(o);
  ASSERT_NE(repo, nullptr);
  EXPECT_EQ(repo->public_key_hex() + "\n", pub);
  ASSERT_TRUE(PublishBytes(repo.get(), "app", "1.0.0", BinaryImage(1000, 1)).ok());
  EXPECT_TRUE(VerifyMetadata(repo->SignedMetadata("app").value(), pub, Now(), 0).ok());
  repo.reset();

  // A missing custom key is created with its public half beside it.
  o.signing_key_path = dir.Join("new/custom.key");
  repo = OpenOrDie(o);
  ASSERT_NE(repo, nullptr);
  EXPECT_EQ(ReadText(dir.Join("new/custom.pub")), repo->public_key_hex() + "\n");
  repo.reset();

  ::ds::testing::WriteFileOrDie(dir.Join("bad.key"), AsBytes(std::string(128, 'z')));
  o.signing_key_path = dir.Join("bad.key");
  EXPECT_EQ(CodeOf(Repository::Open(o)), ErrorCode::kInvalidArgument);
  // A well-formed hex key whose public half does not match its seed.
  std::string text = ReadText(dir.Join("release.key"));
  text[127] = text[127] == '0' ? '1' : '0';
  ::ds::testing::WriteFileOrDie(dir.Join("bad.key"), AsBytes(text));
  EXPECT_EQ(CodeOf(Repository::Open(o)), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace ds::repo
