//! Tests of the BTF reader: a synthetic blob, malformed input, and the running kernel.
use super::*;

const KF: u32 = 1 << 31; // kind_flag

fn info(kind: u32, vlen: u32) -> u32 {
    (kind << 24) | vlen
}

/// Tiny BTF writer: (type section, string section, last type id).
struct W(Vec<u8>, Vec<u8>, u32);

impl W {
    fn s(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.1.len() as u32;
        self.1.extend(s.bytes().chain([0]));
        off
    }
    fn t(&mut self, name: &str, info: u32, size_or_type: u32, extra: &[u32]) -> u32 {
        let head = [self.s(name), info, size_or_type];
        self.0
            .extend(head.iter().chain(extra).flat_map(|w| w.to_le_bytes()));
        self.2 += 1;
        self.2
    }
    fn finish(&self) -> Vec<u8> {
        let (tl, sl) = (self.0.len() as u32, self.1.len() as u32);
        let hdr = [0x0001_eb9f, 24, 0, tl, tl, sl]
            .into_iter()
            .flat_map(u32::to_le_bytes);
        hdr.chain(self.0.iter().copied())
            .chain(self.1.iter().copied())
            .collect()
    }
}

fn synthetic() -> Vec<u8> {
    let mut w = W(vec![], vec![0], 0);
    let int = w.t("int", info(1, 0), 4, &[(1 << 24) | 32]);
    let ushort = w.t("unsigned short", info(1, 0), 2, &[16]);
    let long = w.t("long", info(1, 0), 8, &[(1 << 24) | 64]);
    let chr = w.t("char", info(1, 0), 1, &[8]);
    let u32t = w.t("u32", info(8, 0), int, &[]);
    let cu32 = w.t("", info(10, 0), u32t, &[]);
    // Every other kind, plus FWD and empty duplicates of `outer`, to check nothing desyncs.
    w.t("outer", info(7, 0), 0, &[]);
    w.t("outer", info(4, 0), 0, &[]);
    let fp = w.t("", info(13, 1), int, &[0, int]);
    w.t("f", info(12, 0), fp, &[]);
    let var = w.t("v", info(14, 0), int, &[1]);
    w.t(".data", info(15, 1), 4, &[var, 0, 4]);
    w.t("tag", info(17, 0), var, &[u32::MAX]);
    w.t("double", info(16, 0), 8, &[]);
    w.t("user", info(18, 0), int, &[]);
    w.t("", info(9, 0), int, &[]);
    w.t("", info(11, 0), int, &[]);
    let arr = w.t("", info(3, 0), 0, &[chr, int, 16]);
    let (a, b, whole, x) = (w.s("a"), w.s("b"), w.s("whole"), w.s("x"));
    let anon_s = w.t("", info(4, 2), 8, &[a, int, 0, b, cu32, 32]);
    let anon_u = w.t("", info(5, 2), 8, &[0, anon_s, 0, whole, long, 0]);
    let nested = w.t("nested_s", info(4, 1), 4, &[x, int, 0]);
    let ptr = w.t("", info(2, 0), nested, &[]);
    let members = [
        [w.s("first"), u32t, 0],
        [0, anon_u, 64],
        [w.s("flags"), ushort, (3 << 24) | 133], // 3-bit bitfield at bit 133
        [w.s("p"), ptr, 192],
        [w.s("nested"), nested, 256],
        [w.s("name"), arr, 288],
    ];
    w.t("outer", info(4, 6) | KF, 56, members.as_flattened());
    let old_bf = w.t("", info(1, 0), 4, &[(4 << 16) | 3]); // 3 bits at +4, INT-encoded
    let bf = w.s("bf");
    w.t("old", info(4, 1), 4, &[bf, old_bf, 10]);
    let (red, blue, neg, huge) = (w.s("RED"), w.s("BLUE"), w.s("NEG"), w.s("HUGE"));
    w.t("color", info(6, 2), 4, &[red, 0, blue, u32::MAX]);
    w.t("sgn", info(6, 1) | KF, 4, &[neg, u32::MAX]);
    w.t("big", info(19, 1), 8, &[huge, 5, 1]);
    w.finish()
}

