//! A small, dependency-free reader for the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! flowtrace compiles no kernel struct offsets in: at start-up it asks this module where the
//! fields it reads live (searching through anonymous structs/unions, as modern `sk_buff` needs),
//! and it decodes enum values such as `enum skb_drop_reason` into their names.
//! Every read is bounds-checked: malformed input yields a [`BtfError`], never a panic.
//!
//! Why not a crate: aya (through aya-obj) parses the same BTF to load and attach programs, but
//! keeps type lookup by id, struct members and the string table crate-private, so it cannot
//! answer "where is `sk_buff.mark`" or "what is drop reason 5". This reader answers only those
//! two questions.

use std::path::Path;

/// Where the running kernel exposes its own BTF.
pub const SYS_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const HEADER_LEN: usize = 24;
/// Limit on typedef chains, nested anonymous members, etc.; corrupt data may contain cycles.
const MAX_DEPTH: usize = 64;
const PTR_SIZE: u32 = std::mem::size_of::<usize>() as u32;

/// Everything that can go wrong reading BTF or looking something up in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read the kernel's BTF from {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF data: the magic number is {0:#06x}, expected 0xeb9f (little-endian)")]
    BadMagic(u16),
    #[error("unsupported BTF version {0}; only version 1 is understood")]
    BadVersion(u8),
    #[error("the BTF header claims to be {0} bytes long, less than the 24 bytes every header has")]
    BadHeader(u32),
    #[error("BTF data is truncated: {0}")]
    Truncated(String),
    #[error("BTF type #{id} has unknown kind {kind}; this reader understands kinds 1 to 19")]
    UnknownKind { id: u32, kind: u32 },
    #[error("BTF data is corrupt: {0}")]
    Corrupt(String),
    /// (kind, name)
    #[error("{0} {1} is not in this kernel's BTF")]
    TypeNotFound(&'static str, String),
    /// (container, member)
    #[error("{0} has no member `{1}` in this kernel's BTF")]
    MemberNotFound(String, String),
    #[error("{0} member `{1}` is a pointer, so the path cannot descend into it")]
    MemberBehindPointer(String, String),
    #[error("{0} member `{1}` is not a struct or union, so the path cannot descend into it")]
    NotAComposite(String, String),
    #[error("the size of BTF type #{0} is unknown: {1}")]
    Unsized(u32, &'static str),
    #[error("an empty member path was given for struct {0}")]
    EmptyPath(String),
}

/// Where a member lives inside the outermost struct of a [`Btf::member_offset`] lookup.
///
/// For an ordinary member `bit_offset` and `bit_size` are 0. For a bitfield, `bit_size` is its
/// width and the field starts `bit_offset` bits (0..8, little-endian numbering) into the byte at
/// `byte_offset`; `size` is the byte size of the bitfield's underlying integer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    pub byte_offset: u32,
    pub size: u32,
    pub bit_offset: u32,
    pub bit_size: u32,
}

/// A struct/union member: name offset, type id, bit offset, bitfield width (0 if none).
type Member = (u32, u32, u32, u32);

#[derive(Debug)]
enum Ty {
    Void,
    /// size, encoding bits, encoding bit offset (old-style bitfields)
    Int(u32, u32, u32),
    Ptr,
    /// element type, element count
    Array(u32, u32),
    /// is_union, size, members
    Composite(bool, u32, Vec<Member>),
    /// size, (name offset, value) pairs; both ENUM and ENUM64
    Enum(u32, Vec<(u32, i64)>),
    Fwd,
    /// typedef, volatile, const, restrict, type_tag: all just name another type.
    Alias(u32),
    Float(u32),
    /// func, func_proto, var, datasec, decl_tag: not data types; parsed only to stay in sync.
    Other,
}

/// Parsed BTF: its string section and every type (index = type id, 0 = void) with its name
/// offset. No index by name: the few lookups start-up makes scan the types, and an index of
/// every name (a String each, a hundred thousand and more in a kernel's BTF) was most of
/// flowtrace's peak memory.
#[derive(Debug)]
pub struct Btf {
    strings: Vec<u8>,
    types: Vec<(u32, Ty)>,
}

fn words(b: &[u8]) -> Vec<u32> {
    let word = |c: &[u8]| u32::from_le_bytes(<[u8; 4]>::try_from(c).unwrap_or_default());
    b.chunks_exact(4).map(word).collect()
}

