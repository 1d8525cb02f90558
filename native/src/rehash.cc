// rehashRun and addRun: the write-back's bookkeeping for a run of blocks of
// a big write, for the whole run in one call instead of one JavaScript
// step per block, the largest part of such a write's work on the JS thread.
//
// rehashRun: for chunk ids id0 .. id0+count-1 (entries j0 .. j0+count-1 of
// one write-back chunk page) taking the blocks whose hashes are
// newHashes[at + 16k], in order, while the new hash is certainly not a
// committed chunk's (hash filter) and no new chunk has its hash prefix:
// move the chunk from its old prefix to the new one in the prefix table,
// store the new hash and mark it LIVE | UNIQUE. addRun: the same test, for
// fresh ids taking landed slots (below). Both stop at the first block that
// needs the general path (a possible duplicate) and return how many they
// did.
//
// The tables are the TypeScript ones, changed in place: the prefix table's
// layout, probing, insertion and removal are described once, in the header
// of src/blockstore/prefix-table.ts, and Table below keeps to it; the chunk
// page's columns are described in src/blockstore/chunk-page.ts (kLive,
// kUnique are its LIVE, UNIQUE); the filter's bits are hash-filter.ts's
// HashFilter (three little-endian words of the hash, each masked). The
// TypeScript side keeps each table's size and count: nothing here grows or
// shrinks a table (test/blockstore/prefix-table.test.ts checks both sides
// against each other).
//
// Why each pointer use is safe: every array comes from a typed array
// argument, read on the JS thread, and the call returns before any JS runs.
// Table probes index slots[2 * (i & mask)] and [.. + 1] after checking
// that the table holds 2 * (mask + 1) doubles with mask + 1 a power of
// two; filter probes index words[(bit & fmask) >> 5] after checking that
// it holds (fmask + 1) / 32 words with fmask + 1 a power of two and at
// least 32. The chunk page's hashes and flags are indexed below j0 + count,
// checked against their lengths, as are newHashes below at + 16 * count.
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "args.h"
#include "errors.h"

namespace dormant {

namespace {

constexpr uint64_t kHash = 16;
constexpr uint8_t kLive = 1;
constexpr uint8_t kUnique = 2;

template <typename T>
T* TypedArg(const Napi::Value& value, napi_typedarray_type type, const char* fn, const char* what, size_t* length) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != type) {
    throw Napi::TypeError::New(value.Env(), std::string(fn) + ": " + what + " has the wrong type");
  }
  Napi::TypedArray a = value.As<Napi::TypedArray>();
  *length = a.ElementLength();
  return reinterpret_cast<T*>(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset());
}

bool PowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

// The first 30 bits of a hash: the table's key (prefix-table.ts prefix()).
uint32_t Prefix(const uint8_t* h) {
  return (static_cast<uint32_t>(h[0]) << 22) | (static_cast<uint32_t>(h[1]) << 14) |
         (static_cast<uint32_t>(h[2]) << 6) | (static_cast<uint32_t>(h[3]) >> 2);
}

// The prefix table, in the layout of src/blockstore/prefix-table.ts.
struct Table {
  double* slots;
  uint64_t mask;

  double Key(uint64_t i) const { return slots[2 * i]; }

  bool Has(uint32_t key) const {
    const double k = static_cast<double>(key) + 1;
    for (uint64_t i = key & mask; Key(i) != 0; i = (i + 1) & mask) {
      if (Key(i) == k) return true;
    }
    return false;
  }

  void Add(uint32_t key, double id) {
    uint64_t i = key & mask;
    while (Key(i) != 0) i = (i + 1) & mask;
    slots[2 * i] = static_cast<double>(key) + 1;
    slots[2 * i + 1] = id;
  }

  // Removes (key, id) if present; shifts back the later entries of its probe run.
  void Remove(uint32_t key, double id) {
    const double k = static_cast<double>(key) + 1;
    uint64_t i = key & mask;
    while (Key(i) != 0 && !(Key(i) == k && slots[2 * i + 1] == id)) i = (i + 1) & mask;
    if (Key(i) == 0) return;
    for (uint64_t j = (i + 1) & mask; Key(j) != 0; j = (j + 1) & mask) {
      const uint64_t home = static_cast<uint64_t>(Key(j) - 1) & mask;
      const bool between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
      if (between) continue;
      slots[2 * i] = slots[2 * j];
      slots[2 * i + 1] = slots[2 * j + 1];
      i = j;
    }
    slots[2 * i] = 0;
  }
};

struct Filter {
  const uint32_t* words;
  uint32_t mask;

