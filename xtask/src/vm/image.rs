//! What a VM boots: a Debian kernel package, unpacked and cached, and an initramfs holding
//! busybox, the release flowtrace, iproute2, iptables (both backends), nft, the kernel modules
//! the test needs (with their dependencies from modules.dep), and the guest scripts.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::cmd::cmd;

/// Modules the guest loads (dependencies come from modules.dep).
pub const MODULES: &[&str] = &[
    "crc32c_generic",
    "veth",
    "nf_tables",
    "nft_compat",
    "nf_conntrack",
    "nf_nat",
    "ip_tables",
    "iptable_filter",
    "iptable_nat",
    "x_tables",
    "xt_tcpudp",
    "nft_chain_nat",
    "sch_ingress",
    "cls_bpf",
    "bridge",
    "xt_conntrack",
    "xt_addrtype",
    "xt_MASQUERADE",
    "xt_nat",
];

/// Host binaries copied into the guest, with the shared libraries `ldd` lists for them.
const BINARIES: &[&str] = &[
    "/usr/bin/ip",
    "/usr/sbin/tc",
    "/usr/sbin/xtables-nft-multi",
    "/usr/sbin/xtables-legacy-multi",
    "/usr/sbin/nft",
];

/// A kernel: its release string and where its unpacked package is.
pub struct Kernel {
    pub release: String,
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }
}

/// The newest `linux-image-<series>.N-amd64` package Debian's archive offers, downloaded
/// and unpacked under `cache` (reused when already there).
pub fn kernel(series: &str, cache: &Path) -> Result<Kernel> {
    let list = cmd("apt-cache", ["search", "--names-only", "^linux-image-"]).read()?;
    let prefix = format!("linux-image-{series}");
    let mut found: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| {
            // linux-image-6.1.0-56-amd64, linux-image-6.12.107+deb12-amd64: not the meta
            // packages (linux-image-6.12-amd64) nor the cloud/rt/dbg/unsigned flavours.
            p.starts_with(&prefix)
                && p.ends_with("-amd64")
                && p[prefix.len()..].starts_with('.')
                && ["cloud", "-rt-", "dbg", "unsigned", "template"]
                    .iter()
                    .all(|x| !p.contains(x))
        })
        .map(str::to_owned)
        .collect();
    found.sort_by_key(|p| {
        p.split(['.', '-', '+'])
            .filter_map(|x| x.parse::<u32>().ok())
            .collect::<Vec<_>>()
    });
    let package = found
        .pop()
        .with_context(|| format!("no linux-image-{series}.*-amd64 package in apt's lists"))?;
    let release = package.trim_start_matches("linux-image-").to_owned();
    let root = cache.join(&release);
    if !root.join(format!("boot/vmlinuz-{release}")).exists() {
        fs::create_dir_all(cache)?;
        crate::out!("vm-test: downloading {package}");
        cmd("apt-get", ["download", &package])
            .current_dir(cache)
            .run()
            .with_context(|| format!("apt-get download {package}"))?;
        let deb = fs::read_dir(cache)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&package) && n.ends_with(".deb"))
            })
            .context("the downloaded .deb is missing")?;
        cmd("dpkg-deb", ["-x"]).arg(&deb).arg(&root).run()?;
        let _ = fs::remove_file(&deb);
    }
    cmd("busybox", ["depmod", "-b"])
        .arg(&root)
        .arg(&release)
        .run()
        .context("busybox depmod")?;
    Ok(Kernel { release, root })
}

fn copy_with_libs(bin: &Path, dst_root: &Path, dst: &Path) -> Result<()> {
    let to = dst_root.join(dst.strip_prefix("/").unwrap_or(dst));
    fs::create_dir_all(to.parent().context("no parent")?)?;
    fs::copy(bin, &to).with_context(|| format!("copying {}", bin.display()))?;
    let ldd = cmd("ldd", [bin]).read().unwrap_or_default();
    for lib in ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(Path::new)
    {
        let to = dst_root.join(lib.strip_prefix("/").unwrap_or(lib));
        if !to.exists() {
            fs::create_dir_all(to.parent().context("no parent")?)?;
            fs::copy(lib, &to).with_context(|| format!("copying {}", lib.display()))?;
        }
    }
    Ok(())
}

