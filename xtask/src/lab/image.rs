//! The lab's container image: Debian's busybox-static imported as a one-layer image.
//! There is no registry here: never `docker pull`.

use super::{IMAGE, LAB_LABEL};
use crate::cmd::cmd;
use anyhow::{bail, Context, Result};
use std::path::Path;

const BUSYBOX: &str = "/bin/busybox";

pub fn image_exists() -> Result<bool> {
    cmd("docker", ["image", "inspect", "--format", "{{.Id}}", IMAGE]).ok()
}

/// Build and import the image unless the tag already exists. Returns true if it was built.
pub fn ensure_image() -> Result<bool> {
    if image_exists()? {
        return Ok(false);
    }
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} is missing: install busybox-static (cargo xtask setup)");
    }
    let dir = std::env::temp_dir().join(format!("flowtrace-lab-image-{}", std::process::id()));
    let result = build_in(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(true)
}

fn build_in(dir: &Path) -> Result<()> {
    let root = dir.join("rootfs");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root",
    ] {
        std::fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))
        .with_context(|| format!("copying {BUSYBOX}"))?;
    // One symlink per applet (sh, nc, ping, sleep, ip, cat, echo, ...), all in /bin.
    let applets = cmd(BUSYBOX, ["--list"]).read()?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)
                .with_context(|| format!("symlinking {}", link.display()))?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .context("writing etc/passwd")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n").context("writing etc/group")?;
    let tar = dir.join("rootfs.tar");
    cmd("tar", ["--numeric-owner", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .run()?;
    cmd("docker", ["import"])
        .args([
            "--change",
            "ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin",
            "--change",
            "CMD [\"/bin/sh\"]",
            "--change",
        ])
        .arg(format!("LABEL {LAB_LABEL}"))
        .arg(&tar)
        .arg(IMAGE)
        .run()
        .context("importing the busybox image")?;
    Ok(())
}

/// Remove the image if it exists; returns whether it did.
pub fn remove_image() -> Result<bool> {
    if !image_exists()? {
        return Ok(false);
    }
    cmd("docker", ["image", "rm", IMAGE]).run()?;
    Ok(true)
}
