// Whole-object I/O for the local device (src/devices/local.ts), each call one job on
// libuv's thread pool. Node's fs would take four to six jobs for the same work (open,
// write, fsync, close, the directory's fsync; or open, fstat, read, close), and every job
// wakes two threads: on a virtual machine that costs as much as the copying.
//
//   put(path, dirFd, data, flags, cb)
//                                 create path (O_EXCL) and write data; with PUT_DURABLE fsync it and
//                                 the directory dirFd, with PUT_DIRECT bypass the page cache;
//                                 cb(errno): 0, or the error (a failed put removes what it made;
//                                 EEXIST: nothing was touched)
//   syncfs(fd, cb)                make everything written on the file system of fd durable (one
//                                 journal commit for every object put without PUT_DURABLE)
//   aligned(size)                 a Buffer whose memory starts on a 4096-byte boundary: a put of it
//                                 goes to the disk as it is, without the staging copy
//   read(path, maxBytes, into, directFrom, cb)
//                                 the whole file: cb(errno, buffer, crc); EFBIG past maxBytes. crc
//                                 is its CRC-32, computed on the pool thread (crc32.c).
//                                 `into` (a Buffer, or null): read there when the file fits, and
//                                 answer cb(0, null, crc, length) instead (no allocation).
//                                 A file of directFrom bytes or more is read past the page cache
//   readCached(fd, into, offset)  on the calling thread, no job: read into `into` at offset what the
//                                 page cache holds (preadv2 RWF_NOWAIT), never waiting for the disk.
//                                 Returns the bytes read (fewer, or 0, when the rest is not cached or
//                                 the kernel cannot tell), or -errno. A cached small read then costs
//                                 no thread-pool round trip at all.
//   mmapThreshold(bytes)          mallopt(M_MMAP_THRESHOLD): allocations from this size on are mmap'd
//                                 and go back to the system when freed (see src/devices/object-io.ts)
//   trim()                        malloc_trim(0): free pages inside malloc's heap go back to the system
//   crc32(data[, crc])            the CRC-32 of data (continuing crc), on the calling thread: for tests.
//   folds                         true when the CRC uses carry-less multiplication (PCLMULQDQ).
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <node_api.h>

#include "crc32.h"

#define OBJECT_IO_VERSION 9
#define PUT_DURABLE 1
#define PUT_DIRECT 2


typedef struct {
  napi_async_work work;
  napi_ref callback;
  napi_ref data_ref; // keeps the caller's buffer alive while the pool thread writes it
  char *path;
  int dir_fd;
  int flags;
  const uint8_t *data;
  size_t length;
  size_t max_bytes;
  size_t direct_from; // read: O_DIRECT from this size on
  uint8_t *out;      // read: malloc'd bytes handed to JS as an external buffer
  size_t out_length;
  uint8_t *into;     // read: the caller's buffer (kept alive by data_ref), or NULL
  size_t into_length;
  uint32_t crc;      // read: CRC-32 of what was read
  int err;
} job_t;

static napi_value throw_error (napi_env env, const char *msg) {
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static char *string_arg (napi_env env, napi_value v) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
  char *s = malloc(len + 1);
  if (s != NULL) napi_get_value_string_utf8(env, v, s, len + 1, &len);
  return s;
}

static void free_job (napi_env env, job_t *j) {
  if (j->callback) napi_delete_reference(env, j->callback);
  if (j->data_ref) napi_delete_reference(env, j->data_ref);
  napi_delete_async_work(env, j->work);
  free(j->path);
  free(j->out);
  free(j);
}

static int write_all (int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    n -= (size_t) w;
  }
  return 0;
}

// O_DIRECT needs the buffer, the offset and the length aligned to the device's block: 4096 covers
// every device. Each pool thread keeps one staging buffer for bytes that are not aligned.
#define DIRECT_ALIGN 4096
static __thread uint8_t *stage;
static __thread size_t stage_size;

static const uint8_t *aligned_copy (const uint8_t *data, size_t length, size_t padded) {
  if (((uintptr_t) data % DIRECT_ALIGN) == 0 && padded == length) return data;
  if (stage_size < padded) {
    free(stage);
    stage = NULL;
    stage_size = 0;
    if (posix_memalign((void **) &stage, DIRECT_ALIGN, padded) != 0) return NULL;
    stage_size = padded;
  }
  memcpy(stage, data, length);
  memset(stage + length, 0, padded - length);
  return stage;
}

