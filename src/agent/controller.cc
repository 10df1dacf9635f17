#include "agent/controller.h"

#include <algorithm>
#include <bit>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

namespace ds::agent {
namespace {

uint64_t FloorTo(uint64_t bytes, uint64_t unit) { return bytes / unit * unit; }

// Sanitizes |config| so that every rule of ValidateControllerConfig holds.
ControllerConfig Clamp(ControllerConfig c) {
  if (c.leaf_size == 0) c.leaf_size = 64 << 10;
  if (!std::has_single_bit(c.leaf_size)) c.leaf_size = std::bit_floor(c.leaf_size);
  c.min_chunk = std::max(c.leaf_size, (c.min_chunk + c.leaf_size - 1) / c.leaf_size * c.leaf_size);
  c.max_chunk = std::max(c.min_chunk, FloorTo(c.max_chunk, c.leaf_size));
  c.min_in_flight = std::max(1, c.min_in_flight);
  c.max_in_flight = std::max(c.min_in_flight, c.max_in_flight);
  c.max_backlog = std::max(c.max_backlog, 4 * c.min_chunk);
  c.initial_chunk = std::clamp(FloorTo(c.initial_chunk, c.leaf_size), c.min_chunk, c.max_chunk);
  c.initial_in_flight = std::clamp(c.initial_in_flight, c.min_in_flight, c.max_in_flight);
  if (!(c.rtt_multiple > 0)) c.rtt_multiple = 8;
  if (!(c.min_chunk_seconds > 0)) c.min_chunk_seconds = 0.5;
  if (!(c.max_chunk_seconds >= c.min_chunk_seconds)) c.max_chunk_seconds = c.min_chunk_seconds;
  if (!(c.rate_window_seconds > 0)) c.rate_window_seconds = 2;
  c.rate_window_min_chunks = std::max(1, c.rate_window_min_chunks);
  c.rate_window_max_chunks = std::max(c.rate_window_min_chunks, c.rate_window_max_chunks);
  if (!(c.rtt_gain > 0 && c.rtt_gain <= 1)) c.rtt_gain = 0.125;
  if (!(c.min_rtt_window_seconds > 0)) c.min_rtt_window_seconds = 10;
  c.recovery_successes = std::max(1, c.recovery_successes);
  if (!(c.apply_rate_tau_seconds > 0)) c.apply_rate_tau_seconds = 2;
  if (!(c.backlog_high_seconds > 0)) c.backlog_high_seconds = 4;
  if (!(c.backlog_low_refills > 0)) c.backlog_low_refills = 2;
  if (!(c.cpu_busy_cores > 0)) c.cpu_busy_cores = 0.9;
  if (!(c.stall_seconds > 0)) c.stall_seconds = 1;
  return c;
}

std::string Mib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2fMiB", bytes / (1 << 20));
  return buf;
}

}  // namespace

Status ValidateControllerConfig(const ControllerConfig& c) {
  auto bad = [](std::string what) { return Error(ErrorCode::kInvalidArgument, std::move(what)); };
  if (c.leaf_size == 0 || !std::has_single_bit(c.leaf_size)) {
    return bad("leaf_size must be a power of two");
  }
  if (c.min_chunk == 0 || c.min_chunk > c.max_chunk) return bad("need 0 < min_chunk <= max_chunk");
  if (c.max_chunk < c.leaf_size) return bad("max_chunk is smaller than one leaf");
  if (c.min_in_flight < 1 || c.min_in_flight > c.max_in_flight) {
    return bad("need 1 <= min_in_flight <= max_in_flight");
  }
  if (c.max_backlog < 4 * std::max(c.min_chunk, c.leaf_size)) {
    return bad("max_backlog must hold at least 4 minimum chunks");
  }
  if (!(c.rtt_multiple > 0 && c.min_chunk_seconds > 0 &&
        c.max_chunk_seconds >= c.min_chunk_seconds && c.rate_window_seconds > 0 && c.rtt_gain > 0 &&
        c.rtt_gain <= 1 && c.min_rtt_window_seconds > 0 && c.apply_rate_tau_seconds > 0 &&
        c.backlog_high_seconds > 0 && c.backlog_low_refills > 0 && c.cpu_busy_cores > 0 &&
        c.stall_seconds > 0)) {
    return bad("time constants and gains must be positive (rtt_gain at most 1)");
  }
  if (c.rate_window_min_chunks < 1 || c.rate_window_max_chunks < c.rate_window_min_chunks ||
      c.recovery_successes < 1) {
    return bad("window and recovery counts must be positive");
  }
  return Status::Ok();
}

