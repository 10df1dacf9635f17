#include "repo/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include "common/hash.h"

namespace ds::repo {
namespace {

Status FsyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open directory " + dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoStatus("fsync directory " + dir, err);
  return Status::Ok();
}

// mkdir that tolerates an existing directory; a new directory's entry is made durable by
// fsyncing its parent, or a later rename into it could be lost with it.
Status MakeDirDurable(const std::string& parent, const std::string& name) {
  const std::string path = parent + "/" + name;
  if (::mkdir(path.c_str(), 0755) == 0) return FsyncDir(parent);
  if (errno == EEXIST) return Status::Ok();
  return ErrnoStatus("mkdir " + path, errno);
}

class BlobUpload : public Upload {
 public:
  BlobUpload(std::string dest_root, int fd, std::string temp_path,
             std::optional<std::string> declared_sha256, std::optional<uint64_t> declared_size)
      : dest_root_(std::move(dest_root)),
        fd_(fd),
        temp_path_(std::move(temp_path)),
        declared_sha256_(std::move(declared_sha256)),
        declared_size_(declared_size) {}
  ~BlobUpload() override { Discard(); }

  Status Write(ByteView data) override {
    if (!status_.ok()) return status_;
    if (fd_ < 0) return Error(ErrorCode::kInternal, "upload write after commit");
    if (declared_size_ && written_ + data.size() > *declared_size_) {
      return Fail(Error(
          ErrorCode::kDigestMismatch,
          "upload is longer than the declared " + std::to_string(*declared_size_) + " bytes"));
    }
    hasher_.Update(data);
    const uint8_t* p = data.data();
    size_t n = data.size();
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return Fail(ErrnoStatus("write upload", errno));
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    written_ += data.size();
    return Status::Ok();
  }

  Result<std::string> Commit() override {
    if (!status_.ok()) return status_;
    if (fd_ < 0) return Error(ErrorCode::kInternal, "upload committed twice");
    const std::string digest = ToHex(hasher_.Finish());
    if (declared_size_ && written_ != *declared_size_) {
      return Fail(Error(ErrorCode::kDigestMismatch, "upload has " + std::to_string(written_) +
                                                        " bytes, declared " +
                                                        std::to_string(*declared_size_)));
    }
    if (declared_sha256_ && *declared_sha256_ != digest) {
      return Fail(
          Error(ErrorCode::kDigestMismatch,
                "upload SHA-256 " + digest + " differs from the declared " + *declared_sha256_));
    }
    if (::fchmod(fd_, 0644) != 0) return Fail(ErrnoStatus("chmod upload", errno));
    if (::fsync(fd_) != 0) return Fail(ErrnoStatus("fsync upload", errno));
    ::close(fd_);
    fd_ = -1;
    Status s = Install(digest);
    if (!s.ok()) return Fail(s);
    installed_ = true;
    return digest;
  }

  uint64_t bytes_written() const override { return written_; }

 private:
  // Moves the fsynced temp file to its content address. An existing blob of the same size is
  // the same bytes (its name is their hash and it only appeared by rename after fsync): dedupe.
  Status Install(const std::string& digest) {
    const std::string dest = BlobPath(dest_root_, digest);
    const std::string blobs = dest.substr(0, dest.size() - 64 - 7);  // Strip "ab/cd/<hex>".
    DS_RETURN_IF_ERROR(MakeDirDurable(blobs, digest.substr(0, 2)));
    const std::string level1 = blobs + "/" + digest.substr(0, 2);
    DS_RETURN_IF_ERROR(MakeDirDurable(level1, digest.substr(2, 2)));
    struct stat st;
    if (::stat(dest.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        static_cast<uint64_t>(st.st_size) == written_) {
      ::unlink(temp_path_.c_str());
      return Status::Ok();
    }
    if (::rename(temp_path_.c_str(), dest.c_str()) != 0) {
      return ErrnoStatus("rename upload to " + dest, errno);
    }
    return FsyncDir(level1 + "/" + digest.substr(2, 2));
  }

  // Records the first failure and frees the disk space at once (ENOSPC must not linger).
  Status Fail(Status s) {
    status_ = s;
    Discard();
    return s;
  }

  void Discard() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    if (!installed_ && !discarded_) {
      ::unlink(temp_path_.c_str());
      discarded_ = true;
    }
  }