// The bytes go to the disk without the page cache (O_DIRECT): on a virtual machine the kernel's
// copy into the cache costs several times the rest of a put (0.8 against 0.2 ms of CPU per MiB
// here), and nothing reads a new object back soon. A file system without O_DIRECT (tmpfs) gets
// plain writes; a padded last block is cut back to the object's length.
static int write_object (int fd, int direct, const uint8_t *data, size_t length) {
  if (direct) {
    size_t padded = (length + DIRECT_ALIGN - 1) & ~((size_t) DIRECT_ALIGN - 1);
    const uint8_t *src = aligned_copy(data, length, padded);
    if (src != NULL) {
      int err = write_all(fd, src, padded);
      if (err == 0) return padded == length ? 0 : (ftruncate(fd, (off_t) length) == 0 ? 0 : errno);
      if (err != EINVAL) return err;
    }
    // Not possible here after all: start over with ordinary writes.
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_DIRECT) != 0 || ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0) return errno;
  }
  return write_all(fd, data, length);
}

static void put_execute (napi_env env, void *arg) {
  job_t *j = arg;
  int direct = (j->flags & PUT_DIRECT) != 0;
  int fd = open(j->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (direct ? O_DIRECT : 0), 0644);
  if (fd < 0 && errno == EINVAL && direct) {
    direct = 0;
    fd = open(j->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  }
  if (fd < 0) { j->err = errno; return; }
  int err = write_object(fd, direct, j->data, j->length);
  if (err == 0 && (j->flags & PUT_DURABLE) && fsync(fd) != 0) err = errno;
  if (close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    unlink(j->path);
    j->err = err;
    return;
  }
  // The new name must survive a crash as well as the bytes.
  if ((j->flags & PUT_DURABLE) && j->dir_fd >= 0 && fsync(j->dir_fd) != 0) j->err = errno;
}

static void syncfs_execute (napi_env env, void *arg) {
  job_t *j = arg;
  if (syncfs(j->dir_fd) != 0) j->err = errno;
}

// A large object is read past the page cache (O_DIRECT), as it was written: the kernel's copy out
// of its cache cost 0.4 s of CPU per GiB of cold reads here (0.06 s direct), and the mount keeps
// the blocks it reads in a cache of its own. The buffer and the length must be aligned: the read
// asks for the length rounded up to DIRECT_ALIGN, which the buffer must hold. A file system that
// refuses O_DIRECT (tmpfs) is read the ordinary way.
static void read_execute (napi_env env, void *arg) {
  job_t *j = arg;
  int fd = open(j->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { j->err = errno; return; }
  struct stat st;
  if (fstat(fd, &st) != 0) { j->err = errno; close(fd); return; }
  if ((size_t) st.st_size > j->max_bytes) { j->err = EFBIG; close(fd); return; }
  size_t size = (size_t) st.st_size;
  size_t padded = (size + DIRECT_ALIGN - 1) & ~((size_t) DIRECT_ALIGN - 1);
  int direct = size >= j->direct_from && size > 0;
  uint8_t *dst;
  size_t room;
  if (j->into != NULL && size <= j->into_length) {
    dst = j->into;
    room = j->into_length;
  } else {
    room = direct ? padded : (size > 0 ? size : 1);
    if (direct ? posix_memalign((void **) &j->out, DIRECT_ALIGN, room) != 0 : (j->out = malloc(room)) == NULL) {
      j->out = NULL;
      j->err = ENOMEM;
      close(fd);
      return;
    }
    dst = j->out;
  }
  direct = direct && ((uintptr_t) dst % DIRECT_ALIGN) == 0 && padded <= room &&
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_DIRECT) == 0;
  size_t n = 0;
  while (n < size) {
    ssize_t r = read(fd, dst + n, (direct ? padded : size) - n);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (direct && errno == EINVAL && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_DIRECT) == 0) {
        direct = 0; // refused after all: the rest the ordinary way (n is aligned so far)
        continue;
      }
      j->err = errno;
      break;
    }
    if (r == 0) break; // shorter than fstat said: the caller's length check reports it
    n += (size_t) r;
  }
  // A direct read may pass the size fstat gave only if the file grew meanwhile: objects never do.
  if (n > size) n = size;
  j->out_length = n;
  close(fd);
  if (j->err == 0) j->crc = crc32_bytes(0, dst, n);
}

