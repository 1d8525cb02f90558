// The block store's data path: read-only mappings of segment files, reads
// that never wait for the disk, and XXH3-128 of many 4096-byte blocks per
// call (hashing for writes, checking for reads) without a JS round trip per
// block.
//
// Why each pointer use is safe:
// - mapFile returns an external ArrayBuffer over a PROT_READ MAP_SHARED
//   mapping; JS can read it but never write it (a write would fault, and
//   ArrayBuffer views cannot be made writable past the protection). The
//   mapping is released exactly once: unmapFile unmaps it and detaches the
//   ArrayBuffer before any JS runs again (every view then has length 0, so
//   JS cannot touch the address again); the finalizer unmaps only if
//   unmapFile did not. Both run on the JS thread. Touching a page past the file's end raises
//   SIGBUS, so the TypeScript side reads only bytes below the size it knows
//   the file has (segment files only grow, by our own appends).
// - A writable mapping (mapFile's `writable`) is a second, PROT_WRITE
//   mapping of the same file. writeMapped copies into it within [0, length)
//   of the mapping after the bounds are checked here; writableView hands it
//   to JS as an external ArrayBuffer (for landings: socket reads into slots
//   the store set aside, src/blockstore/landing.ts and
//   segment-landings.ts), detached before the twin is unmapped, so no view
//   of it can outlive it. Either way only where the TypeScript side knows
//   the file has allocated bytes (past the end, or on a file system that
//   must allocate for an overwrite and cannot, the store would get SIGBUS).
//   The twin goes with unmapFile, with chargeMapping (a mapping being
//   retired is never written again) and with the finalizer.
// - Buffers are read or written through ByteView (pointer + length taken
//   from the Uint8Array on the JS thread). Every call runs to completion on
//   the JS thread, so the arrays cannot be collected or detached meanwhile.
// - preadCached writes only [offset, offset + length) of its buffer, and
//   offset + length <= byteLength is checked before any system call.
// - hashBlocks / verifyBlocks touch block i as [i*4096, (i+1)*4096) with
//   i < length/4096 after length % 4096 == 0 is checked, and write or read
//   hash i as [at + i*16, at + (i+1)*16) after at + n*16 <= byteLength of
//   the hash buffer is checked; zero flags likewise after n <= its length.
// - Zero detection loads 8 bytes at a time with memcpy (unaligned-safe).
// - gatherBlocks copies block i out of mapping sources[source[i]] at
//   [position[i], +4096) only after checking, for every source it names,
//   that the ArrayBuffer is a live mapFile mapping (not detached) and that
//   the size the TypeScript side gives (bytes the file is known to have,
//   so nothing past its end is touched) is within the mapping; then
//   position[i] + 4096 <= that size, and out's block i within out.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "args.h"
#include "errors.h"
#include "pages.h"

namespace dormant {

namespace {

constexpr uint64_t kBlock = kBlockBytes;
constexpr uint64_t kHash = kBlockHashBytes;
constexpr uint64_t kMaxPosition = 1ULL << 53;

uint64_t BlocksOf(const Napi::Env& env, const ByteView& v, const char* fn) {
  if (v.length % kBlock != 0) ThrowNative(env, EINVAL, std::string(fn) + "(length)");
  return v.length / kBlock;
}

struct Mapping {
  void* addr;
  size_t length;
  bool mapped;
  bool charged;  // counted as external memory by chargeMapping
  void* writable;  // the PROT_WRITE twin, or nullptr
  Napi::Reference<Napi::ArrayBuffer> twin;  // weak: the twin as JS sees it (writableView), if ever made
};

// Unmaps the writable twin. `env` null (a finalizer): a twin JS may still
// hold is left mapped rather than made to dangle (segment-maps.ts never
// lets a segment's mapping go while segment-landings.ts holds the segment
// for a landing, so this does not happen).
void DropWritable(Mapping* m, napi_env env) {
  if (m->writable == nullptr) return;
  if (!m->twin.IsEmpty() && !m->twin.Value().IsEmpty()) {
    if (env == nullptr) return;
    m->twin.Value().Detach();  // every view of it has length 0 from here on
  }
  m->twin.Reset();
  munmap(m->writable, m->length);
  m->writable = nullptr;
}

// Mappings not yet unmapped, by address (JS thread only).
std::unordered_map<void*, Mapping*>& LiveMappings() {
  static std::unordered_map<void*, Mapping*> live;
  return live;
}

void FinalizeMapping(Napi::Env env, void*, Mapping* m) {
  if (m->charged) Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(m->length));
  if (m->mapped) {
    auto it = LiveMappings().find(m->addr);
    if (it != LiveMappings().end() && it->second == m) LiveMappings().erase(it);
    munmap(m->addr, m->length);
  }
  DropWritable(m, nullptr);
  delete m;
}

}  // namespace

