// Content-addressed blob store (internal to src/repo): blobs/ab/cd/<sha256>, written through
// tmp/ (stream, hash, fsync, rename, fsync the directory).
//
// Thread-safety: BlobStore is thread-safe (it has no mutable state beyond the filesystem);
// uploads are single-threaded.
#ifndef DELTASTREAM_REPO_BLOB_STORE_H_
#define DELTASTREAM_REPO_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/bytes.h"
#include "common/status.h"
#include "repo/repo.h"

namespace ds::repo {

// True for exactly 64 lowercase hex digits.
bool IsSha256Hex(std::string_view s);
// <root>/blobs/ab/cd/<sha256>.
std::string BlobPath(const std::string& root, std::string_view sha256);

class BlobStore {
 public:
  // Creates <root>/blobs and <root>/tmp when missing and empties tmp/ (leftovers of a crash:
  // nothing in tmp/ is ever referenced).
  static Result<std::unique_ptr<BlobStore>> Open(const std::string& root);

  Result<std::unique_ptr<Upload>> BeginUpload(std::optional<std::string> declared_sha256,
                                              std::optional<uint64_t> declared_size) const;
  // Stores |data| (an upload in one piece); returns its hex SHA-256.
  Result<std::string> Put(ByteView data) const;
  // kInvalidArgument for a malformed name, kNotFound when absent.
  Result<BlobRef> Find(std::string_view sha256) const;
  std::string PathOf(std::string_view sha256) const;

 private:
  explicit BlobStore(std::string root) : root_(std::move(root)) {}
  std::string root_;
};

}  // namespace ds::repo

#endif  // DELTASTREAM_REPO_BLOB_STORE_H_
