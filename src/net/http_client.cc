// The blocking HTTP client on libcurl's easy interface. Easy handles are pooled per Client so
// that sequential requests reuse connections (keep-alive) and concurrent requests from several
// threads each get their own handle.
#include <curl/curl.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/fs.h"
#include "net/http.h"
#include "net/http_internal.h"

namespace ds::net {
namespace {

// Largest error body kept by DownloadFile when the server does not answer 2xx.
constexpr size_t kMaxErrorBody = 1 << 20;

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct CurlDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
using CurlHandle = std::unique_ptr<CURL, CurlDeleter>;

struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using Slist = std::unique_ptr<curl_slist, SlistDeleter>;

// State of one transfer, reached from curl's callbacks.
struct Transfer {
  CURL* curl = nullptr;
  ClientResponse response;
  // Upload source (UploadFile).
  RandomAccessFile* upload = nullptr;
  uint64_t upload_offset = 0;
  // Download sink (DownloadFile); the body goes to |response.body| when null or not 2xx.
  AtomicFileWriter* download = nullptr;
  bool download_decided = false;
  bool to_file = false;
  Status callback_error;  // Why a callback aborted the transfer.
  const Progress* progress = nullptr;
  bool uploading = false;
  uint64_t max_body = 0;  // For in-memory bodies; 0: no limit.
  // Streamed body (GetStream); like |download|, only for a 2xx answer.
  const std::function<Status(int, ByteView)>* stream = nullptr;
  // Sees a 2xx answer's status and headers before its first body byte (GetStream).
  const std::function<Status(const ClientResponse&)>* on_head = nullptr;
  int code = 0;  // HTTP status, once known.
};

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string_view line(data, size * n);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
  if (line.substr(0, 5) == "HTTP/") {
    // A new response starts (after 100 Continue, for instance): forget the previous headers.
    t->response.headers.clear();
    return size * n;
  }
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos) return size * n;
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  t->response.headers.emplace_back(internal::ToLower(line.substr(0, colon)), std::string(value));
  return size * n;
}

size_t OnWrite(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  if ((t->download != nullptr || t->stream != nullptr) && !t->download_decided) {
    long code = 0;  // NOLINT(runtime/int): curl's type.
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &code);
    t->to_file = code >= 200 && code < 300;
    t->code = static_cast<int>(code);
    t->download_decided = true;
    if (t->to_file && t->on_head != nullptr && *t->on_head) {
      t->response.status = t->code;
      Status s = (*t->on_head)(t->response);
      if (!s.ok()) {
        t->callback_error = std::move(s);
        return 0;  // Aborts the transfer.
      }
    }
  }
  if (t->to_file) {
    const ByteView piece(reinterpret_cast<const uint8_t*>(data), bytes);
    Status s = t->stream != nullptr ? (*t->stream)(t->code, piece) : t->download->Append(piece);
    if (!s.ok()) {
      t->callback_error = std::move(s);
      return 0;  // Aborts the transfer.
    }
    return bytes;
  }
  if ((t->download != nullptr || t->stream != nullptr) &&
      t->response.body.size() + bytes > kMaxErrorBody) {
    return bytes;  // Keep the start of an oversized error body only.
  }
  if (t->max_body != 0 && t->response.body.size() + bytes > t->max_body) {
    t->callback_error = Status(ErrorCode::kTooLarge,
                               "response body exceeds " + std::to_string(t->max_body) + " bytes");
    return 0;  // Aborts the transfer.
  }
  t->response.body.append(data, bytes);
  return bytes;
}

size_t OnRead(char* buffer, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const uint64_t left = t->upload->size() - t->upload_offset;
  const size_t want = static_cast<size_t>(std::min<uint64_t>(size * n, left));
  if (want == 0) return 0;
  Status s = t->upload->ReadAt(t->upload_offset, {reinterpret_cast<uint8_t*>(buffer), want});
  if (!s.ok()) {
    t->callback_error = std::move(s);
    return CURL_READFUNC_ABORT;
  }
  t->upload_offset += want;
  return want;
}

int OnProgress(void* user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
               curl_off_t ulnow) {
  auto* t = static_cast<Transfer*>(user);
  if (t->progress != nullptr && *t->progress) {
    if (t->uploading) {
      (*t->progress)(static_cast<uint64_t>(ulnow), static_cast<uint64_t>(ultotal));
    } else {
      (*t->progress)(static_cast<uint64_t>(dlnow), static_cast<uint64_t>(dltotal));
    }
  }
  return 0;
}

}  // namespace

class Client::Impl {
 public:
  explicit Impl(ClientOptions options) : options_(std::move(options)) { GlobalInit(); }