// mapFile(fd, length, writable = false) -> ArrayBuffer over
// mmap(PROT_READ, MAP_SHARED) of the first `length` bytes of fd (1 byte ..
// 1 TiB; may pass the file's end, those pages must not be read until the
// file covers them). With `writable`, a PROT_WRITE twin of it is made for
// writeMapped (fd must be open for writing).
Napi::Value MapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(IntegerArg(info[0], "mapFile", "fd", 0, INT_MAX));
  uint64_t length = IntegerArg(info[1], "mapFile", "length", 1, kMaxResidencyBytes);
  bool writable = info.Length() > 2 && info[2].ToBoolean().Value();
  void* addr = mmap(nullptr, static_cast<size_t>(length), PROT_READ, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) ThrowNative(env, errno, "mmap");
  void* rw = nullptr;
  if (writable) {
    rw = mmap(nullptr, static_cast<size_t>(length), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (rw == MAP_FAILED) {
      int err = errno;
      munmap(addr, static_cast<size_t>(length));
      ThrowNative(env, err, "mmap");
    }
  }
  auto* m = new Mapping{addr, static_cast<size_t>(length), true, false, rw, {}};
  try {
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, addr, m->length, FinalizeMapping, m);
    LiveMappings()[addr] = m;
    return ab;
  } catch (...) {
    munmap(addr, m->length);
    DropWritable(m, env);
    delete m;
    throw;
  }
}

namespace {

// The live mapping a mapFile buffer stands for, made `writable`: TypeError
// for anything but an ArrayBuffer, EINVAL for one that is not such a
// mapping (any more).
Mapping* WritableMappingArg(const Napi::Value& value, const char* fn) {
  Napi::Env env = value.Env();
  if (!value.IsArrayBuffer()) throw Napi::TypeError::New(env, std::string(fn) + ": expected an ArrayBuffer from mapFile");
  Napi::ArrayBuffer ab = value.As<Napi::ArrayBuffer>();
  auto it = LiveMappings().find(ab.Data());
  if (ab.ByteLength() == 0 || it == LiveMappings().end() || it->second->writable == nullptr) {
    ThrowNative(env, EINVAL, std::string(fn) + "(mapping)");
  }
  return it->second;
}

}  // namespace

// writeMapped(arrayBuffer, position, src, srcOffset, length): copies
// src[srcOffset, +length) into the file through the writable twin of a
// mapFile buffer, at `position` (a memcpy into the page cache: no system
// call, no per-page work in the kernel once the pages are mapped dirty).
Napi::Value WriteMapped(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "writeMapped";
  Mapping* m = WritableMappingArg(info[0], fn);
  ByteView src = BytesArg(info[2], fn);
  uint64_t position = IntegerArg(info[1], fn, "position", 0, m->length);
  uint64_t offset = IntegerArg(info[3], fn, "srcOffset", 0, src.length);
  uint64_t length = IntegerArg(info[4], fn, "length", 0, std::min<uint64_t>(src.length - offset, m->length - position));
  std::memcpy(static_cast<uint8_t*>(m->writable) + position, src.data + offset, static_cast<size_t>(length));
  return env.Undefined();
}

