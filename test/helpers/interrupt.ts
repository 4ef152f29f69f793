/**
 * A Python program that makes one pread or pwrite of FILE and has SIGALRM
 * interrupt it after 0.3 s: the handler returns, so the call itself reports
 * EINTR (ctypes does not retry it). Arguments: FILE read|write OFFSET.
 * Prints {n, errno, EINTR, seconds}.
 */
export const INTERRUPTED_IO_PY = `
import ctypes, ctypes.util, errno, json, os, signal, sys, time
libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
signal.signal(signal.SIGALRM, lambda *a: None)
path, op, offset = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_RDWR if op == 'write' else os.O_RDONLY)
buf = ctypes.create_string_buffer(4096)
signal.setitimer(signal.ITIMER_REAL, 0.3)
t0 = time.monotonic()
if op == 'read':
    n = libc.pread(fd, buf, ctypes.c_size_t(4096), ctypes.c_long(offset))
else:
    n = libc.pwrite(fd, b'after!', ctypes.c_size_t(6), ctypes.c_long(offset))
e = ctypes.get_errno()
print(json.dumps({'n': n, 'errno': e, 'EINTR': errno.EINTR, 'seconds': time.monotonic() - t0}))
`

export interface InterruptedIo { n: number, errno: number, EINTR: number, seconds: number }