StreamController::StreamController(ControllerConfig config)
    : config_(Clamp(config)), chunk_(config_.initial_chunk), failure_cap_(config_.max_chunk) {
  chunk_ = std::min(chunk_, ChunkCap());
}

// ---- Estimators ----

void StreamController::OnChunkDone(const ChunkSample& s) {
  if (s.bytes == 0 || !(s.end >= s.first_byte) || !(s.first_byte >= s.start)) return;

  const double ttfb = s.first_byte - s.start;
  if (!have_rtt_) {
    srtt_ = ttfb;
    have_rtt_ = true;
  } else {
    srtt_ += config_.rtt_gain * (ttfb - srtt_);
  }
  rtt_samples_.push_back({s.end, ttfb});
  while (!rtt_samples_.empty() &&
         rtt_samples_.front().time < s.end - config_.min_rtt_window_seconds) {
    rtt_samples_.pop_front();
  }
  min_rtt_ = ttfb;
  for (const RttSample& r : rtt_samples_) min_rtt_ = std::min(min_rtt_, r.rtt);

  // Keep done_ ordered by end time (reports may arrive slightly out of order).
  Done d{s.first_byte, s.end, s.bytes};
  auto pos = std::upper_bound(done_.begin(), done_.end(), d.end,
                              [](double t, const Done& x) { return t < x.end; });
  done_.insert(pos, d);
  while (done_.size() > static_cast<size_t>(config_.rate_window_max_chunks) + 1) {
    done_.pop_front();
  }
  UpdateThroughput();
  Decide(s.bytes);
}

// Delivery rate = bytes of the chunks completed in the window / time the link was busy with them.
// The window opens at the end of the completion just before it (so in steady pipelining each
// completion accounts for the bytes delivered since the previous one) and busy time is the union
// of the window's [first_byte, end] intervals inside it: idle gaps (all requests waiting for their
// first byte, or the client paused by the backlog) do not dilute the estimate.
void StreamController::UpdateThroughput() {
  if (done_.empty()) return;
  const double now = done_.back().end;
  const double window = std::max(config_.rate_window_seconds, 2 * TargetSeconds());
  size_t k = done_.size();  // The window is done_[k, size).
  int count = 0;
  while (k > 0 && count < config_.rate_window_max_chunks &&
         (count < config_.rate_window_min_chunks || done_[k - 1].end >= now - window)) {
    --k;
    ++count;
  }
  double opens = k > 0 ? done_[k - 1].end : done_[k].first_byte;
  std::vector<std::pair<double, double>> spans;
  uint64_t bytes = 0;
  for (size_t i = k; i < done_.size(); ++i) {
    bytes += done_[i].bytes;
    if (k == 0) opens = std::min(opens, done_[i].first_byte);
  }
  for (size_t i = k; i < done_.size(); ++i) {
    const double from = std::max(done_[i].first_byte, opens);
    if (done_[i].end > from) spans.emplace_back(from, done_[i].end);
  }
  std::sort(spans.begin(), spans.end());
  double busy = 0;
  double cur_from = 0, cur_to = -1;
  for (const auto& [from, to] : spans) {
    if (from > cur_to) {
      if (cur_to > cur_from) busy += cur_to - cur_from;
      cur_from = from;
      cur_to = to;
    } else {
      cur_to = std::max(cur_to, to);
    }
  }
  if (cur_to > cur_from) busy += cur_to - cur_from;
  if (busy > 1e-6) throughput_ = static_cast<double>(bytes) / busy;
}

void StreamController::OnChunkFailed(double now) {
  (void)now;
  ++failures_;
  // Halve per failure: a failure loses up to a whole chunk, and failures are likelier for bigger
  // chunks (more time exposed to resets and timeouts).
  failure_cap_ = std::max(config_.min_chunk, FloorTo(chunk_ / 2, config_.leaf_size));
  chunk_ = std::min(chunk_, failure_cap_);
  successes_since_cap_change_ = 0;
}

