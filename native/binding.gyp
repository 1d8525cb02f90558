# Builds dormant_native.node (see README.md). Built by scripts/setup.sh with
# `node-gyp rebuild -C native --nodedir=/usr`; xxhash.h comes from the Debian
# package libxxhash-dev and is compiled in (XXH_INLINE_ALL), so nothing is
# linked at run time beyond libc and libfuse3 (fuse.cc: the FUSE view's
# session; headers from libfuse3-dev, the library from libfuse3-3). XXH3 is built three times (xxh3_isa.cc:
# baseline, AVX2, AVX-512) and xxh3.cc picks one at load time.
{
  "targets": [
    {
      "target_name": "xxh3_base",
      "type": "static_library",
      "sources": ["src/xxh3_isa.cc"],
      "defines": ["DORMANT_XXH3_ISA=base"],
      "cflags": ["-fPIC", "-O3"]
    },
    {
      "target_name": "xxh3_avx2",
      "type": "static_library",
      "sources": ["src/xxh3_isa.cc"],
      "defines": ["DORMANT_XXH3_ISA=avx2"],
      "cflags": ["-fPIC", "-O3"],
      "conditions": [["target_arch=='x64'", {"cflags": ["-mavx2"]}]]
    },
    {
      "target_name": "xxh3_avx512",
      "type": "static_library",
      "sources": ["src/xxh3_isa.cc"],
      "defines": ["DORMANT_XXH3_ISA=avx512"],
      "cflags": ["-fPIC", "-O3"],
      "conditions": [["target_arch=='x64'", {"cflags": ["-mavx512f"]}]]
    },
    {
      "target_name": "dormant_native",
      "sources": [
        "src/addon.cc",
        "src/errors.cc",
        "src/args.cc",
        "src/process.cc",
        "src/residency.cc",
        "src/hash.cc",
        "src/store.cc",
        "src/socket.cc",
        "src/recv.cc",
        "src/rehash.cc",
        "src/fuse.cc",
        "src/xxh3.cc"
      ],
      "dependencies": ["xxh3_base", "xxh3_avx2", "xxh3_avx512"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "/usr/include/fuse3"],
      "libraries": ["-lfuse3", "-lpthread"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-fexceptions", "-std=gnu++17", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
