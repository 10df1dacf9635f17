// Systematic Reed-Solomon erasure code over GF(2^8) (Cauchy generator matrix, ISA-L).
//
// A source block is K symbols of equal length. Encoding symbol ids (ESI) 0..K-1 are the source
// symbols themselves; ESI K..254 are repair symbols, row ESI of ISA-L's gf_gen_cauchy1_matrix
// (element (i, j) = 1 / (i xor j) in GF(2^8)). Every K x K submatrix of that 255 x K generator is
// invertible, so ANY K distinct symbols of a block rebuild it. The caller picks repair ESIs, so
// "send more repair" can always produce symbols the receiver has not seen (while ESIs last).
//
// Decoding solves only for the missing source symbols: with e sources missing and e repair
// symbols at hand it inverts an e x e Cauchy submatrix (not K x K), then runs one ec_encode_data
// pass over the K received symbols.
//
// Thread-safety: a ReedSolomon object caches tables and is used by one thread at a time.
#ifndef DELTASTREAM_FEC_REED_SOLOMON_H_
#define DELTASTREAM_FEC_REED_SOLOMON_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <span>
#include <utility>
#include <vector>

#include "common/status.h"

namespace ds::fec {

// K + R <= 255: ESIs are 0..254.
inline constexpr int kMaxSymbolsPerBlock = 255;
inline constexpr int kMaxEsi = 254;

class ReedSolomon {
 public:
  ReedSolomon() = default;

  // Computes the repair symbols with ids |esis| (each in [k, 254]) of the source block |source|
  // (k pointers to |len| bytes each) into |out| (esis.size() pointers to |len| writable bytes).
  // kInvalidArgument for k outside [1, 254], an ESI out of range, or mismatched spans. Encode
  // tables are cached per (k, ESI list), so a sender reusing the same repair ids pays for them
  // once.
  Status Encode(int k, std::span<const uint8_t* const> source, std::span<const uint8_t> esis,
                std::span<uint8_t* const> out, size_t len);

  // Rebuilds the k source symbols from k distinct received symbols: |esis[i]| is the id of
  // |symbols[i]| (|len| bytes). |out| has k pointers to |len| writable bytes; out[j] receives
  // source symbol j (sources present among the inputs are copied). kInvalidArgument for
  // repeated or out-of-range ESIs or wrong span sizes; kInternal if the matrix is singular
  // (cannot happen for a Cauchy code; reported, not assumed).
  Status Decode(int k, std::span<const uint8_t> esis, std::span<const uint8_t* const> symbols,
                std::span<uint8_t* const> out, size_t len);

  // Coefficient of source j in symbol |esi| (1/0 for source rows). For tests.
  uint8_t Coefficient(int k, int esi, int j);

 private:
  const std::vector<uint8_t>& Generator(int k);

  // 255 x k generator matrices, by k.
  std::map<int, std::vector<uint8_t>> generators_;
  // Encode tables by (k, ESI list), least recently used first evicted.
  using TableKey = std::pair<int, std::vector<uint8_t>>;
  std::list<std::pair<TableKey, std::vector<uint8_t>>> tables_;
  static constexpr size_t kMaxCachedTables = 32;
};

}  // namespace ds::fec

#endif  // DELTASTREAM_FEC_REED_SOLOMON_H_