#[test]
fn synthetic_blob() {
    let btf = Btf::parse(&synthetic()).unwrap();
    let m = |path: &[&str]| btf.member_offset("outer", path);
    let at = |s: &str, path: &[&str]| {
        let f = btf.member_offset(s, path).unwrap();
        (f.byte_offset, f.size, f.bit_offset, f.bit_size)
    };
    assert_eq!(at("outer", &["first"]), (0, 4, 0, 0));
    assert_eq!(at("outer", &["a"]), (8, 4, 0, 0));
    assert_eq!(
        at("outer", &["b"]),
        (12, 4, 0, 0),
        "const u32 in anon struct"
    );
    assert_eq!(at("outer", &["whole"]), (8, 8, 0, 0));
    assert_eq!(at("outer", &["flags"]), (16, 2, 5, 3));
    assert_eq!(at("outer", &["p"]), (24, PTR_SIZE, 0, 0));
    assert_eq!(at("outer", &["nested", "x"]), (32, 4, 0, 0));
    assert_eq!(at("outer", &["name"]), (36, 16, 0, 0));
    assert_eq!(at("struct old", &["bf"]), (1, 4, 6, 3));
    assert!(matches!(
        m(&["p", "x"]),
        Err(BtfError::MemberBehindPointer(..))
    ));
    assert!(matches!(
        m(&["first", "x"]),
        Err(BtfError::NotAComposite(..))
    ));
    assert!(matches!(m(&[]), Err(BtfError::EmptyPath(_))));
    let err = m(&["nope"]).unwrap_err().to_string();
    assert_eq!(
        err,
        "struct outer has no member `nope` in this kernel's BTF"
    );
    let err = m(&["nested", "y"]).unwrap_err().to_string();
    let want = "struct nested_s (at `nested` in struct outer) has no member `y`";
    assert!(err.starts_with(want), "{err}");
    let err = btf.member_offset("nope", &["a"]);
    assert!(matches!(err, Err(BtfError::TypeNotFound(..))));
    assert_eq!(btf.type_size("outer").unwrap(), 56);
    assert_eq!(btf.type_size("struct nested_s").unwrap(), 4);
    assert!(btf.type_size("int").is_err());
    let vals = |name: &str| btf.enum_values(name).unwrap();
    let blue = ("BLUE".to_string(), 4294967295);
    assert_eq!(vals("color"), [("RED".to_string(), 0), blue]);
    assert_eq!(vals("enum sgn"), [("NEG".to_string(), -1)]);
    assert_eq!(vals("big"), [("HUGE".to_string(), 0x1_0000_0005)]);
    assert_eq!(
        btf.enum_name_of("enum color", 4294967295).as_deref(),
        Some("BLUE")
    );
    assert_eq!(
        btf.enum_name_of("big", 0x1_0000_0005).as_deref(),
        Some("HUGE")
    );
    assert_eq!(btf.enum_name_of("color", 7), None);
    assert!(btf.enum_values("outer").is_err());
}

#[test]
fn malformed_input_is_an_error() {
    let good = synthetic();
    assert!(matches!(Btf::parse(&[]), Err(BtfError::Truncated(_))));
    let bad_magic = [&[0u8, 0][..], &good[2..]].concat();
    assert!(matches!(Btf::parse(&bad_magic), Err(BtfError::BadMagic(0))));
    let short = &good[..good.len() - 1]; // string section runs past the end
    assert!(matches!(Btf::parse(short), Err(BtfError::Truncated(_))));
    // Type section 4 bytes short, so its last type is cut (strings follow unchanged).
    let mut cut = good.clone();
    let type_len = u32::from_le_bytes([cut[12], cut[13], cut[14], cut[15]]);
    cut[12..16].copy_from_slice(&(type_len - 4).to_le_bytes());
    assert!(
        matches!(Btf::parse(&cut), Err(BtfError::Truncated(_))),
        "{:?}",
        Btf::parse(&cut)
    );
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..2000 {
        let garbage: Vec<u8> = (0..next() % 256).map(|_| next() as u8).collect();
        assert!(Btf::parse(&garbage).is_err(), "garbage buffer {i} parsed");
        // Mutated valid blobs may parse; every query on them must still not panic.
        let mut m = good.clone();
        for _ in 0..=next() % 4 {
            let at = next() as usize % m.len();
            m[at] = next() as u8;
        }
        if let Ok(btf) = Btf::parse(&m) {
            let _ = btf.member_offset("outer", &["nested", "x"]);
            let _ = (
                btf.member_offset("outer", &["flags"]),
                btf.type_size("outer"),
            );
            let _ = (btf.enum_values("big"), btf.enum_name_of("color", 0));
        }
    }
}

#[test]
fn running_kernel() {
    if !Path::new(SYS_BTF_PATH).exists() {
        eprintln!("skipped: {SYS_BTF_PATH} does not exist");
        return;
    }
    let btf = Btf::from_sys_fs().unwrap();
    let show = |s: &str, path: &[&str]| {
        let f = btf.member_offset(s, path).unwrap_or_else(|e| panic!("{e}"));
        println!("{s}.{}: {f:?}", path.join("."));
        f.size
    };
    let skb = [
        ("len", 4),
        ("data", PTR_SIZE),
        ("head", PTR_SIZE),
        ("mark", 4),
    ];
    let skb2 = [
        ("network_header", 2),
        ("transport_header", 2),
        ("dev", PTR_SIZE),
    ];
    for (field, size) in skb.into_iter().chain(skb2).chain([("protocol", 2)]) {
        assert_eq!(show("sk_buff", &[field]), size, "sk_buff.{field}");
    }
    assert_eq!(show("net_device", &["ifindex"]), 4);
    for field in ["hook", "pf", "in", "out", "net"] {
        show("nf_hook_state", &[field]);
    }
    assert_eq!(show("net", &["ns", "inum"]), 4);
    println!(
        "sizeof(struct sk_buff) = {}",
        btf.type_size("sk_buff").unwrap()
    );
    let reasons = btf.enum_values("enum skb_drop_reason").unwrap();
    let value = |n: &str| reasons.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
    assert!(value("SKB_DROP_REASON_NOT_SPECIFIED").is_some());
    let nf = value("SKB_DROP_REASON_NETFILTER_DROP").unwrap();
    println!("SKB_DROP_REASON_NETFILTER_DROP = {nf}");
    let back = btf.enum_name_of("skb_drop_reason", nf);
    assert_eq!(back.as_deref(), Some("SKB_DROP_REASON_NETFILTER_DROP"));
}