  bool Test(uint32_t word) const {
    const uint32_t bit = word & mask;
    return (words[bit >> 5] & (1u << (bit & 31))) != 0;
  }

  bool MayContain(const uint8_t* h) const {
    uint32_t w[3];
    std::memcpy(w, h, sizeof w);  // little-endian words, as readUInt32LE
    return Test(w[0]) && Test(w[1]) && Test(w[2]);
  }

  void Prefetch(const uint8_t* h) const {
    uint32_t w[3];
    std::memcpy(w, h, sizeof w);
    for (uint32_t x : w) __builtin_prefetch(&words[(x & mask) >> 5]);
  }
};

// Blocks looked at ahead of the one being moved: every probe of a block is
// a cache miss in tables of megabytes (the filter's words, the new and the
// old prefix's slots), so their lines are fetched this many blocks early
// and the misses overlap instead of following each other. A prefetch is
// only a hint: a line it brings that is not used costs nothing but the
// fetch.
constexpr uint64_t kAhead = 16;

// The prefix table (args 0, 1) and the hash filter (args 2, 3; words null:
// not built yet) every run call takes first, checked.
struct Tables {
  Table table;
  Filter filter;
  bool built;

  // Fetches the lines a probe of hash h touches: its filter words and its prefix's slot.
  void Prefetch(const uint8_t* h) const {
    filter.Prefetch(h);
    __builtin_prefetch(&table.slots[2 * (Prefix(h) & table.mask)]);
  }

  // Calls step(k, h, key) for k = 0, 1, ... < count while the filter says
  // no committed chunk has hash h (hashes + 16k) and no new chunk is filed
  // under its prefix `key`; returns how many steps ran. The lines of block
  // k + kAhead are fetched before block k is looked at (ahead(b) fetches
  // what step b touches besides the probe's).
  template <class Ahead, class Step>
  uint64_t WhileNew(const uint8_t* hashes, uint64_t count, Ahead ahead, Step step) {
    auto prefetch = [&](uint64_t b) {
      Prefetch(hashes + b * kHash);
      ahead(b);
    };
    for (uint64_t b = 0; b < kAhead && b < count; b++) prefetch(b);
    uint64_t k = 0;
    for (; k < count; k++) {
      if (k + kAhead < count) prefetch(k + kAhead);
      const uint8_t* h = hashes + k * kHash;
      const uint32_t key = Prefix(h);
      if (filter.MayContain(h) || table.Has(key)) break;
      step(k, h, key);
    }
    return k;
  }
};

Tables TablesArgs(const Napi::CallbackInfo& info, const char* fn) {
  Napi::Env env = info.Env();
  size_t slotCount = 0, wordCount = 0;
  double* slots = TypedArg<double>(info[0], napi_float64_array, fn, "slots", &slotCount);
  uint64_t mask = IntegerArg(info[1], fn, "mask", 0, UINT32_MAX);
  if (!PowerOfTwo(mask + 1) || slotCount != 2 * (mask + 1)) ThrowNative(env, EINVAL, std::string(fn) + "(mask)");
  const uint32_t* words = nullptr;
  uint64_t fmask = IntegerArg(info[3], fn, "fmask", 0, UINT32_MAX);
  if (!info[2].IsNull()) {
    words = TypedArg<uint32_t>(info[2], napi_uint32_array, fn, "words", &wordCount);
    if (!PowerOfTwo(fmask + 1) || fmask + 1 < 32 || wordCount != (fmask + 1) / 32) {
      ThrowNative(env, EINVAL, std::string(fn) + "(fmask)");
    }
  }
  return {Table{slots, mask}, Filter{words, static_cast<uint32_t>(fmask)}, words != nullptr};
}

}  // namespace

