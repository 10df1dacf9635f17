// Sender-side control laws of the UDP carrier (docs/PROTOCOL.md, "Control laws"): a BBR-like
// pacing rate and inflight cap, the loss estimate that sets the repair ratio, and the block size.
//
// Inputs are the packets the sender sends and the FEEDBACK it receives; outputs are when the
// next packet may go, how many repair symbols a block of K gets, and how many chunks a block
// covers. Random loss does not lower the rate: the bottleneck estimate is the delivery rate
// divided by (1 - base loss), base loss being measured in rounds without queueing. Rising
// queueing delay (one-way delay above its minimum) does lower it.
//
// Thread-safety: none; owned by one UdpSender.
#ifndef DELTASTREAM_FEC_RATE_CONTROL_H_
#define DELTASTREAM_FEC_RATE_CONTROL_H_

#include <cstdint>
#include <deque>

#include "fec/packet.h"

namespace ds::fec {

using Micros = uint64_t;  // Microseconds on the caller's monotonic clock.

struct RateConfig {
  uint64_t initial_rate = 500'000;     // Bytes/s before any measurement (4 Mbit/s).
  uint64_t min_rate = 20'000;          // Never pace below this (bytes/s).
  uint64_t max_rate = 250'000'000;     // Nor above (2 Gbit/s).
  Micros initial_rtt_us = 100'000;     // RTT assumed before the first sample.
  double repair_margin = 0.03;         // At most this above p / (1 - p).
  double repair_floor = 0.01;          // Least repair ratio, even at no measured loss.
  Micros min_queue_target_us = 4'000;  // Queueing delay that counts as congestion: max of this
                                       // and min RTT / 4.
};

class RateController {
 public:
  explicit RateController(const RateConfig& config);

  // A packet of |bytes| with number |pn| left at |now|.
  void OnSent(Micros now, uint64_t pn, size_t bytes);
  // A FEEDBACK arrived (already authenticated, newest so far).
  void OnFeedback(Micros now, const Feedback& fb);

  // Earliest time the next packet may leave (pacing) and whether the inflight cap allows one.
  Micros NextSendTime() const { return next_send_us_; }
  bool InflightAllows() const { return inflight_ < InflightCap(); }

  uint64_t pacing_rate() const;  // Bytes/s.
  uint64_t bottleneck_rate() const { return btl_bw_; }
  uint64_t InflightCap() const;
  uint64_t inflight() const { return inflight_; }
  Micros min_rtt_us() const { return min_rtt_us_ ? min_rtt_us_ : config_.initial_rtt_us; }
  Micros srtt_us() const { return srtt_us_ ? srtt_us_ : config_.initial_rtt_us; }
  Micros queue_delay_us() const { return queue_delay_us_; }
  // Loss rate for the repair ratio: the path's own loss, measured in rounds without a standing
  // queue (transient queue overflows are left to need-more requests), or the receiver's
  // estimate until our first full round.
  double loss() const { return have_loss_ ? loss_base_ : loss_recent_; }
  // Loss over recent rounds, congested or not.
  double recent_loss() const { return loss_recent_; }
  double base_loss() const { return loss_base_; }
  double burst() const { return burst_; }
  bool has_rtt() const { return min_rtt_us_ != 0; }

  // Repair symbols per source symbol for a block of |k| source symbols at the current loss.
  double RepairRatio(int k) const;

  enum class Mode { kStartup, kDrain, kProbeBw };
  Mode mode() const { return mode_; }

 private:
  struct Sent {
    uint64_t pn;
    Micros time;
    uint32_t bytes;
    uint64_t delivered;  // Receiver's cumulative bytes known when this left.
    Micros delivered_time;
  };
  void EndRound(Micros now);
  void AddBandwidthSample(Micros now, uint64_t rate);
  Micros QueueTarget() const;

  RateConfig config_;
  std::deque<Sent> sent_;
  uint64_t inflight_ = 0;
  Micros next_send_us_ = 0;

  // Delivery.
  uint64_t delivered_ = 0;
  Micros delivered_time_ = 0;
  uint64_t btl_bw_;
  std::deque<std::pair<Micros, uint64_t>> bw_samples_;  // Windowed max filter.

  // RTT and one-way delay.
  Micros min_rtt_us_ = 0;
  Micros min_rtt_time_ = 0;
  Micros srtt_us_ = 0;
  bool have_owd_ = false;
  int64_t min_owd_ = 0;
  Micros queue_delay_us_ = 0;

  // Loss, by rounds of about one min RTT.
  uint64_t last_largest_ = 0;
  uint64_t last_received_ = 0;
  bool have_fb_ = false;
  uint64_t round_sent_ = 0, round_received_ = 0;
  Micros round_start_ = 0;
  bool round_congested_ = false;
  double loss_recent_ = 0, loss_base_ = 0, burst_ = 1;
  bool have_loss_ = false;
  uint64_t loss_packets_ = 0, base_packets_ = 0;

  // Mode.
  Mode mode_ = Mode::kStartup;
  uint64_t full_bw_ = 0;
  int full_bw_rounds_ = 0;
  int cycle_index_ = 0;
  Micros cycle_start_ = 0;
  Micros last_backoff_ = 0;
};

}  // namespace ds::fec

#endif  // DELTASTREAM_FEC_RATE_CONTROL_H_