void StreamController::OnApplyProgress(double now, uint64_t applied_total, uint64_t backlog_bytes) {
  if (!have_apply_) {
    have_apply_ = true;
    last_progress_time_ = now;
  } else if (now > last_apply_time_) {
    const double dt = now - last_apply_time_;
    const uint64_t applied = applied_total >= last_applied_ ? applied_total - last_applied_ : 0;
    // Only intervals where the applier worked throughout measure its capacity: it had a backlog
    // at both ends, did not use up what it had at the start, and moved (a stall on a missing
    // range says nothing about the CPU).
    if (last_backlog_ > 0 && backlog_bytes > 0 && applied > 0 && applied < last_backlog_) {
      const double decay = std::exp(-dt / config_.apply_rate_tau_seconds);
      apply_bytes_ = apply_bytes_ * decay + static_cast<double>(applied);
      apply_time_ = apply_time_ * decay + dt;
      apply_rate_ = apply_bytes_ / apply_time_;
    }
  }
  if (applied_total != last_applied_ || backlog_bytes == 0) last_progress_time_ = now;
  stalled_ = backlog_bytes > 0 && now - last_progress_time_ >= config_.stall_seconds;
  last_apply_time_ = now;
  last_applied_ = applied_total;
  last_backlog_ = backlog_bytes;
  backlog_ = backlog_bytes;
}

void StreamController::OnCpuSample(double now, double cpu_seconds) {
  if (have_cpu_ && now > last_cpu_time_) {
    const double load = std::max(0.0, cpu_seconds - last_cpu_seconds_) / (now - last_cpu_time_);
    const double decay = std::exp(-(now - last_cpu_time_) / config_.apply_rate_tau_seconds);
    cpu_load_ = cpu_load_ < 0 ? load : cpu_load_ * decay + load * (1 - decay);
  }
  have_cpu_ = true;
  last_cpu_time_ = now;
  last_cpu_seconds_ = cpu_seconds;
}

// ---- Decisions ----

double StreamController::TargetSeconds() const {
  const double t = std::max(config_.rtt_multiple * srtt_, config_.min_chunk_seconds);
  return std::min(t, config_.max_chunk_seconds);
}

uint64_t StreamController::ChunkCap() const {
  const uint64_t memory = FloorTo(config_.max_backlog / 4, config_.leaf_size);
  return std::max(config_.min_chunk, std::min({config_.max_chunk, failure_cap_, memory}));
}

uint64_t StreamController::RoundChunk(double bytes) const {
  const double leaves = std::floor(bytes / static_cast<double>(config_.leaf_size));
  uint64_t n = 1;
  if (leaves >= 2) {
    n = leaves >= 0x1p62 ? (uint64_t{1} << 62) : std::bit_floor(static_cast<uint64_t>(leaves));
  }
  const uint64_t cap = ChunkCap();
  const uint64_t c = n > cap / config_.leaf_size ? cap : n * config_.leaf_size;
  return std::clamp(c, config_.min_chunk, cap);
}

// One decision per completed chunk: shrink straight to the target, grow at most x2 and only on a
// chunk of at least the current size (evidence that the current size works), so at most x2 per
// round of requests.
void StreamController::Decide(uint64_t completed_bytes) {
  if (failure_cap_ < config_.max_chunk && completed_bytes <= failure_cap_ &&
      ++successes_since_cap_change_ >= config_.recovery_successes) {
    failure_cap_ = std::min(config_.max_chunk, failure_cap_ * 2);
    successes_since_cap_change_ = 0;
  }
  if (throughput_ <= 0) return;
  const uint64_t target = RoundChunk(throughput_ * TargetSeconds());
  // When the applier is slower than the link and its backlog would not last while a doubled chunk
  // is fetched, a bigger chunk would starve it: hold the size.
  const bool applier_at_risk =
      apply_rate_ > 0 && apply_rate_ < throughput_ &&
      static_cast<double>(backlog_) < apply_rate_ * (srtt_ + 2.0 * chunk_ / throughput_);
  if (target < chunk_) {
    chunk_ = target;
  } else if (target > chunk_ && completed_bytes >= chunk_ && !applier_at_risk) {
    chunk_ = std::max(chunk_ + config_.leaf_size, std::min(target, RoundChunk(2.0 * chunk_)));
    chunk_ = std::min(chunk_, target);
  }
}

