#include "common/fs.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/byte_reader.h"

namespace ds {
namespace {

constexpr size_t kWriteBufferSize = 1 << 20;
constexpr uint64_t kWritebackChunk = 8 << 20;

std::string DirName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status WriteAll(int fd, const uint8_t* p, size_t n, const std::string& what) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write " + what, errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

}  // namespace

Result<uint64_t> FileSize(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("stat " + path, errno);
  return static_cast<uint64_t>(st.st_size);
}

Result<mode_t> FileMode(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("stat " + path, errno);
  return static_cast<mode_t>(st.st_mode & 07777);
}

Result<Bytes> ReadFile(const std::string& path, uint64_t max_size) {
  DS_ASSIGN_OR_RETURN(auto file, RandomAccessFile::Open(path));
  if (file->size() > max_size) {
    return Error(ErrorCode::kResourceLimit, path + " is larger than " + std::to_string(max_size));
  }
  Bytes data(file->size());
  DS_RETURN_IF_ERROR(file->ReadAt(0, data));
  return data;
}

Result<std::unique_ptr<RandomAccessFile>> RandomAccessFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open " + path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoStatus("stat " + path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error(ErrorCode::kInvalidArgument, path + " is not a regular file");
  }
  return std::unique_ptr<RandomAccessFile>(
      new RandomAccessFile(fd, static_cast<uint64_t>(st.st_size), path));
}

RandomAccessFile::~RandomAccessFile() { ::close(fd_); }

Status RandomAccessFile::ReadAt(uint64_t offset, std::span<uint8_t> out) const {
  uint64_t end;
  if (!CheckedAddU64(offset, out.size(), &end) || end > size_) {
    return Error(ErrorCode::kIoError, "read past end of " + path_);
  }
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t r =
        ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read " + path_, errno);
    }
    if (r == 0) return Error(ErrorCode::kIoError, "unexpected end of " + path_);
    done += static_cast<size_t>(r);
  }
  return Status::Ok();
}

Result<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  DS_ASSIGN_OR_RETURN(auto file, RandomAccessFile::Open(path));
  if (file->size() == 0) return std::unique_ptr<MappedFile>(new MappedFile(nullptr, 0));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open " + path, errno);
  void* p = ::mmap(nullptr, file->size(), PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) return ErrnoStatus("mmap " + path, err);
  ::madvise(p, file->size(), MADV_WILLNEED);
  return std::unique_ptr<MappedFile>(new MappedFile(p, file->size()));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

AtomicFileWriter::AtomicFileWriter(int fd, std::string temp, std::string dest, mode_t mode)
    : fd_(fd), temp_path_(std::move(temp)), dest_path_(std::move(dest)), mode_(mode) {
  buffer_.reserve(kWriteBufferSize);
}

Result<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(const std::string& dest,
                                                                   mode_t mode) {
  std::string tmpl = dest + ".tmp.XXXXXX";
  const int fd = ::mkostemp(tmpl.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("create temporary file for " + dest, errno);
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(fd, tmpl, dest, mode));
}

AtomicFileWriter::~AtomicFileWriter() { Abort(); }

void AtomicFileWriter::Abort() {
  if (done_) return;
  done_ = true;
  ::close(fd_);
  ::unlink(temp_path_.c_str());
}

Status AtomicFileWriter::Flush() {
  if (buffer_.empty()) return Status::Ok();
  Status s = WriteAll(fd_, buffer_.data(), buffer_.size(), temp_path_);
  buffer_.clear();
  StartWriteback();
  return s;
}

void AtomicFileWriter::StartWriteback() {
  // Start writing back what was written so far, without waiting, so that the fsync in Commit()
  // has little left to do. Advisory: errors surface at fsync.
  const uint64_t pos = static_cast<uint64_t>(::lseek(fd_, 0, SEEK_CUR));
  if (pos >= synced_ + kWritebackChunk) {
    ::sync_file_range(fd_, static_cast<off_t>(synced_), static_cast<off_t>(pos - synced_),
                      SYNC_FILE_RANGE_WRITE);
    synced_ = pos;
  }
}

Status AtomicFileWriter::Append(ByteView data) {
  if (done_) return Error(ErrorCode::kInternal, "append after commit or abort");
  written_ += data.size();
  if (buffer_.size() + data.size() <= kWriteBufferSize) {
    buffer_.insert(buffer_.end(), data.begin(), data.end());
    return Status::Ok();
  }
  DS_RETURN_IF_ERROR(Flush());
  if (data.size() >= kWriteBufferSize) {
    DS_RETURN_IF_ERROR(WriteAll(fd_, data.data(), data.size(), temp_path_));
    StartWriteback();
    return Status::Ok();
  }
  buffer_.insert(buffer_.end(), data.begin(), data.end());
  return Status::Ok();
}

Status AtomicFileWriter::ReadBack(uint64_t offset, std::span<uint8_t> out) const {
  uint64_t end;
  if (done_ || !CheckedAddU64(offset, out.size(), &end) || end > written_) {
    return Error(ErrorCode::kInternal, "read back outside the written bytes of " + temp_path_);
  }
  const uint64_t flushed = written_ - buffer_.size();
  while (!out.empty() && offset < flushed) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(out.size(), flushed - offset));
    const ssize_t r = ::pread(fd_, out.data(), want, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read back " + temp_path_, errno);
    }
    if (r == 0) return Error(ErrorCode::kIoError, "short read back from " + temp_path_);
    out = out.subspan(static_cast<size_t>(r));
    offset += static_cast<uint64_t>(r);
  }
  if (!out.empty()) std::memcpy(out.data(), buffer_.data() + (offset - flushed), out.size());
  return Status::Ok();
}

Status AtomicFileWriter::Commit() {
  if (done_) return Error(ErrorCode::kInternal, "commit after commit or abort");
  DS_RETURN_IF_ERROR(Flush());
  if (::fchmod(fd_, mode_) != 0) return ErrnoStatus("chmod " + temp_path_, errno);
  if (::fsync(fd_) != 0) return ErrnoStatus("fsync " + temp_path_, errno);
  if (::rename(temp_path_.c_str(), dest_path_.c_str()) != 0) {
    return ErrnoStatus("rename to " + dest_path_, errno);
  }
  done_ = true;
  ::close(fd_);
  const std::string dir = DirName(dest_path_);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return ErrnoStatus("open directory " + dir, errno);
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0) return ErrnoStatus("fsync directory " + dir, err);
  return Status::Ok();
}

Status WriteFileAtomic(const std::string& path, ByteView data, mode_t mode) {
  DS_ASSIGN_OR_RETURN(auto writer, AtomicFileWriter::Create(path, mode));
  DS_RETURN_IF_ERROR(writer->Append(data));
  return writer->Commit();
}

}  // namespace ds