// writableView(arrayBuffer) -> the writable twin of a mapFile buffer made
// `writable`, as an ArrayBuffer (the same one while it lives): for data a
// socket read puts straight into the page cache. It is detached when the
// twin goes (unmapFile, chargeMapping), so no view of it outlives the
// mapping; until then the TypeScript side writes only slots it reserved.
Napi::Value WritableView(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mapping* m = WritableMappingArg(info[0], "writableView");
  if (!m->twin.IsEmpty() && !m->twin.Value().IsEmpty()) return m->twin.Value();
  // External, without a finalizer: the memory is the mapping's, released by DropWritable.
  Napi::ArrayBuffer twin = Napi::ArrayBuffer::New(env, m->writable, m->length);
  m->twin = Napi::Weak(twin);
  return twin;
}

namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

// Faults in a range of a writable twin on libuv's pool. The mapping stays
// mapped meanwhile: segment-landings.ts holds the segment, as a landing
// does, until the promise settles, so segment-maps.ts keeps its mapping
// (and the worker holds the twin's ArrayBuffer too).
class PopulateWorker : public Napi::AsyncWorker {
 public:
  PopulateWorker(Napi::Env env, Napi::ArrayBuffer twin, uint8_t* start, size_t length)
      : Napi::AsyncWorker(env, "dormant:populateMapped"), deferred_(Napi::Promise::Deferred::New(env)),
        twin_(Napi::Persistent(twin)), start_(start), length_(length) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    while (madvise(start_, length_, MADV_POPULATE_WRITE) != 0) {
      if (errno == EINTR) continue;
      err_ = errno;  // (EINVAL: a kernel before 5.14; nothing was done, nothing is wrong)
      return;
    }
  }

  void OnOK() override {
    twin_.Reset();
    deferred_.Resolve(Napi::Number::New(Env(), err_));
  }

  void OnError(const Napi::Error& e) override {
    twin_.Reset();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::ArrayBuffer> twin_;
  uint8_t* start_;
  size_t length_;
  int err_ = 0;
};

}  // namespace

// populateMapped(twin, position, length) -> Promise<errno or 0>: the pages
// of [position, +length) of a writable twin (writableView) faulted in and
// made writable, on libuv's pool (madvise MADV_POPULATE_WRITE), so that a
// socket read into them later takes no page fault on the JS thread. The
// range's blocks must be allocated (allocateRange): else a full disk
// would be SIGBUS here too.
Napi::Value PopulateMapped(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "populateMapped: expected a writable twin");
  Napi::ArrayBuffer twin = info[0].As<Napi::ArrayBuffer>();
  size_t size = twin.ByteLength();
  uint64_t position = IntegerArg(info[1], "populateMapped", "position", 0, size);
  uint64_t length = IntegerArg(info[2], "populateMapped", "length", 1, size - position);
  uint64_t page = PageSize();
  if (position % page != 0 || length % page != 0) ThrowNative(env, EINVAL, "populateMapped(alignment)");
  auto* worker = new PopulateWorker(env, twin, static_cast<uint8_t*>(twin.Data()) + position, static_cast<size_t>(length));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// allocateRange(fd, position, length): fallocate(fd, 0, ...): the blocks
// of the range are allocated now, so that writes through a mapping into
// them (which cannot report ENOSPC: a full disk would be SIGBUS) need none.
Napi::Value AllocateRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(IntegerArg(info[0], "allocateRange", "fd", 0, INT_MAX));
  uint64_t position = IntegerArg(info[1], "allocateRange", "position", 0, kMaxPosition);
  uint64_t length = IntegerArg(info[2], "allocateRange", "length", 1, kMaxPosition);
  while (fallocate(fd, 0, static_cast<off_t>(position), static_cast<off_t>(length)) != 0) {
    if (errno != EINTR) ThrowNative(env, errno, "fallocate");
  }
  return env.Undefined();
}

// unmapFile(arrayBuffer): unmaps an ArrayBuffer made by mapFile now
// (instead of whenever it is collected) and detaches it. Idempotent.
Napi::Value UnmapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "unmapFile: expected an ArrayBuffer from mapFile");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  auto it = LiveMappings().find(ab.Data());
  if (ab.ByteLength() == 0 || it == LiveMappings().end()) return env.Undefined();  // detached, or not ours
  Mapping* m = it->second;
  LiveMappings().erase(it);
  munmap(m->addr, m->length);
  DropWritable(m, env);
  m->mapped = false;  // the finalizer, whenever it runs, only frees m
  ab.Detach();        // no JS code runs between munmap and here; afterwards every view has length 0
  return env.Undefined();
}

