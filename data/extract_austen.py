#!/usr/bin/env python3
"""Build data/austen.txt.gz from Debian's r-cran-janeaustenr package.

Standard library only. R is not needed: this file contains a small reader of
R's XDR serialization format (versions 2 and 3) and of R's lazy-load database
(.rdx index + .rdb blocks of zlib-compressed serialized objects).

Usage:
    python3 data/extract_austen.py --download          # apt-get download + dpkg-deb -x into a temp dir
    python3 data/extract_austen.py PATH                # PATH: an extracted package tree (the dpkg-deb -x
                                                       # root, or any dir below which janeaustenr/data/ lies),
                                                       # or a r-cran-janeaustenr_*.deb file
    options: --out FILE (default: austen.txt.gz next to this script)

Output: gzip -9 (mtime 0, no file name in the header), UTF-8, '\n' line ends.
For each novel, in the fixed order of NOVELS below: a line '# <Title>', then
one paragraph per line. A paragraph is a run of consecutive non-empty lines of
the R character vector, joined with single spaces, all whitespace runs
collapsed to one space, NFC-normalised. No text line starts with '# '.
"""

import argparse
import gzip
import hashlib
import io
import os
import re
import struct
import subprocess
import sys
import tempfile
import unicodedata
import zlib

# (R object name, title). Fixed order; the LAST one (Persuasion) is the held-out eval text.
NOVELS = [
    ("sensesensibility", "Sense and Sensibility"),
    ("prideprejudice", "Pride and Prejudice"),
    ("mansfieldpark", "Mansfield Park"),
    ("emma", "Emma"),
    ("northangerabbey", "Northanger Abbey"),
    ("persuasion", "Persuasion"),
]

PACKAGE = "r-cran-janeaustenr"

# ---------------------------------------------------------------- R serialization reader

NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
SPECIALSXP, BUILTINSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP = 7, 8, 9, 10, 13, 14, 15
STRSXP, DOTSXP, VECSXP, EXPRSXP, BCODESXP, EXTPTRSXP, WEAKREFSXP, RAWSXP, S4SXP = (
    16, 17, 19, 20, 21, 22, 23, 24, 25)
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP = 255, 254, 253, 252, 251
BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP, PERSISTSXP = 250, 249, 248, 247
EMPTYENV_SXP, BASEENV_SXP, ATTRLANGSXP, ATTRLISTSXP, ALTREP_SXP = 242, 241, 240, 239, 238

NA_INTEGER = -(2 ** 31)


class RObj:
    """A generic R object: type code, value, attributes (dict name -> value)."""

    def __init__(self, sexptype, value=None, attrs=None):
        self.type = sexptype
        self.value = value
        self.attrs = attrs or {}

    def __repr__(self):
        return f"RObj(type={self.type}, value={self.value!r:.80}, attrs={list(self.attrs)})"


class RSym(str):
    pass


