#!/usr/bin/env python3
"""Mark unused symbol-version requirements weak (VER_FLG_WEAK) in ELF64 LE .so files.
Usage: weaken_verneed.py FILE.so [...] [--version GLIBCXX_3.4.32 ...]
Refuses if any dynamic relocation references a symbol bound to that version.
Writes via temp file + rename, so a hard-linked source (e.g. NuGet cache) is never modified."""
import os, struct, sys

def cstr(b, off): return b[off:b.index(b'\0', off)].decode()

def patch(path, wanted):
    d = bytearray(open(path, 'rb').read())
    if d[:4] != b'\x7fELF' or d[4] != 2 or d[5] != 1: sys.exit(f'{path}: not ELF64 LE')
    shoff, = struct.unpack_from('<Q', d, 0x28); shentsize, shnum = struct.unpack_from('<HH', d, 0x3A)
    secs = [struct.unpack_from('<IIQQQQIIQQ', d, shoff + i * shentsize) for i in range(shnum)]
    by_type = lambda t: [s for s in secs if s[1] == t]
    vn, = by_type(0x6ffffffe); vs, = by_type(0x6fffffff)        # SHT_GNU_verneed, SHT_GNU_versym
    strtab = secs[vn[6]][4]; off = vn[4]; hits = {}              # sh_link -> .dynstr offset
    for _ in range(vn[7]):                                       # sh_info = number of Verneed
        _, cnt, vfile, aux, nxt = struct.unpack_from('<HHIII', d, off); a = off + aux
        for _ in range(cnt):
            _, flags, other, name, anxt = struct.unpack_from('<IHHII', d, a)
            if cstr(d, strtab + name) in wanted: hits[other & 0x7fff] = (a, flags, cstr(d, strtab + name))
            a += anxt
        off += nxt
    if not hits: print(f'{path}: none of {wanted} required; nothing to do'); return
    versym = lambda i: struct.unpack_from('<H', d, vs[4] + 2 * i)[0] & 0x7fff
    for s in by_type(4) + by_type(9):                            # SHT_RELA, SHT_REL
        ent = 24 if s[1] == 4 else 16
        for r in range(s[5] // ent):
            info, = struct.unpack_from('<Q', d, s[4] + r * ent + 8)
            if (info >> 32) and versym(info >> 32) in hits:
                sys.exit(f'{path}: relocation uses {hits[versym(info >> 32)][2]}; unsafe, not patched')
    changed = False
    for a, flags, name in hits.values():
        print(f'{path}: {name} -> weak' + (' (already)' if flags & 2 else ''))
        if not flags & 2: struct.pack_into('<H', d, a + 4, flags | 2); changed = True
    if changed:
        st = os.stat(path); tmp = path + '.weaken.tmp'
        with open(tmp, 'wb') as f: f.write(d)
        os.chmod(tmp, st.st_mode); os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns)); os.replace(tmp, path)

args = sys.argv[1:]; wanted = {'GLIBCXX_3.4.32'}
if '--version' in args: i = args.index('--version'); wanted = set(args[i + 1:]); args = args[:i]
for p in args:
    if os.path.exists(p): patch(p, wanted)
