// Helpers shared by the repository tests: options, uploads, and versions of a binary-like file.
#ifndef DELTASTREAM_TESTS_REPO_REPO_TEST_UTIL_H_
#define DELTASTREAM_TESTS_REPO_REPO_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/hash.h"
#include "repo/repo.h"
#include "support/test_util.h"

namespace ds::repo::testing {

using ::ds::testing::RandomBytes;
using ::ds::testing::TextBytes;

// Jobs run only when the test says so (RunJobsOnce).
inline RepoOptions TestOptions(const std::string& dir) {
  RepoOptions o;
  o.data_dir = dir;
  o.start_workers = false;
  o.job_workers = 1;
  return o;
}

inline std::unique_ptr<Repository> OpenOrDie(const RepoOptions& o) {
  Result<std::unique_ptr<Repository>> r = Repository::Open(o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : nullptr;
}

// Uploads |data| in 64 KiB pieces with its size and hash declared; returns the blob name.
inline Result<std::string> Store(Repository* repo, ByteView data) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<Upload> up,
                      repo->BeginUpload(ToHex(Sha256::Of(data)), data.size()));
  for (size_t pos = 0; pos < data.size(); pos += 64 << 10) {
    DS_RETURN_IF_ERROR(up->Write(data.subspan(pos, std::min<size_t>(64 << 10, data.size() - pos))));
  }
  return up->Commit();
}

inline Result<PublishResult> PublishBytes(Repository* repo, const std::string& artifact,
                                          const std::string& version, ByteView data) {
  DS_ASSIGN_OR_RETURN(std::string sha, Store(repo, data));
  PublishRequest req;
  req.artifact = artifact;
  req.version = version;
  req.publisher = "test";
  return repo->Publish(req, sha);
}

// A binary-like image: runs of text (strings tables), structured records and random bytes.
inline Bytes BinaryImage(size_t n, uint64_t seed) {
  Bytes out;
  out.reserve(n + 4096);
  uint64_t part = 0;
  while (out.size() < n) {
    const size_t len = 2048 + (seed * 7919 + part * 104729) % 8192;
    Bytes piece;
    switch (part % 3) {
      case 0:
        piece = TextBytes(len, seed * 131 + part);
        break;
      case 1:
        piece.resize(len);
        for (size_t i = 0; i < len; ++i) {
          piece[i] = static_cast<uint8_t>((i % 16 < 4) ? (part + i / 16) & 0xff : i % 16);
        }
        break;
      default:
        piece = RandomBytes(len, seed * 977 + part);
    }
    out.insert(out.end(), piece.begin(), piece.end());
    ++part;
  }
  out.resize(n);
  return out;
}

// The next "release": a few ranges rewritten, a block inserted and one removed.
inline Bytes EditImage(const Bytes& in, uint64_t seed) {
  Bytes out = in;
  for (int i = 0; i < 8; ++i) {
    const size_t pos = (seed * 2654435761u + i * 40503u * 977u) % (out.size() - 512);
    const Bytes patch = RandomBytes(64 + i * 16, seed * 10 + i);
    std::copy(patch.begin(), patch.end(), out.begin() + pos);
  }
  const Bytes inserted = TextBytes(3000, seed + 99);
  out.insert(out.begin() + out.size() / 3, inserted.begin(), inserted.end());
  const size_t cut = out.size() * 2 / 3;
  out.erase(out.begin() + cut, out.begin() + cut + 2000);
  return out;
}

// Regular files under |dir|, recursively (relative paths, sorted).
inline std::vector<std::string> FilesUnder(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file()) {
      out.push_back(std::filesystem::relative(it->path(), dir).string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace ds::repo::testing

#endif  // DELTASTREAM_TESTS_REPO_REPO_TEST_UTIL_H_