/// The modules in `MODULES` and everything they depend on, as paths relative to the
/// kernel's module directory.
pub fn module_closure(modules_dep: &str, wanted: &[&str]) -> BTreeSet<String> {
    let deps: Vec<(&str, Vec<&str>)> = modules_dep
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim(), v.split_whitespace().collect()))
        })
        .collect();
    let by_name = |name: &str| {
        deps.iter()
            .find(|(k, _)| {
                Path::new(k)
                    .file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.split(".ko").next())
                    == Some(name)
            })
            .map(|(k, _)| (*k).to_owned())
    };
    let mut todo: Vec<String> = wanted.iter().filter_map(|w| by_name(w)).collect();
    let mut seen = BTreeSet::new();
    while let Some(m) = todo.pop() {
        if seen.insert(m.clone()) {
            if let Some((_, d)) = deps.iter().find(|(k, _)| *k == m) {
                todo.extend(d.iter().map(|s| (*s).to_owned()));
            }
        }
    }
    seen
}

/// Builds the initramfs for `kernel` with `flowtrace`, `init` and `test` as its scripts.
pub fn initramfs(
    kernel: &Kernel,
    flowtrace: &Path,
    init: &str,
    test: &str,
    work: &Path,
) -> Result<PathBuf> {
    let root = work.join(format!("initramfs-{}", kernel.release));
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "usr/bin",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing (apt-get install busybox-static)");
    }
    fs::copy(busybox, root.join("bin/busybox"))?;
    for applet in cmd("busybox", ["--list"]).read()?.lines() {
        let _ = symlink("busybox", root.join("bin").join(applet));
    }
    let _ = symlink("/bin/busybox", root.join("sbin/modprobe"));
    copy_with_libs(flowtrace, &root, Path::new("/usr/bin/flowtrace"))?;
    for b in BINARIES {
        copy_with_libs(Path::new(b), &root, Path::new(b))?;
    }
    for (link, to) in [
        ("iptables", "xtables-nft-multi"),
        ("iptables-save", "xtables-nft-multi"),
        ("iptables-legacy", "xtables-legacy-multi"),
        ("iptables-legacy-save", "xtables-legacy-multi"),
    ] {
        symlink(to, root.join("usr/sbin").join(link))?;
    }
    let xt = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    for e in fs::read_dir(xt)
        .context("reading the xtables plugins")?
        .flatten()
    {
        let p = e.path();
        copy_with_libs(&p, &root, &p)?;
    }
    let src = kernel.root.join("lib/modules").join(&kernel.release);
    let dst = root.join("lib/modules").join(&kernel.release);
    let dep = fs::read_to_string(src.join("modules.dep")).context("modules.dep")?;
    let closure = module_closure(&dep, MODULES);
    let mut dep_out = String::new();
    for m in &closure {
        let to = dst.join(m);
        fs::create_dir_all(to.parent().context("no parent")?)?;
        fs::copy(src.join(m), &to)?;
        let line = dep.lines().find(|l| l.starts_with(&format!("{m}:")));
        dep_out.push_str(line.unwrap_or(&format!("{m}:")));
        dep_out.push('\n');
    }
    fs::write(dst.join("modules.dep"), dep_out)?;
    for (name, text) in [("init", init), ("test.sh", test)] {
        let p = root.join(name);
        fs::write(&p, text)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
    }
    let out = work.join(format!("initrd-{}.cpio.gz", kernel.release));
    let script = format!(
        "cd '{}' && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        root.display(),
        out.display()
    );
    cmd("sh", ["-c", &script])
        .run()
        .context("packing the initramfs")?;
    fs::remove_dir_all(&root)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_closure_follows_modules_dep() {
        let dep = "kernel/net/netfilter/nft_compat.ko: kernel/net/netfilter/nf_tables.ko kernel/net/netfilter/x_tables.ko\n\
                   kernel/net/netfilter/nf_tables.ko: kernel/lib/libcrc32c.ko\n\
                   kernel/lib/libcrc32c.ko:\n\
                   kernel/net/netfilter/x_tables.ko:\n\
                   kernel/drivers/net/veth.ko:\n";
        let c = module_closure(dep, &["nft_compat", "missing"]);
        let names: Vec<&str> = c.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            vec![
                "kernel/lib/libcrc32c.ko",
                "kernel/net/netfilter/nf_tables.ko",
                "kernel/net/netfilter/nft_compat.ko",
                "kernel/net/netfilter/x_tables.ko",
            ]
        );
    }
}
