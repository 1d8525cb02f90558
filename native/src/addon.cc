// dormant_native: the module table. Each binding lives in its own file
// (process.cc, residency.cc, hash.cc, store.cc, socket.cc, recv.cc, rehash.cc, fuse.cc) and validates its own arguments; no
// pointers are kept here.
#include <napi.h>

#include "args.h"
#include "xxh3.h"

namespace dormant {

Napi::Value PidfdOpen(const Napi::CallbackInfo& info);
Napi::Value ProcessMadvise(const Napi::CallbackInfo& info);
Napi::Value SetCloexec(const Napi::CallbackInfo& info);
Napi::Value SetThreadIdle(const Napi::CallbackInfo& info);
Napi::Value MappingResidency(const Napi::CallbackInfo& info);
Napi::Value FileResidency(const Napi::CallbackInfo& info);
Napi::Value FileCached(const Napi::CallbackInfo& info);
Napi::Value FileAdvise(const Napi::CallbackInfo& info);
Napi::Value HashPages(const Napi::CallbackInfo& info);
Napi::Value HashPagesAsync(const Napi::CallbackInfo& info);
Napi::Value MapFile(const Napi::CallbackInfo& info);
Napi::Value UnmapFile(const Napi::CallbackInfo& info);
Napi::Value WriteMapped(const Napi::CallbackInfo& info);
Napi::Value WritableView(const Napi::CallbackInfo& info);
Napi::Value AllocateRange(const Napi::CallbackInfo& info);
Napi::Value PopulateMapped(const Napi::CallbackInfo& info);
Napi::Value ChargeMapping(const Napi::CallbackInfo& info);
Napi::Value SetSendBuffer(const Napi::CallbackInfo& info);
Napi::Value NotifySocket(const Napi::CallbackInfo& info);
Napi::Value SendFileRange(const Napi::CallbackInfo& info);
Napi::Value RecvStreamStart(const Napi::CallbackInfo& info);
Napi::Value PreadCached(const Napi::CallbackInfo& info);
Napi::Value HashBlocks(const Napi::CallbackInfo& info);
Napi::Value VerifyBlocks(const Napi::CallbackInfo& info);
Napi::Value GatherBlocks(const Napi::CallbackInfo& info);
Napi::Value RehashRun(const Napi::CallbackInfo& info);
Napi::Value AddRun(const Napi::CallbackInfo& info);
Napi::Value FuseMount(const Napi::CallbackInfo& info);
Napi::Value FuseStop(const Napi::CallbackInfo& info);
Napi::Value FuseInFlight(const Napi::CallbackInfo& info);
Napi::Value FuseDestroy(const Napi::CallbackInfo& info);
Napi::Value FuseReplyErr(const Napi::CallbackInfo& info);
Napi::Value FuseReplyBuf(const Napi::CallbackInfo& info);
Napi::Value FuseReplyWrite(const Napi::CallbackInfo& info);
Napi::Value FuseReplyOpen(const Napi::CallbackInfo& info);
Napi::Value FuseReplyAttr(const Napi::CallbackInfo& info);
Napi::Value FuseReplyEntry(const Napi::CallbackInfo& info);
Napi::Value FuseReplyStatfs(const Napi::CallbackInfo& info);
Napi::Value FuseReplyDir(const Napi::CallbackInfo& info);
Napi::Value FuseReplyFile(const Napi::CallbackInfo& info);

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen, "pidfdOpen"));
  exports.Set("processMadvise", Napi::Function::New(env, ProcessMadvise, "processMadvise"));
  exports.Set("setCloexec", Napi::Function::New(env, SetCloexec, "setCloexec"));
  exports.Set("setThreadIdle", Napi::Function::New(env, SetThreadIdle, "setThreadIdle"));
  exports.Set("mappingResidency", Napi::Function::New(env, MappingResidency, "mappingResidency"));
  exports.Set("fileResidency", Napi::Function::New(env, FileResidency, "fileResidency"));
  exports.Set("fileCached", Napi::Function::New(env, FileCached, "fileCached"));
  exports.Set("fileAdvise", Napi::Function::New(env, FileAdvise, "fileAdvise"));
  exports.Set("hashPages", Napi::Function::New(env, HashPages, "hashPages"));
  exports.Set("hashPagesAsync", Napi::Function::New(env, HashPagesAsync, "hashPagesAsync"));
  exports.Set("mapFile", Napi::Function::New(env, MapFile, "mapFile"));
  exports.Set("unmapFile", Napi::Function::New(env, UnmapFile, "unmapFile"));
  exports.Set("writeMapped", Napi::Function::New(env, WriteMapped, "writeMapped"));
  exports.Set("writableView", Napi::Function::New(env, WritableView, "writableView"));
  exports.Set("allocateRange", Napi::Function::New(env, AllocateRange, "allocateRange"));
  exports.Set("populateMapped", Napi::Function::New(env, PopulateMapped, "populateMapped"));
  exports.Set("chargeMapping", Napi::Function::New(env, ChargeMapping, "chargeMapping"));
  exports.Set("setSendBuffer", Napi::Function::New(env, SetSendBuffer, "setSendBuffer"));
  exports.Set("notifySocket", Napi::Function::New(env, NotifySocket, "notifySocket"));
  exports.Set("sendFileRange", Napi::Function::New(env, SendFileRange, "sendFileRange"));
  exports.Set("recvStream", Napi::Function::New(env, RecvStreamStart, "recvStream"));
  exports.Set("preadCached", Napi::Function::New(env, PreadCached, "preadCached"));
  exports.Set("hashBlocks", Napi::Function::New(env, HashBlocks, "hashBlocks"));
  exports.Set("verifyBlocks", Napi::Function::New(env, VerifyBlocks, "verifyBlocks"));
  exports.Set("gatherBlocks", Napi::Function::New(env, GatherBlocks, "gatherBlocks"));
  exports.Set("rehashRun", Napi::Function::New(env, RehashRun, "rehashRun"));
  exports.Set("addRun", Napi::Function::New(env, AddRun, "addRun"));
  exports.Set("fuseMount", Napi::Function::New(env, FuseMount, "fuseMount"));
  exports.Set("fuseStop", Napi::Function::New(env, FuseStop, "fuseStop"));
  exports.Set("fuseInFlight", Napi::Function::New(env, FuseInFlight, "fuseInFlight"));
  exports.Set("fuseDestroy", Napi::Function::New(env, FuseDestroy, "fuseDestroy"));
  exports.Set("fuseReplyErr", Napi::Function::New(env, FuseReplyErr, "fuseReplyErr"));
  exports.Set("fuseReplyBuf", Napi::Function::New(env, FuseReplyBuf, "fuseReplyBuf"));
  exports.Set("fuseReplyWrite", Napi::Function::New(env, FuseReplyWrite, "fuseReplyWrite"));
  exports.Set("fuseReplyOpen", Napi::Function::New(env, FuseReplyOpen, "fuseReplyOpen"));
  exports.Set("fuseReplyAttr", Napi::Function::New(env, FuseReplyAttr, "fuseReplyAttr"));
  exports.Set("fuseReplyEntry", Napi::Function::New(env, FuseReplyEntry, "fuseReplyEntry"));
  exports.Set("fuseReplyStatfs", Napi::Function::New(env, FuseReplyStatfs, "fuseReplyStatfs"));
  exports.Set("fuseReplyDir", Napi::Function::New(env, FuseReplyDir, "fuseReplyDir"));
  exports.Set("fuseReplyFile", Napi::Function::New(env, FuseReplyFile, "fuseReplyFile"));
  exports.Set("XXH3_ISA", Napi::String::New(env, Xxh3Isa()));
  exports.Set("PAGE_SIZE", Napi::Number::New(env, static_cast<double>(PageSize())));
  return exports;
}

}  // namespace dormant

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return dormant::Init(env, exports); }

NODE_API_MODULE(dormant_native, InitModule)
