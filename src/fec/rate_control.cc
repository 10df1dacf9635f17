#include "fec/rate_control.h"

#include <algorithm>
#include <cmath>

namespace ds::fec {
namespace {

// ProbeBW gain cycle, one phase per min RTT: probe up, drain what the probe queued, cruise.
constexpr double kCycleGains[] = {1.25, 0.75, 1, 1, 1, 1, 1, 1};
constexpr int kCycleLength = 8;
constexpr double kStartupGain = 2.0;
constexpr double kDrainGain = 0.6;
constexpr Micros kBurstAllowanceUs = 1'000;
constexpr Micros kMinRttExpiryUs = 10'000'000;
constexpr uint64_t kMinRoundPackets = 32;

}  // namespace

RateController::RateController(const RateConfig& config)
    : config_(config), btl_bw_(config.initial_rate) {}

Micros RateController::QueueTarget() const {
  return std::max<Micros>(config_.min_queue_target_us, min_rtt_us() / 4);
}

uint64_t RateController::pacing_rate() const {
  double gain = 1;
  switch (mode_) {
    case Mode::kStartup:
      gain = kStartupGain;
      break;
    case Mode::kDrain:
      gain = kDrainGain;
      break;
    case Mode::kProbeBw:
      gain = kCycleGains[cycle_index_];
      break;
  }
  const double r = gain * static_cast<double>(btl_bw_);
  return std::clamp<uint64_t>(static_cast<uint64_t>(r), config_.min_rate, config_.max_rate);
}

uint64_t RateController::InflightCap() const {
  const double bdp = static_cast<double>(btl_bw_) * static_cast<double>(min_rtt_us()) / 1e6;
  const double gain = 2.0;
  return static_cast<uint64_t>(gain * bdp) + 8 * kMaxDatagramSize;
}

double RateController::RepairRatio(int k) const {
  const double p = std::min(loss(), 0.5);
  // Expected losses of a block sent as n = k / (1 - p) symbols are n p; their spread is
  // sqrt(n p (1 - p)). Cover the mean plus half a standard deviation (need-more requests cover
  // the unlucky blocks), never more than repair_margin above the mean.
  const double n = k / (1 - p);
  const double spread = 0.3 * std::sqrt(n * p * (1 - p)) / std::max(k, 1);
  const double r = p / (1 - p) + std::min(config_.repair_margin, spread);
  return std::max(config_.repair_floor, r);
}

void RateController::OnSent(Micros now, uint64_t pn, size_t bytes) {
  if (delivered_time_ == 0) delivered_time_ = now;
  sent_.push_back(Sent{pn, now, static_cast<uint32_t>(bytes), delivered_, delivered_time_});
  inflight_ += bytes;
  const uint64_t rate = pacing_rate();
  const Micros interval = static_cast<Micros>(static_cast<double>(bytes) * 1e6 / rate);
  const Micros floor = now > kBurstAllowanceUs ? now - kBurstAllowanceUs : 0;
  next_send_us_ = std::max(next_send_us_, floor) + interval;
}

void RateController::AddBandwidthSample(Micros now, uint64_t rate) {
  const Micros window = std::max<Micros>(10 * min_rtt_us(), 300'000);
  while (!bw_samples_.empty() && bw_samples_.back().second <= rate) bw_samples_.pop_back();
  bw_samples_.emplace_back(now, rate);
  while (bw_samples_.size() > 1 && now - bw_samples_.front().first > window) {
    bw_samples_.pop_front();
  }
  btl_bw_ = std::max(bw_samples_.front().second, config_.min_rate);
}

void RateController::OnFeedback(Micros now, const Feedback& fb) {
  auto find = [&](uint64_t pn) -> const Sent* {
    auto it = std::lower_bound(sent_.begin(), sent_.end(), pn,
                               [](const Sent& s, uint64_t v) { return s.pn < v; });
    return it != sent_.end() && it->pn == pn ? &*it : nullptr;
  };
  // One-way delay: its minimum is the path; the excess is queueing.
  bool have_sample = false;
  int64_t fb_min = 0;
  for (const DelaySample& s : fb.samples) {
    const Sent* rec = find(s.packet_number);
    if (!rec) continue;
    const int64_t owd = static_cast<int64_t>(s.receive_time_us) - static_cast<int64_t>(rec->time);
    if (!have_sample || owd < fb_min) fb_min = owd;
    have_sample = true;
  }
  if (have_sample) {
    if (!have_owd_ || fb_min < min_owd_) min_owd_ = fb_min;
    have_owd_ = true;
    queue_delay_us_ = static_cast<Micros>(fb_min - min_owd_);
  }
  // RTT and delivery rate from the largest packet acknowledged.
  if (const Sent* rec = find(fb.largest_pn)) {
    const Micros raw = now - rec->time;
    const Micros rtt = raw > fb.ack_delay_us + 100 ? raw - fb.ack_delay_us : raw;
    srtt_us_ = srtt_us_ == 0 ? rtt : (7 * srtt_us_ + rtt) / 8;
    if (min_rtt_us_ == 0 || rtt <= min_rtt_us_ || now - min_rtt_time_ > kMinRttExpiryUs) {
      min_rtt_us_ = std::max<Micros>(rtt, 1);
      min_rtt_time_ = now;
    }
    if (fb.received_bytes > rec->delivered && now > rec->delivered_time) {
      const double rate = static_cast<double>(fb.received_bytes - rec->delivered) * 1e6 /
                          static_cast<double>(now - rec->delivered_time);
      // Random loss is not congestion: what the path accepted includes what it then lost.
      const double corrected = rate / (1 - std::min(loss_base_, 0.5));
      AddBandwidthSample(now, static_cast<uint64_t>(corrected));
    }
  }
  if (fb.received_bytes > delivered_) {
    delivered_ = fb.received_bytes;
    delivered_time_ = now;
  }
  // Resolve everything up to the largest acknowledged: received or lost.
  uint64_t popped = 0;
  while (!sent_.empty() && sent_.front().pn <= fb.largest_pn) {
    inflight_ -= sent_.front().bytes;
    sent_.pop_front();
    ++popped;
  }
  // Packets sent long before the newest acknowledged one and still unresolved are lost (an
  // outage must not pin the inflight cap forever).
  const Micros lost_after = 2 * srtt_us() + 10'000;
  while (!sent_.empty() && now - sent_.front().time > lost_after) {
    inflight_ -= sent_.front().bytes;
    sent_.pop_front();
    ++popped;
  }
  round_sent_ += popped;
  if (fb.received_packets > last_received_) round_received_ += fb.received_packets - last_received_;
  last_received_ = std::max(last_received_, fb.received_packets);
  last_largest_ = std::max(last_largest_, fb.largest_pn);
  have_fb_ = true;
  // Until our own rounds measure loss, take the receiver's estimate (the first blocks would
  // otherwise go out with the floor ratio and all need more).
  if (!have_loss_) loss_recent_ = std::min(fb.loss_ppm / 1e6, 0.5);
  burst_ = 0.75 * burst_ + 0.25 * std::max(1.0, fb.burst_x16 / 16.0);

  const bool congested = have_sample && queue_delay_us_ > QueueTarget();
  // Rounds with a deep queue (where a queue may overflow) do not count toward the path's loss.
  if (have_sample && queue_delay_us_ > 2 * QueueTarget()) round_congested_ = true;
  if (round_start_ == 0) round_start_ = now;
  if (now - round_start_ >= min_rtt_us()) EndRound(now);

  switch (mode_) {
    case Mode::kStartup:
      if (congested) mode_ = Mode::kDrain;
      break;
    case Mode::kDrain:
      if (!congested && queue_delay_us_ < QueueTarget() / 2) {
        mode_ = Mode::kProbeBw;
        cycle_index_ = 2;
        cycle_start_ = now;
      }
      break;
    case Mode::kProbeBw:
      if (now - cycle_start_ >= min_rtt_us()) {
        cycle_index_ = (cycle_index_ + 1) % kCycleLength;
        cycle_start_ = now;
      }
      // A standing queue while cruising: the estimate is too high. Back off once per RTT.
      if (congested && kCycleGains[cycle_index_] <= 1.0 && now - last_backoff_ > srtt_us()) {
        last_backoff_ = now;
        const uint64_t lowered = std::max<uint64_t>(btl_bw_ * 85 / 100, config_.min_rate);
        bw_samples_.clear();
        AddBandwidthSample(now, lowered);
        cycle_index_ = 1;  // Drain phase.
        cycle_start_ = now;
      }
      break;
  }
}

void RateController::EndRound(Micros now) {
  if (mode_ == Mode::kStartup) {
    if (btl_bw_ >= full_bw_ + full_bw_ / 4) {
      full_bw_ = btl_bw_;
      full_bw_rounds_ = 0;
    } else if (++full_bw_rounds_ >= 3) {
      mode_ = Mode::kDrain;
    }
  }
  round_start_ = now;
  if (round_sent_ < kMinRoundPackets) return;  // Too few packets: keep counting.
  const double l = round_received_ >= round_sent_
                       ? 0.0
                       : 1.0 - static_cast<double>(round_received_) / round_sent_;
  // A running mean weighted by packets over the first rounds (one short round is a noisy
  // sample), then an EWMA of gain 1/8.
  loss_packets_ += round_sent_;
  const double gain = std::max(0.125, static_cast<double>(round_sent_) / loss_packets_);
  if (!have_loss_) {
    loss_recent_ = loss_base_ = l;
    base_packets_ = round_sent_;
    have_loss_ = true;
  } else {
    loss_recent_ = (1 - gain) * loss_recent_ + gain * l;
    if (!round_congested_) {
      base_packets_ += round_sent_;
      const double base_gain = std::max(0.125, static_cast<double>(round_sent_) / base_packets_);
      loss_base_ = (1 - base_gain) * loss_base_ + base_gain * l;
    }
  }
  round_sent_ = round_received_ = 0;
  round_congested_ = false;
}

}  // namespace ds::fec