class RReader:
    def __init__(self, data):
        self.buf = data
        self.pos = 0
        self.refs = []
        if data[:2] != b"X\n":
            raise ValueError(f"not an XDR R serialization (header {data[:2]!r})")
        self.pos = 2
        self.version = self.int()
        self.int()  # writer R version
        self.int()  # minimal reader R version
        if self.version == 3:
            n = self.int()
            self.native_encoding = self.bytes(n).decode("ascii")
        elif self.version != 2:
            raise ValueError(f"unsupported serialization version {self.version}")

    def bytes(self, n):
        b = self.buf[self.pos:self.pos + n]
        if len(b) != n:
            raise ValueError("truncated R serialization")
        self.pos += n
        return b

    def int(self):
        (v,) = struct.unpack(">i", self.bytes(4))
        return v

    def length(self):
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def attrs_of(self, pairlist):
        out = {}
        node = pairlist
        while isinstance(node, RObj) and node.type == LISTSXP:
            tag, car = node.value[0], node.value[1]
            out[str(tag)] = car
            node = node.value[2]
        return out

    def charsxp(self, levels):
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = self.bytes(n)
        if levels & (1 << 2):  # LATIN1_MASK
            return raw.decode("latin-1")
        if levels & (1 << 1):  # BYTES_MASK
            return raw.decode("utf-8", errors="replace")
        return raw.decode("utf-8")  # UTF8_MASK, ASCII_MASK, or native (UTF-8 here)

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))

        if t == NILVALUE_SXP:
            return None
        if t in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP,
                 MISSINGARG_SXP, BASENAMESPACE_SXP):
            return RObj(t)
        if t == REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            return self.refs[idx - 1]
        if t == PERSISTSXP:
            self.int()  # always 0
            names = [self.charsxp_item() for _ in range(self.length())]
            obj = RObj(PERSISTSXP, names)
            self.refs.append(obj)
            return obj
        if t == SYMSXP:
            sym = RSym(self.charsxp_item() or "")
            self.refs.append(sym)
            return sym
        if t in (PACKAGESXP, NAMESPACESXP):
            self.int()
            info = [self.charsxp_item() for _ in range(self.length())]
            obj = RObj(t, info)
            self.refs.append(obj)
            return obj
        if t == ENVSXP:
            obj = RObj(ENVSXP)
            self.refs.append(obj)
            locked = self.int()
            enclos, frame, hashtab, attrib = self.item(), self.item(), self.item(), self.item()
            obj.value = {"locked": locked, "enclos": enclos, "frame": frame, "hashtab": hashtab}
            obj.attrs = self.attrs_of(attrib)
            return obj
        if t in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            attrib = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            base = {ATTRLANGSXP: LANGSXP, ATTRLISTSXP: LISTSXP}.get(t, t)
            return RObj(base, (tag, car, cdr), self.attrs_of(attrib))
        if t == CHARSXP:
            return self.charsxp(levels)
        if t == ALTREP_SXP:
            info = self.item()
            state = self.item()
            attrib = self.item()
            return RObj(ALTREP_SXP, (info, state), self.attrs_of(attrib))

        # vectors
        if t in (LGLSXP, INTSXP):
            n = self.length()
            vals = list(struct.unpack(f">{n}i", self.bytes(4 * n)))
            vals = [None if v == NA_INTEGER else v for v in vals]
        elif t == REALSXP:
            n = self.length()
            vals = list(struct.unpack(f">{n}d", self.bytes(8 * n)))
        elif t == CPLXSXP:
            n = self.length()
            f = struct.unpack(f">{2 * n}d", self.bytes(16 * n))
            vals = [complex(f[2 * i], f[2 * i + 1]) for i in range(n)]
        elif t == RAWSXP:
            n = self.length()
            vals = self.bytes(n)
        elif t == STRSXP:
            n = self.length()
            vals = [self.charsxp_item() for _ in range(n)]
        elif t in (VECSXP, EXPRSXP):
            n = self.length()
            vals = [self.item() for _ in range(n)]
        elif t == S4SXP:
            vals = None
        else:
            raise ValueError(f"unsupported SEXP type {t} at byte {self.pos}")
        attrs = self.attrs_of(self.item()) if has_attr else {}
        return RObj(t, vals, attrs)

    def charsxp_item(self):
        flags = self.int()
        t = flags & 0xFF
        if t != CHARSXP:
            raise ValueError(f"expected CHARSXP, got type {t}")
        return self.charsxp(flags >> 12)


def unserialize(data):
    r = RReader(data)
    obj = r.item()
    return obj


def as_named_list(obj):
    names = obj.attrs.get("names")
    if names is None:
        raise ValueError("list has no names")
    return dict(zip(names.value, obj.value))


def read_lazyload_db(base):
    """Read R lazy-load database base.rdx/base.rdb; return {name: object}."""
    with open(base + ".rdx", "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    index = as_named_list(unserialize(raw))
    if not index["compressed"].value[0]:
        raise ValueError("uncompressed lazy-load DB not supported")
    variables = as_named_list(index["variables"])
    with open(base + ".rdb", "rb") as f:
        rdb = f.read()
    out = {}
    for name, pos in variables.items():
        off, ln = pos.value
        block = rdb[int(off):int(off) + int(ln)]
        (ulen,) = struct.unpack(">I", block[:4])
        payload = zlib.decompress(block[4:])  # compress=TRUE in makeLazyLoadDB: plain zlib
        if len(payload) != ulen:
            raise ValueError(f"{name}: bad decompressed length {len(payload)} != {ulen}")
        out[name] = unserialize(payload)
    return out

# ---------------------------------------------------------------- text processing


WS = re.compile(r"\s+")


def clean(s):
    s = unicodedata.normalize("NFC", s)
    # drop control/format characters (incl. BOM, soft hyphen), keep printable text
    s = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in s)
    return WS.sub(" ", s).strip()


