{
  "targets": [
    {
      "target_name": "fuse_channel",
      "sources": ["native/fuse_channel.c"],
      "cflags": ["-O2", "-Wall", "-D_FILE_OFFSET_BITS=64", "-I/usr/include/fuse"],
      "libraries": ["-lfuse", "-pthread"]
    },
    {
      "target_name": "object_io",
      "sources": ["native/object_io.c", "native/crc32.c"],
      "cflags": ["-O2", "-Wall", "-D_FILE_OFFSET_BITS=64"]
    }
  ]
}
