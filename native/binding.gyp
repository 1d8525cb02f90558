# Builds dormant_native.node (see README.md). Built by scripts/setup.sh with
# `node-gyp rebuild -C native --nodedir=/usr`; xxhash.h comes from the Debian
# package libxxhash-dev and is compiled in (XXH_INLINE_ALL), so nothing is
# linked at run time beyond libc.
{
  "targets": [
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
        "src/rehash.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-fexceptions", "-std=gnu++17", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