uint64_t StreamController::NextChunkSize(uint64_t remaining_bytes) const {
  const uint64_t c = std::min(chunk_, ChunkCap());
  return std::min(c, remaining_bytes);
}

double StreamController::RefillSeconds() const {
  const double rate = throughput_ > 0 ? throughput_ : 1.0;
  return srtt_ + static_cast<double>(chunk_) / rate;
}

// Enough requests to cover the bandwidth-delay product plus one: a request spends one RTT waiting
// for its first byte, and the others must keep the link busy meanwhile.
int StreamController::NetworkLimit() const {
  int n = config_.initial_in_flight;
  if (throughput_ > 0 && have_rtt_) {
    const double bdp = throughput_ * srtt_;
    const double need = std::ceil(bdp / static_cast<double>(chunk_)) + 1;
    n = need >= config_.max_in_flight ? config_.max_in_flight : static_cast<int>(need);
  }
  n = std::clamp(n, config_.min_in_flight, config_.max_in_flight);
  // Bytes in flight are at most half the backlog allowance.
  const uint64_t memory = std::max<uint64_t>(1, config_.max_backlog / 2 / chunk_);
  return static_cast<int>(std::min<uint64_t>(n, memory));
}

uint64_t StreamController::backlog_high() const {
  const uint64_t half = config_.max_backlog / 2;
  if (apply_rate_ <= 0) return half;
  const double low =
      std::max(2.0 * chunk_, config_.backlog_low_refills * apply_rate_ * RefillSeconds());
  const double high = std::max(apply_rate_ * config_.backlog_high_seconds, low + 2.0 * chunk_);
  return high >= half ? half : static_cast<uint64_t>(high);
}

uint64_t StreamController::backlog_low() const {
  const uint64_t high = backlog_high();
  if (apply_rate_ <= 0) return high;
  const double low =
      std::max(2.0 * chunk_, config_.backlog_low_refills * apply_rate_ * RefillSeconds());
  const uint64_t most = high > chunk_ ? high - chunk_ : 0;
  return low >= most ? most : static_cast<uint64_t>(low);
}

bool StreamController::applier_bound() const {
  if (apply_rate_ > 0 && backlog_ >= backlog_low()) return true;
  return cpu_load_ >= config_.cpu_busy_cores && backlog_ >= chunk_;
}

int StreamController::InFlightLimit() const {
  int n = NetworkLimit();
  if (stalled_) return std::max(n, 1);  // The applier waits for a hole: let it be filled.
  const uint64_t room = backlog_ < config_.max_backlog ? config_.max_backlog - backlog_ : 0;
  n = static_cast<int>(std::min<uint64_t>(n, room / chunk_));
  if (apply_rate_ > 0) {
    if (backlog_ >= backlog_high()) return 0;
    if (backlog_ >= backlog_low()) {
      // Only as many requests as sustain the apply rate: each delivers a chunk per refill time.
      const double match = std::ceil(apply_rate_ * RefillSeconds() / static_cast<double>(chunk_));
      n = std::min(n, std::max(1, match >= n ? n : static_cast<int>(match)));
    }
  }
  return std::max(n, 0);
}

std::string StreamController::StateLine() const {
  char buf[320];
  std::snprintf(buf, sizeof(buf),
                "thr=%.2fMB/s rtt=%.1fms min_rtt=%.1fms chunk=%s inflight=%d backlog=%s "
                "low=%s high=%s apply=%.2fMB/s cpu=%.2f fails=%d cap=%s%s%s",
                throughput_ / 1e6, srtt_ * 1e3, min_rtt_ * 1e3, Mib(chunk_).c_str(),
                InFlightLimit(), Mib(backlog_).c_str(), Mib(backlog_low()).c_str(),
                Mib(backlog_high()).c_str(), apply_rate_ / 1e6, cpu_load_, failures_,
                Mib(ChunkCap()).c_str(), applier_bound() ? " applier-bound" : "",
                stalled_ ? " stalled" : "");
  return buf;
}

}  // namespace ds::agent