  CurlHandle Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        CurlHandle h = std::move(idle_.back());
        idle_.pop_back();
        curl_easy_reset(h.get());  // Keeps live connections.
        return h;
      }
    }
    return CurlHandle(curl_easy_init());
  }

  void Release(CurlHandle h) {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < 16) idle_.push_back(std::move(h));
  }

  // Runs one request. |configure| sets the method and body options.
  template <class Configure>
  Result<ClientResponse> Perform(const std::string& url,
                                 const std::vector<std::pair<std::string, std::string>>& headers,
                                 Transfer* t, Configure configure) {
    CurlHandle handle = Acquire();
    if (!handle) return Status(ErrorCode::kInternal, "curl_easy_init failed");
    CURL* c = handle.get();
    t->curl = c;
    if (t->download == nullptr && t->stream == nullptr) t->max_body = options_.max_body_bytes;
    char error[CURL_ERROR_SIZE] = {0};
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options_.connect_timeout_ms));
    if (options_.low_speed_timeout_ms > 0) {
      curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
      curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME,
                       static_cast<long>((options_.low_speed_timeout_ms + 999) / 1000));
    }
    if (!options_.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, options_.ca_file.c_str());
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnWrite);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
    if (t->progress != nullptr && *t->progress) {
      curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
      curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, OnProgress);
      curl_easy_setopt(c, CURLOPT_XFERINFODATA, t);
    }
    curl_slist* list = nullptr;
    for (const auto& [name, value] : headers) {
      list = curl_slist_append(list, (name + ": " + value).c_str());
    }
    if (!options_.bearer_token.empty()) {
      list = curl_slist_append(list, ("Authorization: Bearer " + options_.bearer_token).c_str());
    }
    Slist header_list(list);
    if (list != nullptr) curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
    configure(c);

    const CURLcode rc = curl_easy_perform(c);
    long code = 0;  // NOLINT(runtime/int): curl's type.
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_off_t first_byte_us = 0, total_us = 0;
    curl_easy_getinfo(c, CURLINFO_STARTTRANSFER_TIME_T, &first_byte_us);
    curl_easy_getinfo(c, CURLINFO_TOTAL_TIME_T, &total_us);
    t->response.first_byte_seconds = static_cast<double>(first_byte_us) / 1e6;
    t->response.total_seconds = static_cast<double>(total_us) / 1e6;
    // Do not leave pointers to this frame in a pooled handle.
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, nullptr);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, nullptr);
    Release(std::move(handle));
    if (!t->callback_error.ok()) return t->callback_error;
    if (rc != CURLE_OK) {
      std::string message = error[0] != 0 ? error : curl_easy_strerror(rc);
      return Status(ErrorCode::kUnavailable, url + ": " + message);
    }
    t->response.status = static_cast<int>(code);
    return std::move(t->response);
  }

 private:
  ClientOptions options_;
  std::mutex mu_;
  std::vector<CurlHandle> idle_;
};

Client::Client(ClientOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Client::~Client() = default;

Result<ClientResponse> Client::Get(
    const std::string& url, const std::vector<std::pair<std::string, std::string>>& headers) {
  Transfer t;
  return impl_->Perform(url, headers, &t,
                        [](CURL* c) { curl_easy_setopt(c, CURLOPT_HTTPGET, 1L); });
}

Result<ClientResponse> Client::GetStream(
    const std::string& url, const std::function<Status(int, ByteView)>& on_data,
    const std::vector<std::pair<std::string, std::string>>& headers) {
  return GetStream(url, nullptr, on_data, headers);
}

Result<ClientResponse> Client::GetStream(
    const std::string& url, const std::function<Status(const ClientResponse&)>& on_head,
    const std::function<Status(int, ByteView)>& on_data,
    const std::vector<std::pair<std::string, std::string>>& headers) {
  Transfer t;
  t.stream = &on_data;
  t.on_head = &on_head;
  return impl_->Perform(url, headers, &t,
                        [](CURL* c) { curl_easy_setopt(c, CURLOPT_HTTPGET, 1L); });
}

Result<ClientResponse> Client::Send(
    const std::string& method, const std::string& url, std::string body,
    const std::vector<std::pair<std::string, std::string>>& headers) {
  Transfer t;
  return impl_->Perform(url, headers, &t, [&](CURL* c) {
    if (method == "GET" && body.empty()) {
      curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    } else if (method == "HEAD") {
      curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (body.empty() && method != "POST" && method != "PUT") {
      curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
    } else {
      curl_easy_setopt(c, CURLOPT_POST, 1L);
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
      if (method != "POST") curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
    }
  });
}

Result<ClientResponse> Client::UploadFile(
    const std::string& method, const std::string& url, const std::string& path,
    const std::vector<std::pair<std::string, std::string>>& headers, const Progress& progress) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> file, RandomAccessFile::Open(path));
  Transfer t;
  t.upload = file.get();
  t.progress = &progress;
  t.uploading = true;
  const auto size = static_cast<curl_off_t>(file->size());
  return impl_->Perform(url, headers, &t, [&](CURL* c) {
    curl_easy_setopt(c, CURLOPT_READFUNCTION, OnRead);
    curl_easy_setopt(c, CURLOPT_READDATA, &t);
    if (method == "POST") {
      curl_easy_setopt(c, CURLOPT_POST, 1L);
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, size);
    } else {
      curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, size);
      if (method != "PUT") curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
    }
  });
}

Result<ClientResponse> Client::DownloadFile(const std::string& url, const std::string& out_path,
                                            const Progress& progress) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> writer, AtomicFileWriter::Create(out_path));
  Transfer t;
  t.download = writer.get();
  t.progress = &progress;
  Result<ClientResponse> r =
      impl_->Perform(url, {}, &t, [](CURL* c) { curl_easy_setopt(c, CURLOPT_HTTPGET, 1L); });
  if (!r.ok()) return r.status();  // |writer| removes its temporary file.
  if (r->status < 200 || r->status >= 300) {
    Status s = StatusFromResponse(*r);
    if (s.ok()) s = Status(ErrorCode::kProtocol, "HTTP " + std::to_string(r->status));
    return s.WithContext("download " + url);
  }
  DS_RETURN_IF_ERROR(writer->Commit());
  return r;
}

}  // namespace ds::net