def paragraphs(lines):
    paras, cur = [], []
    for line in lines:
        line = clean(line or "")
        if line:
            cur.append(line)
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return paras

# ---------------------------------------------------------------- package handling


def find_data_base(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if (os.path.basename(dirpath) == "data" and "Rdata.rdb" in filenames
                and os.path.basename(os.path.dirname(dirpath)) == "janeaustenr"):
            return os.path.join(dirpath, "Rdata")
    raise SystemExit(f"no janeaustenr/data/Rdata.rdb below {root}")


def debian_version(root):
    for dirpath, _, filenames in os.walk(root):
        if dirpath.endswith("doc/" + PACKAGE) and "changelog.Debian.gz" in filenames:
            with gzip.open(os.path.join(dirpath, "changelog.Debian.gz"), "rt") as f:
                m = re.match(r"(\S+) \(([^)]+)\)", f.readline())
            return m.group(2) if m else None
    return None


def download(tmp):
    subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True)
    debs = sorted(n for n in os.listdir(tmp) if n.endswith(".deb"))
    if len(debs) != 1:
        raise SystemExit(f"expected one .deb, got {debs}")
    return os.path.join(tmp, debs[0])


def extract_deb(deb, tmp):
    root = os.path.join(tmp, "root")
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    with open(deb, "rb") as f:
        print(f"source: {os.path.basename(deb)} sha256 {hashlib.sha256(f.read()).hexdigest()}")
    return root


def build_text(root):
    db = read_lazyload_db(find_data_base(root))
    out_lines, stats = [], []
    for name, title in NOVELS:
        obj = db[name]
        if obj.type != STRSXP:
            raise SystemExit(f"{name}: expected a character vector, got type {obj.type}")
        paras = paragraphs(obj.value)
        for p in paras:
            if p.startswith("# "):
                raise SystemExit(f"{name}: paragraph starts with '# ': {p[:60]!r}")
        out_lines.append(f"# {title}")
        out_lines.extend(paras)
        stats.append((title, len(obj.value), len(paras), sum(len(p) for p in paras)))
    text = "\n".join(out_lines) + "\n"
    return text, stats


def write_gz(path, data):
    buf = io.BytesIO()
    # filename="" -> no FNAME field; mtime=0 -> deterministic header
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as g:
        g.write(data)
    blob = buf.getvalue()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    return blob


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", help="extracted package tree, or a .deb file")
    ap.add_argument("--download", action="store_true", help="apt-get download the package into a temp dir")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "austen.txt.gz"))
    args = ap.parse_args()
    if bool(args.source) == args.download:
        ap.error("give exactly one of SOURCE or --download")

    with tempfile.TemporaryDirectory(prefix="janeaustenr-") as tmp:
        if args.download:
            root = extract_deb(download(tmp), tmp)
        elif args.source.endswith(".deb"):
            root = extract_deb(args.source, tmp)
        else:
            root = args.source
        ver = debian_version(root)
        print(f"package: {PACKAGE} {ver or '(version unknown)'}")
        text, stats = build_text(root)

    data = text.encode("utf-8")
    blob = write_gz(args.out, data)
    print(f"{'novel':24s} {'R lines':>8s} {'paragraphs':>10s} {'chars':>9s}")
    for title, nlines, npar, nch in stats:
        print(f"{title:24s} {nlines:8d} {npar:10d} {nch:9d}")
    print(f"total: {sum(s[2] for s in stats)} paragraphs, {len(text)} characters, "
          f"{len(data)} bytes UTF-8, {len(blob)} bytes compressed")
    non_ascii = sorted({c for c in text if ord(c) > 127})
    print(f"non-ASCII characters: {''.join(non_ascii)!r}")
    print(f"wrote {args.out}")
    print(f"sha256 (gz):   {hashlib.sha256(blob).hexdigest()}")
    print(f"sha256 (text): {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    sys.exit(main())