  std::string dest_root_;  // A copy: the upload may outlive the store.
  int fd_;
  std::string temp_path_;
  std::optional<std::string> declared_sha256_;
  std::optional<uint64_t> declared_size_;
  Sha256 hasher_;
  uint64_t written_ = 0;
  Status status_;
  bool installed_ = false;
  bool discarded_ = false;
};

}  // namespace

bool IsSha256Hex(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

Result<std::unique_ptr<BlobStore>> BlobStore::Open(const std::string& root) {
  for (const char* sub : {"blobs", "tmp"}) {
    const std::string path = root + "/" + sub;
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoStatus("mkdir " + path, errno);
    }
  }
  std::error_code ec;
  const std::string tmp = root + "/tmp";
  for (std::filesystem::directory_iterator it(tmp, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code rm_ec;
    std::filesystem::remove_all(it->path(), rm_ec);
    if (rm_ec) return Error(ErrorCode::kIoError, "cannot empty " + tmp + ": " + rm_ec.message());
  }
  if (ec) return Error(ErrorCode::kIoError, "cannot list " + tmp + ": " + ec.message());
  return std::unique_ptr<BlobStore>(new BlobStore(root));
}

std::string BlobStore::PathOf(std::string_view sha256) const { return BlobPath(root_, sha256); }

std::string BlobPath(const std::string& root, std::string_view sha256) {
  std::string path = root + "/blobs/";
  path.append(sha256.substr(0, 2)).append("/").append(sha256.substr(2, 2)).append("/");
  path.append(sha256);
  return path;
}

Result<std::unique_ptr<Upload>> BlobStore::BeginUpload(
    std::optional<std::string> declared_sha256, std::optional<uint64_t> declared_size) const {
  if (declared_sha256) {
    std::transform(declared_sha256->begin(), declared_sha256->end(), declared_sha256->begin(),
                   [](char c) { return (c >= 'A' && c <= 'F') ? static_cast<char>(c + 32) : c; });
    if (!IsSha256Hex(*declared_sha256)) {
      return Error(ErrorCode::kInvalidArgument, "declared SHA-256 is not 64 hex digits");
    }
  }
  std::string temp = root_ + "/tmp/upload.XXXXXX";
  const int fd = ::mkostemp(temp.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("create upload file in " + root_ + "/tmp", errno);
  return std::unique_ptr<Upload>(
      new BlobUpload(root_, fd, std::move(temp), std::move(declared_sha256), declared_size));
}

Result<std::string> BlobStore::Put(ByteView data) const {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<Upload> upload, BeginUpload(std::nullopt, data.size()));
  DS_RETURN_IF_ERROR(upload->Write(data));
  return upload->Commit();
}

Result<BlobRef> BlobStore::Find(std::string_view sha256) const {
  if (!IsSha256Hex(sha256)) {
    return Error(ErrorCode::kInvalidArgument, "blob name is not 64 lowercase hex digits");
  }
  BlobRef ref;
  ref.sha256 = std::string(sha256);
  ref.path = PathOf(sha256);
  struct stat st;
  if (::stat(ref.path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Error(ErrorCode::kNotFound, "no blob " + ref.sha256);
    return ErrnoStatus("stat " + ref.path, errno);
  }
  if (!S_ISREG(st.st_mode)) return Error(ErrorCode::kIoError, ref.path + " is not a file");
  ref.size = static_cast<uint64_t>(st.st_size);
  return ref;
}

}  // namespace ds::repo