static void free_external (napi_env env, void *data, void *hint) {
  free(data);
  int64_t adjusted;
  napi_adjust_external_memory(env, -(int64_t) (uintptr_t) hint, &adjusted);
}

static void complete (napi_env env, napi_status status, void *arg) {
  job_t *j = arg;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, global, argv[4], result;
  napi_get_reference_value(env, j->callback, &cb);
  napi_get_global(env, &global);
  napi_create_int32(env, status == napi_ok ? j->err : ECANCELED, &argv[0]);
  size_t argc = 1;
  if (j->out != NULL && j->err == 0) {
    int64_t adjusted;
    napi_adjust_external_memory(env, (int64_t) j->out_length, &adjusted);
    napi_create_external_buffer(env, j->out_length, j->out, free_external, (void *) (uintptr_t) j->out_length, &argv[1]);
    j->out = NULL; // owned by the buffer now
    napi_create_int64(env, j->crc, &argv[2]);
    argc = 3;
  } else if (j->into != NULL && j->err == 0) {
    // Read into the caller's buffer: the answer is how many bytes of it.
    napi_get_null(env, &argv[1]);
    napi_create_int64(env, j->crc, &argv[2]);
    napi_create_int64(env, (int64_t) j->out_length, &argv[3]);
    argc = 4;
  }
  napi_call_function(env, global, cb, argc, argv, &result);
  napi_close_handle_scope(env, scope);
  free_job(env, j);
}

static napi_value start (napi_env env, job_t *j, napi_value cb, const char *name, napi_async_execute_callback execute) {
  napi_value resource;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource);
  napi_create_reference(env, cb, 1, &j->callback);
  if (napi_create_async_work(env, NULL, resource, execute, complete, j, &j->work) != napi_ok) {
    free_job(env, j);
    return throw_error(env, "cannot start a thread-pool job");
  }
  napi_queue_async_work(env, j->work);
  return NULL;
}

static napi_value put (napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  job_t *j = calloc(1, sizeof *j);
  if (j == NULL) return throw_error(env, "out of memory");
  void *data;
  j->path = argc == 5 ? string_arg(env, argv[0]) : NULL;
  if (j->path == NULL || napi_get_value_int32(env, argv[1], &j->dir_fd) != napi_ok ||
      napi_get_buffer_info(env, argv[2], &data, &j->length) != napi_ok || napi_get_value_int32(env, argv[3], &j->flags) != napi_ok) {
    free(j->path);
    free(j);
    return throw_error(env, "put(path, dirFd, buffer, flags, callback)");
  }
  j->data = data;
  napi_create_reference(env, argv[2], 1, &j->data_ref);
  return start(env, j, argv[4], "bslfs:put", put_execute);
}

static napi_value sync_fs (napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  job_t *j = calloc(1, sizeof *j);
  if (j == NULL) return throw_error(env, "out of memory");
  if (argc < 2 || napi_get_value_int32(env, argv[0], &j->dir_fd) != napi_ok) {
    free(j);
    return throw_error(env, "syncfs(fd, callback)");
  }
  return start(env, j, argv[1], "bslfs:syncfs", syncfs_execute);
}

static napi_value read_object (napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  job_t *j = calloc(1, sizeof *j);
  if (j == NULL) return throw_error(env, "out of memory");
  int64_t max, direct_from;
  j->path = argc == 5 ? string_arg(env, argv[0]) : NULL;
  napi_valuetype into_type = napi_undefined;
  if (j->path != NULL) napi_typeof(env, argv[2], &into_type);
  void *into = NULL;
  if (j->path == NULL || napi_get_value_int64(env, argv[1], &max) != napi_ok || max < 0 ||
      (into_type != napi_null && napi_get_buffer_info(env, argv[2], &into, &j->into_length) != napi_ok) ||
      napi_get_value_int64(env, argv[3], &direct_from) != napi_ok || direct_from < 0) {
    free(j->path);
    free(j);
    return throw_error(env, "read(path, maxBytes, buffer | null, directFrom, callback)");
  }
  j->max_bytes = (size_t) max;
  j->direct_from = (size_t) direct_from;
  j->dir_fd = -1;
  if (into != NULL) {
    j->into = into;
    napi_create_reference(env, argv[2], 1, &j->data_ref);
  }
  return start(env, j, argv[4], "bslfs:read", read_execute);
}