// chargeMapping(arrayBuffer): counts a mapFile buffer's length as external
// memory until it is collected. For a mapping that can no longer be
// unmapped by hand (views of it are out) while it pins a deleted file's
// disk space: the charge makes the garbage collector collect it soon.
Napi::Value ChargeMapping(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "chargeMapping: expected an ArrayBuffer from mapFile");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  auto it = LiveMappings().find(ab.Data());
  if (ab.ByteLength() == 0 || it == LiveMappings().end() || it->second->charged) return env.Undefined();
  it->second->charged = true;
  DropWritable(it->second, env);  // retired: never written again
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(it->second->length));
  return env.Undefined();
}

// preadCached(fd, buffer, offset, length, position) -> bytes read, or -1
// when the bytes are not all in the page cache (preadv2 RWF_NOWAIT gave
// EAGAIN): the caller then reads on libuv's pool. A file system without
// RWF_NOWAIT gets a plain pread. Fewer bytes than asked means end of file.
Napi::Value PreadCached(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "preadCached";
  int fd = static_cast<int>(IntegerArg(info[0], fn, "fd", 0, INT_MAX));
  ByteView view = BytesArg(info[1], fn);
  uint64_t offset = IntegerArg(info[2], fn, "offset", 0, view.length);
  uint64_t length = IntegerArg(info[3], fn, "length", 0, view.length - offset);
  uint64_t position = IntegerArg(info[4], fn, "position", 0, kMaxPosition);
  uint8_t* base = const_cast<uint8_t*>(view.data) + offset;  // a Buffer the caller lends us to fill
  uint64_t done = 0;
  bool nowait = true;
  while (done < length) {
    struct iovec iov = {base + done, static_cast<size_t>(length - done)};
    ssize_t n = preadv2(fd, &iov, 1, static_cast<off_t>(position + done), nowait ? RWF_NOWAIT : 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return Napi::Number::New(env, -1);
      if (errno == EOPNOTSUPP && nowait) { nowait = false; continue; }
      ThrowNative(env, errno, "preadv2");
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  return Napi::Number::New(env, static_cast<double>(done));
}

// hashBlocks(data, hashes, zero) -> number of all-zero blocks. For block i
// of data: zero[i] = 1 and hashes[i*16, +16) left as is when it is all
// zeroes, else zero[i] = 0 and its XXH3-128 written there.
Napi::Value HashBlocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "hashBlocks";
  ByteView data = BytesArg(info[0], fn);
  ByteView hashes = BytesArg(info[1], fn);
  ByteView zero = BytesArg(info[2], fn);
  uint64_t n = BlocksOf(env, data, fn);
  if (hashes.length < n * kHash) ThrowNative(env, EINVAL, "hashBlocks(hashes)");
  if (zero.length < n) ThrowNative(env, EINVAL, "hashBlocks(zero)");
  uint64_t zeros = HashBlockRun(data.data, n, const_cast<uint8_t*>(hashes.data), const_cast<uint8_t*>(zero.data));
  return Napi::Number::New(env, static_cast<double>(zeros));
}

// verifyBlocks(data, hashes, at) -> -1 when every block i of data hashes to
// hashes[at + i*16, +16), else the index of the first block that does not.
Napi::Value VerifyBlocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "verifyBlocks";
  ByteView data = BytesArg(info[0], fn);
  ByteView hashes = BytesArg(info[1], fn);
  uint64_t n = BlocksOf(env, data, fn);
  uint64_t at = IntegerArg(info[2], fn, "at", 0, hashes.length);
  if (hashes.length - at < n * kHash) ThrowNative(env, EINVAL, "verifyBlocks(hashes)");
  for (uint64_t i = 0; i < n; i++) {
    uint8_t got[kHash];
    CanonicalHash128(data.data + i * kBlock, kBlock, got);
    if (std::memcmp(got, hashes.data + at + i * kHash, kHash) != 0) return Napi::Number::New(env, static_cast<double>(i));
  }
  return Napi::Number::New(env, -1);
}

