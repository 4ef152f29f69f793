// The kernel side of a bslfs mount: a FUSE channel (/dev/fuse) that the
// TypeScript session (src/fs/fuse/session.ts) reads requests from and writes
// replies to. This file only mounts, watches and reads; the protocol is spoken
// in TypeScript. See native-notes/fuse-channel.md.
//
//   mount(mountpoint, options) -> fd   libfuse2's fuse_mount (mount(2) as root, else
//                                      fusermount); the fd is non-blocking, close-on-exec
//   watch(fd, onReadable)              call onReadable() on the event loop when requests wait
//                                      (or the connection ended)
//   unwatch(fd)                        stop watching (the handle is closed)
//   read(fd, buffer) -> n | -errno     one request into buffer, never throws
//   close(fd)                          close the channel
#define FUSE_USE_VERSION 26
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fuse_lowlevel.h>
#include <node_api.h>
#include <uv.h>

// Bumped when the JavaScript-facing interface changes; src/fs/fuse/native.ts checks it.
#define CHANNEL_VERSION 1
#define MAX_CHANNELS 64

typedef struct {
  int fd;
  struct fuse_chan *chan;
  uv_poll_t *poll;
  napi_env env;
  napi_ref callback;
  napi_async_context async;
} channel_t;

static channel_t channels[MAX_CHANNELS];

static napi_value throw_error (napi_env env, const char *msg) {
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static channel_t *find (int fd) {
  for (int i = 0; i < MAX_CHANNELS; i++) if (channels[i].chan != NULL && channels[i].fd == fd) return &channels[i];
  return NULL;
}

/** The call's first `n` arguments into argv, the first of them an fd: 0 when they are not there. */
static int fd_args (napi_env env, napi_callback_info info, size_t n, napi_value *argv, int *fd) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < n) return 0;
  return napi_get_value_int32(env, argv[0], fd) == napi_ok;
}

static napi_value mount_channel (napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return throw_error(env, "mount(mountpoint, options) needs two strings");
  char mnt[4096], opts[4096];
  size_t len;
  if (napi_get_value_string_utf8(env, argv[0], mnt, sizeof mnt, &len) != napi_ok) return throw_error(env, "mountpoint must be a string");
  if (len >= sizeof mnt - 1) return throw_error(env, "mountpoint path too long");
  if (napi_get_value_string_utf8(env, argv[1], opts, sizeof opts, &len) != napi_ok) return throw_error(env, "options must be a string");
  if (len >= sizeof opts - 1) return throw_error(env, "mount option string too long");

  channel_t *slot = NULL;
  for (int i = 0; i < MAX_CHANNELS; i++) if (channels[i].chan == NULL) { slot = &channels[i]; break; }
  if (slot == NULL) return throw_error(env, "too many FUSE channels open in this process");

  char *args_v[] = { "bslfs", "-o", opts, NULL };
  struct fuse_args args = FUSE_ARGS_INIT(opts[0] ? 3 : 1, args_v);
  // libfuse prints its own reason to stderr (the daemon's log); errno is often not set.
  errno = 0;
  struct fuse_chan *chan = fuse_mount(mnt, &args);
  int err = errno;
  fuse_opt_free_args(&args);
  if (chan == NULL) {
    char msg[4200];
    snprintf(msg, sizeof msg, "fuse_mount of %s failed%s%s", mnt, err ? ": " : " (see the daemon log for libfuse's reason)", err ? strerror(err) : "");
    return throw_error(env, msg);
  }
  int fd = fuse_chan_fd(chan);
  // Requests are read when poll says they are there; children (block servers, fusermount)
  // must not inherit the channel, or the mount would outlive the daemon.
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
  memset(slot, 0, sizeof *slot);
  slot->fd = fd;
  slot->chan = chan;
  napi_value out;
  napi_create_int32(env, fd, &out);
  return out;
}

static void on_poll (uv_poll_t *handle, int status, int events) {
  channel_t *c = handle->data;
  if (c == NULL || c->callback == NULL) return;
  napi_handle_scope scope;
  napi_open_handle_scope(c->env, &scope);
  napi_value fn, global, arg, result;
  napi_get_reference_value(c->env, c->callback, &fn);
  napi_get_global(c->env, &global);
  napi_create_int32(c->env, status, &arg);
  // make_callback runs the microtasks and nextTicks the handlers queue, as any I/O callback does.
  napi_make_callback(c->env, c->async, global, fn, 1, &arg, &result);
  napi_close_handle_scope(c->env, scope);
}

static napi_value watch_channel (napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  if (!fd_args(env, info, 2, argv, &fd)) return throw_error(env, "watch(fd, callback)");
  channel_t *c = find(fd);
  if (c == NULL) return throw_error(env, "watch: not an open FUSE channel");
  if (c->poll != NULL) return throw_error(env, "watch: the channel is watched already");
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  c->poll = calloc(1, sizeof *c->poll);
  if (c->poll == NULL) return throw_error(env, "watch: out of memory");
  if (uv_poll_init(loop, c->poll, fd) != 0) {
    free(c->poll);
    c->poll = NULL;
    return throw_error(env, "watch: uv_poll_init failed");
  }
  c->poll->data = c;
  c->env = env;
  napi_create_reference(env, argv[1], 1, &c->callback);
  napi_value name;
  napi_create_string_utf8(env, "bslfs:fuse-channel", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &c->async);
  uv_poll_start(c->poll, UV_READABLE, on_poll);
  return NULL;
}

static void free_poll (uv_handle_t *h) {
  free(h);
}

static void stop_watching (channel_t *c) {
  if (c->poll != NULL) {
    uv_poll_stop(c->poll);
    c->poll->data = NULL;
    uv_close((uv_handle_t *) c->poll, free_poll);
    c->poll = NULL;
  }
  if (c->callback != NULL) {
    napi_delete_reference(c->env, c->callback);
    c->callback = NULL;
    napi_async_destroy(c->env, c->async);
  }
}

static napi_value unwatch_channel (napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!fd_args(env, info, 1, argv, &fd)) return throw_error(env, "unwatch(fd)");
  channel_t *c = find(fd);
  if (c != NULL) stop_watching(c);
  return NULL;
}

static napi_value read_channel (napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  void *data;
  size_t size;
  if (!fd_args(env, info, 2, argv, &fd) || napi_get_buffer_info(env, argv[1], &data, &size) != napi_ok) {
    return throw_error(env, "read(fd, buffer)");
  }
  ssize_t n = read(fd, data, size);
  napi_value out;
  napi_create_int32(env, n < 0 ? -errno : (int32_t) n, &out);
  return out;
}

static napi_value close_channel (napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!fd_args(env, info, 1, argv, &fd)) return throw_error(env, "close(fd)");
  channel_t *c = find(fd);
  if (c == NULL) return NULL;
  stop_watching(c);
  fuse_chan_destroy(c->chan); // closes fd
  c->chan = NULL;
  c->fd = -1;
  return NULL;
}

static napi_value init (napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "mount", NULL, mount_channel, NULL, NULL, NULL, napi_enumerable, NULL },
    { "watch", NULL, watch_channel, NULL, NULL, NULL, napi_enumerable, NULL },
    { "unwatch", NULL, unwatch_channel, NULL, NULL, NULL, napi_enumerable, NULL },
    { "read", NULL, read_channel, NULL, NULL, NULL, napi_enumerable, NULL },
    { "close", NULL, close_channel, NULL, NULL, NULL, napi_enumerable, NULL }
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_value version;
  napi_create_uint32(env, CHANNEL_VERSION, &version);
  napi_set_named_property(env, exports, "version", version);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
