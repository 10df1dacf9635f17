#include "fec/reed_solomon.h"

#include <isa-l/erasure_code.h>

#include <cstring>
#include <string>

namespace ds::fec {

const std::vector<uint8_t>& ReedSolomon::Generator(int k) {
  auto it = generators_.find(k);
  if (it != generators_.end()) return it->second;
  std::vector<uint8_t> m(static_cast<size_t>(kMaxSymbolsPerBlock) * k);
  gf_gen_cauchy1_matrix(m.data(), kMaxSymbolsPerBlock, k);
  return generators_.emplace(k, std::move(m)).first->second;
}

uint8_t ReedSolomon::Coefficient(int k, int esi, int j) {
  return Generator(k)[static_cast<size_t>(esi) * k + j];
}

Status ReedSolomon::Encode(int k, std::span<const uint8_t* const> source,
                           std::span<const uint8_t> esis, std::span<uint8_t* const> out,
                           size_t len) {
  if (k < 1 || k > kMaxEsi || source.size() != static_cast<size_t>(k) ||
      out.size() != esis.size() || len > (1u << 30)) {
    return Error(ErrorCode::kInvalidArgument, "rs encode: bad block shape");
  }
  for (uint8_t e : esis) {
    if (e < k || e > kMaxEsi) {
      return Error(ErrorCode::kInvalidArgument, "rs encode: repair ESI " + std::to_string(e) +
                                                    " outside [" + std::to_string(k) + ", 254]");
    }
  }
  if (esis.empty() || len == 0) return Status::Ok();
  TableKey key{k, std::vector<uint8_t>(esis.begin(), esis.end())};
  auto it = tables_.begin();
  for (; it != tables_.end(); ++it) {
    if (it->first == key) break;
  }
  if (it == tables_.end()) {
    const std::vector<uint8_t>& gen = Generator(k);
    std::vector<uint8_t> rows(esis.size() * k);
    for (size_t r = 0; r < esis.size(); ++r) {
      std::memcpy(rows.data() + r * k, gen.data() + static_cast<size_t>(esis[r]) * k, k);
    }
    std::vector<uint8_t> tbl(32u * k * esis.size());
    ec_init_tables(k, static_cast<int>(esis.size()), rows.data(), tbl.data());
    tables_.emplace_front(std::move(key), std::move(tbl));
    if (tables_.size() > kMaxCachedTables) tables_.pop_back();
  } else if (it != tables_.begin()) {
    tables_.splice(tables_.begin(), tables_, it);
  }
  std::vector<uint8_t>& tbl = tables_.front().second;
  // ISA-L takes non-const pointers but only reads the sources.
  std::vector<uint8_t*> src(k);
  for (int j = 0; j < k; ++j) src[j] = const_cast<uint8_t*>(source[j]);
  std::vector<uint8_t*> dst(out.begin(), out.end());
  ec_encode_data(static_cast<int>(len), k, static_cast<int>(esis.size()), tbl.data(), src.data(),
                 dst.data());
  return Status::Ok();
}

Status ReedSolomon::Decode(int k, std::span<const uint8_t> esis,
                           std::span<const uint8_t* const> symbols, std::span<uint8_t* const> out,
                           size_t len) {
  if (k < 1 || k > kMaxEsi || esis.size() != static_cast<size_t>(k) ||
      symbols.size() != static_cast<size_t>(k) || out.size() != static_cast<size_t>(k) ||
      len > (1u << 30)) {
    return Error(ErrorCode::kInvalidArgument, "rs decode: need exactly k symbols");
  }
  std::vector<int> source_at(k, -1);  // source j -> input index
  std::vector<int> repairs;           // input indexes of repair symbols
  std::vector<bool> seen(kMaxSymbolsPerBlock, false);
  for (int i = 0; i < k; ++i) {
    const uint8_t e = esis[i];
    if (e > kMaxEsi || seen[e]) {
      return Error(ErrorCode::kInvalidArgument, "rs decode: ESI repeated or out of range");
    }
    seen[e] = true;
    if (e < k) {
      source_at[e] = i;
    } else {
      repairs.push_back(i);
    }
  }
  std::vector<int> missing;
  for (int j = 0; j < k; ++j) {
    if (source_at[j] < 0) {
      missing.push_back(j);
    } else if (len) {
      std::memcpy(out[j], symbols[source_at[j]], len);
    }
  }
  if (missing.empty() || len == 0) return Status::Ok();
  const int e = static_cast<int>(missing.size());  // == repairs.size()
  const std::vector<uint8_t>& gen = Generator(k);
  auto coef = [&](int esi, int j) { return gen[static_cast<size_t>(esi) * k + j]; };
  // repair_p = sum_{j missing} C[p][j] x_j + sum_{j present} C[p][j] x_j, so
  // x_M = A^-1 * (r_P + C[P][S] x_S) with A = C[P][M] (characteristic 2: minus is plus).
  std::vector<uint8_t> a(static_cast<size_t>(e) * e), inv(static_cast<size_t>(e) * e);
  for (int r = 0; r < e; ++r) {
    for (int c = 0; c < e; ++c) a[r * e + c] = coef(esis[repairs[r]], missing[c]);
  }
  if (gf_invert_matrix(a.data(), inv.data(), e) != 0) {
    return Error(ErrorCode::kInternal, "rs decode: singular matrix");
  }
  // Decode matrix: e rows over the k inputs in input order. The part over the present sources,
  // A^-1 * C[P][S], is itself a GF(2^8) matrix product: run it through ec_encode_data (SIMD)
  // with A^-1 as the coding matrix and the rows of C[P][S] as the "data".
  std::vector<uint8_t> dm(static_cast<size_t>(e) * k, 0);
  for (int m = 0; m < e; ++m) {
    for (int r = 0; r < e; ++r) dm[m * k + repairs[r]] = inv[m * e + r];
  }
  const int ns = k - e;
  if (ns > 0) {
    std::vector<uint8_t> cps(static_cast<size_t>(e) * ns), prod(static_cast<size_t>(e) * ns);
    std::vector<int> present;
    for (int j = 0; j < k; ++j) {
      if (source_at[j] >= 0) present.push_back(j);
    }
    for (int r = 0; r < e; ++r) {
      for (int x = 0; x < ns; ++x) cps[r * ns + x] = coef(esis[repairs[r]], present[x]);
    }
    std::vector<uint8_t> inv_tbl(32u * e * e);
    ec_init_tables(e, e, inv.data(), inv_tbl.data());
    std::vector<uint8_t*> rows_in(e), rows_out(e);
    for (int r = 0; r < e; ++r) {
      rows_in[r] = cps.data() + static_cast<size_t>(r) * ns;
      rows_out[r] = prod.data() + static_cast<size_t>(r) * ns;
    }
    ec_encode_data(ns, e, e, inv_tbl.data(), rows_in.data(), rows_out.data());
    for (int m = 0; m < e; ++m) {
      for (int x = 0; x < ns; ++x) dm[m * k + source_at[present[x]]] = prod[m * ns + x];
    }
  }
  std::vector<uint8_t> tbl(32u * k * e);
  ec_init_tables(k, e, dm.data(), tbl.data());
  std::vector<uint8_t*> src(k);
  for (int i = 0; i < k; ++i) src[i] = const_cast<uint8_t*>(symbols[i]);
  std::vector<uint8_t*> dst(e);
  for (int m = 0; m < e; ++m) dst[m] = out[missing[m]];
  ec_encode_data(static_cast<int>(len), k, e, tbl.data(), src.data(), dst.data());
  return Status::Ok();
}

}  // namespace ds::fec