// gatherBlocks(sources, sizes, source, position, n, out, outOffset, hashes)
// -> -1 when all went well; i >= 0 when block i does not match its hash;
// -2 - i when block i lies past its source's known size (nothing copied
// from there on). Block i of out (at outOffset + i*4096): source[i] >= 0:
// copied from the mapFile buffer sources[source[i]] at position[i], then
// checked against hashes[i*16, +16); -1: a hole, zero-filled, not checked;
// -2: already there (the caller copied it), checked only. sizes[k] is how
// many bytes of sources[k]'s file may be read. One call for a whole
// request whose blocks are scattered over segments.
Napi::Value GatherBlocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "gatherBlocks";
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "gatherBlocks: expected an array of mappings");
  Napi::Array list = info[0].As<Napi::Array>();
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      !info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
      !info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    throw Napi::TypeError::New(env, "gatherBlocks: expected Float64Array sizes, Int32Array source, Float64Array position");
  }
  Napi::Float64Array sizes = info[1].As<Napi::Float64Array>();
  Napi::Int32Array source = info[2].As<Napi::Int32Array>();
  Napi::Float64Array position = info[3].As<Napi::Float64Array>();
  uint64_t n = IntegerArg(info[4], fn, "n", 0, std::min(source.ElementLength(), position.ElementLength()));
  ByteView out = BytesArg(info[5], fn);
  uint64_t outOffset = IntegerArg(info[6], fn, "outOffset", 0, out.length);
  ByteView hashes = BytesArg(info[7], fn);
  if ((out.length - outOffset) / kBlock < n) ThrowNative(env, EINVAL, "gatherBlocks(out)");
  if (hashes.length / kHash < n) ThrowNative(env, EINVAL, "gatherBlocks(hashes)");
  uint32_t count = list.Length();
  if (sizes.ElementLength() < count) ThrowNative(env, EINVAL, "gatherBlocks(sizes)");
  std::vector<const uint8_t*> base(count);
  std::vector<uint64_t> limit(count);
  for (uint32_t k = 0; k < count; k++) {
    Napi::Value v = list[k];
    if (!v.IsArrayBuffer()) throw Napi::TypeError::New(env, "gatherBlocks: expected an ArrayBuffer from mapFile");
    Napi::ArrayBuffer ab = v.As<Napi::ArrayBuffer>();
    auto it = LiveMappings().find(ab.Data());
    double size = sizes[k];
    if (ab.ByteLength() == 0 || it == LiveMappings().end() || !(size >= 0) || size > static_cast<double>(ab.ByteLength())) {
      ThrowNative(env, EINVAL, "gatherBlocks(mapping)");
    }
    base[k] = static_cast<const uint8_t*>(ab.Data());
    limit[k] = static_cast<uint64_t>(size);
  }
  uint8_t* dest = const_cast<uint8_t*>(out.data) + outOffset;  // a Buffer the caller lends us to fill
  for (uint64_t i = 0; i < n; i++) {
    int32_t k = source[i];
    uint8_t* block = dest + i * kBlock;
    if (k == -1) {
      std::memset(block, 0, kBlock);
      continue;
    }
    if (k >= 0) {
      if (static_cast<uint32_t>(k) >= count) ThrowNative(env, EINVAL, "gatherBlocks(source)");
      double at = position[i];
      if (!(at >= 0) || at + kBlock > static_cast<double>(limit[k])) return Napi::Number::New(env, -2.0 - static_cast<double>(i));
      std::memcpy(block, base[k] + static_cast<uint64_t>(at), kBlock);
    } else if (k != -2) {
      ThrowNative(env, EINVAL, "gatherBlocks(source)");
    }
    uint8_t got[kHash];
    CanonicalHash128(block, kBlock, got);
    if (std::memcmp(got, hashes.data + i * kHash, kHash) != 0) return Napi::Number::New(env, static_cast<double>(i));
  }
  return Napi::Number::New(env, -1);
}

}  // namespace dormant