// rehashRun(slots, mask, words | null, fmask, pageHashes, pageFlags, j0, id0,
//           count, newHashes, at) -> blocks done (a prefix of the run).
// words null: the filter is not built yet (every hash may be known).
Napi::Value RehashRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "rehashRun";
  size_t pageHashLen = 0, flagLen = 0, newLen = 0;
  Tables tables = TablesArgs(info, fn);
  uint8_t* pageHashes = TypedArg<uint8_t>(info[4], napi_uint8_array, fn, "pageHashes", &pageHashLen);
  uint8_t* flags = TypedArg<uint8_t>(info[5], napi_uint8_array, fn, "pageFlags", &flagLen);
  uint64_t j0 = IntegerArg(info[6], fn, "j0", 0, flagLen);
  uint64_t id0 = IntegerArg(info[7], fn, "id0", 1, (1ULL << 53) - 1);
  uint64_t count = IntegerArg(info[8], fn, "count", 0, flagLen - j0);
  const uint8_t* newHashes = TypedArg<uint8_t>(info[9], napi_uint8_array, fn, "newHashes", &newLen);
  uint64_t at = IntegerArg(info[10], fn, "at", 0, newLen);
  if ((j0 + count) * kHash > pageHashLen) ThrowNative(env, EINVAL, "rehashRun(pageHashes)");
  if (count * kHash > newLen - at) ThrowNative(env, EINVAL, "rehashRun(newHashes)");
  if (!tables.built) return Napi::Number::New(env, 0);
  Table& table = tables.table;
  // (The old prefix's slot is touched too: fetched ahead with the new one's.)
  auto old_slot = [&](uint64_t b) {
    __builtin_prefetch(&table.slots[2 * (Prefix(pageHashes + (j0 + b) * kHash) & table.mask)]);
  };
  uint64_t k = tables.WhileNew(newHashes + at, count, old_slot, [&](uint64_t b, const uint8_t* h, uint32_t key) {
    uint8_t* old = pageHashes + (j0 + b) * kHash;
    const double id = static_cast<double>(id0 + b);
    table.Remove(Prefix(old), id);
    std::memcpy(old, h, kHash);
    flags[j0 + b] = kLive | kUnique;
    table.Add(key, id);
  });
  return Napi::Number::New(env, static_cast<double>(k));
}

// addRun(slots, mask, words | null, fmask, pageHashes, pageFlags,
//        pageSegments, pageSlots, j0, id0, count, newHashes, at, segment,
//        slot0) -> chunks added (a prefix of the run).
// The general path's bookkeeping for new chunks, for a run at once: chunk
// ids id0 .. id0+count-1 (entries j0.. of one chunk page, unused so far)
// take the hashes newHashes[at + 16k] and the slots slot0 + k of
// `segment` (where a landed write's blocks lie), while the hash filter says
// no committed chunk has the hash and no new chunk its prefix: the prefix
// is filed in the table, and the page gets hash, place and LIVE | UNIQUE.
// The caller counts them (live, new) and points the blocks at them. Same
// checks on every array as rehashRun; the table must have room for count
// more entries (the caller grows it first).
Napi::Value AddRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "addRun";
  size_t pageHashLen = 0, flagLen = 0, segLen = 0, slotLen = 0, newLen = 0;
  Tables tables = TablesArgs(info, fn);
  uint8_t* pageHashes = TypedArg<uint8_t>(info[4], napi_uint8_array, fn, "pageHashes", &pageHashLen);
  uint8_t* flags = TypedArg<uint8_t>(info[5], napi_uint8_array, fn, "pageFlags", &flagLen);
  uint32_t* segs = TypedArg<uint32_t>(info[6], napi_uint32_array, fn, "pageSegments", &segLen);
  uint32_t* places = TypedArg<uint32_t>(info[7], napi_uint32_array, fn, "pageSlots", &slotLen);
  uint64_t j0 = IntegerArg(info[8], fn, "j0", 0, flagLen);
  uint64_t id0 = IntegerArg(info[9], fn, "id0", 1, (1ULL << 53) - 1);
  uint64_t count = IntegerArg(info[10], fn, "count", 0, flagLen - j0);
  const uint8_t* newHashes = TypedArg<uint8_t>(info[11], napi_uint8_array, fn, "newHashes", &newLen);
  uint64_t at = IntegerArg(info[12], fn, "at", 0, newLen);
  uint64_t segment = IntegerArg(info[13], fn, "segment", 0, UINT32_MAX);
  uint64_t slot0 = IntegerArg(info[14], fn, "slot0", 0, UINT32_MAX);
  if ((j0 + count) * kHash > pageHashLen || j0 + count > segLen || j0 + count > slotLen) ThrowNative(env, EINVAL, "addRun(page)");
  if (count * kHash > newLen - at) ThrowNative(env, EINVAL, "addRun(newHashes)");
  if (slot0 + count > UINT32_MAX) ThrowNative(env, EINVAL, "addRun(slot0)");
  if (!tables.built) return Napi::Number::New(env, 0);
  uint64_t k = tables.WhileNew(newHashes + at, count, [](uint64_t) {}, [&](uint64_t b, const uint8_t* h, uint32_t key) {
    std::memcpy(pageHashes + (j0 + b) * kHash, h, kHash);
    flags[j0 + b] = kLive | kUnique;
    segs[j0 + b] = static_cast<uint32_t>(segment);
    places[j0 + b] = static_cast<uint32_t>(slot0 + b);
    tables.table.Add(key, static_cast<double>(id0 + b));
  });
  return Napi::Number::New(env, static_cast<double>(k));
}

}  // namespace dormant
