import { writeFileSync } from 'node:fs'

/** Python: `encode PATH…` prints one handle per path; `open MNT HANDLE…` prints "OK:<sha256 of the file>", "OK:<path of the directory>" or the errno. */
export const HANDLES = `
import ctypes, hashlib
libc = ctypes.CDLL(None, use_errno=True)
MAX = 128
class FH(ctypes.Structure):
    _fields_ = [('handle_bytes', ctypes.c_uint), ('handle_type', ctypes.c_int), ('f_handle', ctypes.c_ubyte * MAX)]
def fail():
    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))
def encode(path):
    fh = FH(); fh.handle_bytes = MAX; mid = ctypes.c_int()
    if libc.name_to_handle_at(-100, path.encode(), ctypes.byref(fh), ctypes.byref(mid), 0) != 0: fail()
    return '%d:%s' % (fh.handle_type, bytes(fh.f_handle[:fh.handle_bytes]).hex())
def open_handle(mnt, h):
    kind, data = h.split(':'); b = bytes.fromhex(data)
    fh = FH(); fh.handle_bytes = len(b); fh.handle_type = int(kind)
    for i, x in enumerate(b): fh.f_handle[i] = x
    mfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY)
        if fd < 0: fail()
        return fd
    finally:
        os.close(mfd)
if sys.argv[1] == 'encode':
    for i, p in enumerate(sys.argv[2:]):
        try: print('h%d %s' % (i, encode(p)))
        except OSError as e: print('h%d %s' % (i, errno.errorcode[e.errno]))
else:
    for i, h in enumerate(sys.argv[3:]):
        try:
            fd = open_handle(sys.argv[2], h)
            if stat.S_ISDIR(os.fstat(fd).st_mode): what = os.readlink('/proc/self/fd/%d' % fd)
            else: what = hashlib.sha256(os.read(fd, 1 << 20)).hexdigest()
            os.close(fd)
            print('h%d OK:%s' % (i, what))
        except OSError as e: print('h%d %s' % (i, errno.errorcode[e.errno]))
`

/** Make the kernel drop the dentries and inodes it does not need (a handle's file among them). */
export const dropCaches = (): void => writeFileSync('/proc/sys/vm/drop_caches', '2')