static void free_aligned (napi_env env, void *data, void *hint) {
  free(data);
  int64_t adjusted;
  napi_adjust_external_memory(env, -(int64_t) (uintptr_t) hint, &adjusted);
}

static napi_value aligned (napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t size;
  if (argc < 1 || napi_get_value_int64(env, argv[0], &size) != napi_ok || size <= 0 || size > (1LL << 31)) {
    return throw_error(env, "aligned(size): size from 1 to 2 GiB");
  }
  void *mem;
  if (posix_memalign(&mem, DIRECT_ALIGN, (size_t) size) != 0) return throw_error(env, "aligned: out of memory");
  int64_t adjusted;
  napi_adjust_external_memory(env, size, &adjusted);
  napi_value out;
  napi_create_external_buffer(env, (size_t) size, mem, free_aligned, (void *) (uintptr_t) size, &out);
  return out;
}

static napi_value read_cached (napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  int64_t offset;
  void *into;
  size_t length;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_buffer_info(env, argv[1], &into, &length) != napi_ok ||
      napi_get_value_int64(env, argv[2], &offset) != napi_ok || offset < 0) {
    return throw_error(env, "readCached(fd, buffer, offset)");
  }
  size_t done = 0;
  int64_t result = 0;
  while (done < length) {
    struct iovec iov = { (uint8_t *) into + done, length - done };
    ssize_t n = preadv2(fd, &iov, 1, offset + (off_t) done, RWF_NOWAIT);
    if (n > 0) {
      done += (size_t) n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    // EAGAIN: not in the page cache; EOPNOTSUPP/EINVAL/ENOSYS: no RWF_NOWAIT here. The caller reads the rest.
    if (n < 0 && errno != EAGAIN && errno != EOPNOTSUPP && errno != EINVAL && errno != ENOSYS) result = -errno;
    break;
  }
  napi_value out;
  napi_create_int64(env, result < 0 ? result : (int64_t) done, &out);
  return out;
}

static napi_value crc32_sync (napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *data;
  size_t length;
  if (argc < 1 || napi_get_buffer_info(env, argv[0], &data, &length) != napi_ok) return throw_error(env, "crc32(data[, crc]): data must be a Buffer");
  uint32_t crc = 0;
  if (argc > 1 && napi_get_value_uint32(env, argv[1], &crc) != napi_ok) return throw_error(env, "crc32(data[, crc]): crc must be a number");
  napi_value out;
  napi_create_uint32(env, crc32_bytes(crc, data, length), &out);
  return out;
}

static napi_value mmap_threshold (napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t bytes;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &bytes) != napi_ok || bytes < 4096) return throw_error(env, "mmapThreshold(bytes): at least 4096");
  napi_value out;
  napi_get_boolean(env, mallopt(M_MMAP_THRESHOLD, bytes) == 1, &out);
  return out;
}

static napi_value trim (napi_env env, napi_callback_info info) {
  napi_value out;
  napi_get_boolean(env, malloc_trim(0) == 1, &out);
  return out;
}

static napi_value init (napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "put", NULL, put, NULL, NULL, NULL, napi_enumerable, NULL },
    { "read", NULL, read_object, NULL, NULL, NULL, napi_enumerable, NULL },
    { "syncfs", NULL, sync_fs, NULL, NULL, NULL, napi_enumerable, NULL },
    { "aligned", NULL, aligned, NULL, NULL, NULL, napi_enumerable, NULL },
    { "readCached", NULL, read_cached, NULL, NULL, NULL, napi_enumerable, NULL },
    { "crc32", NULL, crc32_sync, NULL, NULL, NULL, napi_enumerable, NULL },
    { "mmapThreshold", NULL, mmap_threshold, NULL, NULL, NULL, napi_enumerable, NULL },
    { "trim", NULL, trim, NULL, NULL, NULL, napi_enumerable, NULL }
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_value version;
  napi_create_uint32(env, OBJECT_IO_VERSION, &version);
  napi_set_named_property(env, exports, "version", version);
  napi_value folds;
  napi_get_boolean(env, crc32_folds(), &folds);
  napi_set_named_property(env, exports, "folds", folds);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