fn section<'a>(data: &'a [u8], hdr: &[u32], off: usize, what: &str) -> Result<&'a [u8], BtfError> {
    let at = |i: usize| u64::from(hdr.get(i).copied().unwrap_or_default());
    let (start, len) = (at(1) + at(off), at(off + 1));
    let range = usize::try_from(start)
        .ok()
        .zip(usize::try_from(start + len).ok());
    match range.and_then(|(s, e)| data.get(s..e)) {
        Some(bytes) => Ok(bytes),
        None => Err(BtfError::Truncated(format!(
            "the {what} spans bytes {start}..{} but the data is only {} bytes long",
            start + len,
            data.len()
        ))),
    }
}

fn strip_keyword<'a>(name: &'a str, keywords: &[&str]) -> &'a str {
    keywords
        .iter()
        .find_map(|k| name.strip_prefix(k))
        .unwrap_or(name)
}

impl Btf {
    /// Reads and parses the running kernel's BTF from [`SYS_BTF_PATH`].
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Btf::from_file(Path::new(SYS_BTF_PATH))
    }

    /// Reads and parses a raw BTF file (e.g. `/sys/kernel/btf/<module>` or a saved copy).
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let path_s = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path_s,
            source,
        })?;
        Btf::parse(&data)
    }

    /// Parses raw BTF bytes: header, type section and string section.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let len = data.len();
        let msg = format!("{len} bytes is shorter than the 24-byte BTF header");
        let hdr = words(data.get(..HEADER_LEN).ok_or(BtfError::Truncated(msg))?);
        // Words: magic/version/flags, hdr_len, type_off, type_len, str_off, str_len.
        let first = hdr.first().copied().unwrap_or_default();
        if first & 0xffff != 0xeb9f {
            return Err(BtfError::BadMagic(first as u16));
        }
        if (first >> 16) & 0xff != 1 {
            return Err(BtfError::BadVersion((first >> 16) as u8));
        }
        match hdr.get(1) {
            Some(&n) if n as usize >= HEADER_LEN => {}
            n => return Err(BtfError::BadHeader(n.copied().unwrap_or_default())),
        }
        let tsec = section(data, &hdr, 2, "type section")?;
        let strings = section(data, &hdr, 4, "string section")?.to_vec();
        let mut btf = Btf {
            strings,
            types: vec![(0, Ty::Void)],
        };
        let mut pos = 0usize;
        while pos < tsec.len() {
            let id = btf.types.len() as u32; // at most type_len / 12 types: fits
            let trunc = |need: usize, at: usize| {
                let tl = tsec.len();
                BtfError::Truncated(format!(
                    "type #{id} needs {need} bytes at offset {at} of the {tl}-byte type section"
                ))
            };
            let head = words(tsec.get(pos..pos + 12).ok_or_else(|| trunc(12, pos))?);
            let [name_off, info, sot] = <[u32; 3]>::try_from(head).map_err(|_| trunc(12, pos))?;
            pos += 12;
            let (vlen, kind, kflag) = (
                (info & 0xffff) as usize,
                (info >> 24) & 0x1f,
                info >> 31 == 1,
            );
            let extra_len = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => vlen * 12,
                6 | 13 => vlen * 8,
                2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(BtfError::UnknownKind { id, kind }),
            };
            let x = words(
                tsec.get(pos..pos + extra_len)
                    .ok_or_else(|| trunc(extra_len, pos))?,
            );
            pos += extra_len;
            let ty = match (kind, x.as_slice()) {
                (1, [enc]) => Ty::Int(sot, enc & 0xff, (enc >> 16) & 0xff),
                (2, _) => Ty::Ptr,
                (3, [elem, _index_type, nelems]) => Ty::Array(*elem, *nelems),
                (4 | 5, _) => {
                    let member = |m: &[u32]| match *m {
                        // kind_flag: offset = bitfield size << 24 | bit offset.
                        [n, t, o] if kflag => Some((n, t, o & 0xff_ffff, o >> 24)),
                        [n, t, o] => Some((n, t, o, 0)),
                        _ => None,
                    };
                    Ty::Composite(
                        kind == 5,
                        sot,
                        x.chunks_exact(3).filter_map(member).collect(),
                    )
                }
                (6, _) => {
                    let value = |e: &[u32]| match *e {
                        [n, v] if kflag => Some((n, i64::from(v as i32))),
                        [n, v] => Some((n, i64::from(v))),
                        _ => None,
                    };
                    Ty::Enum(sot, x.chunks_exact(2).filter_map(value).collect())
                }
                (19, _) => {
                    let value = |e: &[u32]| match *e {
                        // Unsigned values above i64::MAX wrap; the kernel has none.
                        [n, lo, hi] => Some((n, ((u64::from(hi) << 32) | u64::from(lo)) as i64)),
                        _ => None,
                    };
                    Ty::Enum(sot, x.chunks_exact(3).filter_map(value).collect())
                }
                (7, _) => Ty::Fwd,
                (8..=11 | 18, _) => Ty::Alias(sot),
                (16, _) => Ty::Float(sot),
                _ => Ty::Other,
            };
            if name_off != 0 {
                // Checked here, so that a corrupt name fails the parse, not a later lookup.
                btf.str_at(name_off)?;
            }
            btf.types.push((name_off, ty));
        }
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> Result<&str, BtfError> {
        let bad = || {
            BtfError::Corrupt(format!(
                "string offset {off} is not a NUL-terminated UTF-8 string"
            ))
        };
        let rest = self.strings.get(off as usize..).ok_or_else(bad)?;
        let end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
        std::str::from_utf8(rest.get(..end).ok_or_else(bad)?).map_err(|_| bad())
    }

    fn ty(&self, id: u32) -> Result<&Ty, BtfError> {
        let missing =
            || BtfError::Corrupt(format!("a type refers to type #{id}, which does not exist"));
        self.types
            .get(id as usize)
            .map(|(_, ty)| ty)
            .ok_or_else(missing)
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type id.
    fn strip(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            match self.ty(id)? {
                Ty::Alias(target) => id = *target,
                _ => return Ok(id),
            }
        }
        Err(BtfError::Corrupt(format!(
            "type #{id} is in a typedef/modifier chain that is too long or cyclic"
        )))
    }

    /// Byte size of a type, resolving aliases and arrays.
    fn size_of(&self, mut id: u32) -> Result<u32, BtfError> {
        let mut mult: u32 = 1;
        for _ in 0..MAX_DEPTH {
            let base = match self.ty(id)? {
                Ty::Int(size, ..)
                | Ty::Float(size)
                | Ty::Enum(size, _)
                | Ty::Composite(_, size, _) => *size,
                Ty::Ptr => PTR_SIZE,
                Ty::Array(elem, n) => {
                    mult = mult
                        .checked_mul(*n)
                        .ok_or(BtfError::Unsized(id, "the array size overflows"))?;
                    id = *elem;
                    continue;
                }
                Ty::Alias(target) => {
                    id = *target;
                    continue;
                }
                Ty::Void => return Err(BtfError::Unsized(id, "it is void")),
                Ty::Fwd => return Err(BtfError::Unsized(id, "it is only a forward declaration")),
                Ty::Other => return Err(BtfError::Unsized(id, "it is not a data type")),
            };
            return base
                .checked_mul(mult)
                .ok_or(BtfError::Unsized(id, "the array size overflows"));
        }
        Err(BtfError::Unsized(
            id,
            "its type chain is too long or cyclic",
        ))
    }

    /// "struct foo", "union foo", or "anonymous struct" for composite `id`.
    fn describe(&self, id: u32) -> String {
        let word = match self.ty(id) {
            Ok(Ty::Composite(true, ..)) => "union",
            _ => "struct",
        };
        match self.types.get(id as usize).map(|(n, _)| self.str_at(*n)) {
            Some(Ok(name)) if !name.is_empty() => format!("{word} {name}"),
            _ => format!("anonymous {word}"),
        }
    }

    /// The first struct/union (or enum, if `want_enum`) called `name`, preferring one with
    /// members/values over FWD-like empty duplicates.
    fn pick(&self, name: &str, want_enum: bool) -> Option<(u32, &Ty)> {
        let named = self
            .types
            .iter()
            .enumerate()
            .filter(|(_, (off, _))| *off != 0 && self.str_at(*off).is_ok_and(|n| n == name));
        let found = named.filter_map(|(id, (_, ty))| {
            let id = id as u32;
            match (want_enum, ty) {
                (false, Ty::Composite(_, _, m)) => Some((m.is_empty(), id, ty)),
                (true, Ty::Enum(_, v)) => Some((v.is_empty(), id, ty)),
                _ => None,
            }
        });
        found
            .min_by_key(|&(empty, id, _)| (empty, id))
            .map(|(_, id, ty)| (id, ty))
    }

    fn find_composite(&self, name: &str) -> Result<u32, BtfError> {
        let not_found = || BtfError::TypeNotFound("struct", name.to_string());
        self.pick(name, false)
            .map(|(id, _)| id)
            .ok_or_else(not_found)
    }

    /// Finds member `name` of composite `id`, descending into anonymous struct/union members.
    /// Returns the member with its bit offset made relative to the start of `id`.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<Member>, BtfError> {
        if depth > MAX_DEPTH {
            let msg = format!("anonymous members of type #{id} nest too deep");
            return Err(BtfError::Corrupt(msg));
        }
        let Ty::Composite(_, _, members) = self.ty(id)? else {
            return Ok(None);
        };
        for &(name_off, type_id, off, bits) in members {
            let member = self.str_at(name_off)?;
            if member == name {
                return Ok(Some((name_off, type_id, off, bits)));
            }
            if member.is_empty() {
                let inner = self.find_member(self.strip(type_id)?, name, depth + 1)?;
                if let Some((n, t, inner_off, b)) = inner {
                    return Ok(Some((n, t, off.saturating_add(inner_off), b)));
                }
            }
        }
        Ok(None)
    }

    /// Offset and size of `path` (e.g. `["len"]`, or `["ns", "inum"]` in `struct net`) within
    /// `struct_name`, searching anonymous struct/union members at every step. Each step except
    /// the last must be an embedded struct/union; descending through a pointer is an error.
    pub fn member_offset(&self, struct_name: &str, path: &[&str]) -> Result<FieldInfo, BtfError> {
        let name = strip_keyword(struct_name, &["struct ", "union "]);
        let mut cur = self.find_composite(name)?;
        let mut container = self.describe(cur);
        let mut base: u32 = 0;
        for (i, step) in path.iter().enumerate() {
            let Some((_, tid, off, mut bit_size)) = self.find_member(cur, step, 0)? else {
                return Err(BtfError::MemberNotFound(container, step.to_string()));
            };
            let mut bits = base.saturating_add(off);
            let resolved = self.strip(tid)?;
            if i + 1 == path.len() {
                let size = self.size_of(tid)?;
                // Old-style (no kind_flag) bitfields are encoded in the INT type itself.
                if let (0, Ty::Int(isz, nb, bit_off)) = (bit_size, self.ty(resolved)?) {
                    if *nb != 0 && Some(*nb) != isz.checked_mul(8) {
                        bit_size = *nb;
                        bits = bits.saturating_add(*bit_off);
                    }
                }
                let bit_offset = if bit_size == 0 { 0 } else { bits % 8 };
                let byte_offset = bits / 8;
                return Ok(FieldInfo {
                    byte_offset,
                    size,
                    bit_offset,
                    bit_size,
                });
            }
            match self.ty(resolved)? {
                Ty::Composite(..) => {}
                Ty::Ptr => return Err(BtfError::MemberBehindPointer(container, step.to_string())),
                _ => return Err(BtfError::NotAComposite(container, step.to_string())),
            }
            let walked = path.get(..=i).unwrap_or_default().join(".");
            container = format!(
                "{} (at `{walked}` in struct {name})",
                self.describe(resolved)
            );
            (cur, base) = (resolved, bits);
        }
        Err(BtfError::EmptyPath(name.to_string()))
    }

    /// All (name, value) pairs of the named ENUM or ENUM64 (`"skb_drop_reason"` or
    /// `"enum skb_drop_reason"`), in declaration order.
    pub fn enum_values(&self, enum_name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let name = strip_keyword(enum_name, &["enum "]);
        let Some((_, Ty::Enum(_, values))) = self.pick(name, true) else {
            return Err(BtfError::TypeNotFound("enum", name.to_string()));
        };
        let named = |&(n, v): &(u32, i64)| Ok((self.str_at(n)?.to_string(), v));
        values.iter().map(named).collect()
    }

    /// The name of `value` in the named enum, if both exist.
    #[cfg(test)]
    pub fn enum_name_of(&self, enum_name: &str, value: i64) -> Option<String> {
        let values = self.enum_values(enum_name).ok()?;
        values
            .into_iter()
            .find_map(|(n, v)| (v == value).then_some(n))
    }

    /// Byte size of the named struct or union.
    #[cfg(test)]
    pub fn type_size(&self, name: &str) -> Result<u32, BtfError> {
        self.size_of(self.find_composite(strip_keyword(name, &["struct ", "union "]))?)
    }
}

#[cfg(test)]
mod tests;
