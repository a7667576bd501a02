//! The lab's state file, `/run/flowtrace-lab/state.json`. Written step by step during `lab up`
//! so that a half-failed `up` can be torn down. The lead's code and tests read it: field names
//! are fixed.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const STATE_DIR: &str = "/run/flowtrace-lab";
pub const STATE_FILE: &str = "/run/flowtrace-lab/state.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Published {
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub container: String,
    pub container_id: Option<String>,
    pub container_ip: String,
    pub network: String,
    pub network_id: Option<String>,
    pub bridge: Option<String>,
    pub host_veth: Option<String>,
    pub peer_container: Option<String>,
    pub peer_container_id: Option<String>,
    pub peer_ip: Option<String>,
    pub peer_veth: Option<String>,
    pub inet_netns: String,
    pub uplink: String,
    pub uplink_ip: String,
    pub inet_ip: String,
    pub inet_subnet: String,
    pub tcp_ports: Vec<u16>,
    pub udp_port: u16,
    pub drop_port: Option<u16>,
    /// Exact `iptables -S` form of the drop rule, e.g. `-A DOCKER-USER -d 198.51.100.2/32 ...`.
    pub drop_rule: Option<String>,
    pub published: Option<Published>,
    /// `ens_isolated` on the second user network, and that network's bridge.
    #[serde(default)]
    pub isolated_ip: Option<String>,
    #[serde(default)]
    pub isolated_bridge: Option<String>,
    pub responder_pids: Vec<u32>,
    pub image: String,
    pub guard_comment: String,
    /// Set once the guard rules are in place.
    pub guards_installed: bool,
    /// `/proc/sys/net/ipv4/ip_forward` before `up` touched it (null if `up` left it alone).
    pub ip_forward_before: Option<String>,
    /// A Docker object whose creation was requested but not yet confirmed, as
    /// `network:NAME` or `container:NAME`. If `up` died meanwhile, dockerd may still finish
    /// creating it after we look, so teardown waits for it to appear.
    pub pending: Option<String>,
    /// `up` finished (false while it runs or if it failed midway).
    pub complete: bool,
}

impl State {
    pub fn load() -> Result<Option<State>> {
        if !Path::new(STATE_FILE).exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(STATE_FILE).with_context(|| format!("reading {STATE_FILE}"))?;
        let state = serde_json::from_str(&text).with_context(|| {
            format!("parsing {STATE_FILE} (remove it by hand if it is corrupt)")
        })?;
        Ok(Some(state))
    }

    /// Write atomically (temp file + rename) so readers never see half a file.
    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let tmp = format!("{STATE_FILE}.tmp");
        let text = serde_json::to_string_pretty(self).context("serialising the lab state")?;
        std::fs::write(&tmp, text + "\n").with_context(|| format!("writing {tmp}"))?;
        std::fs::rename(&tmp, STATE_FILE).with_context(|| format!("renaming {tmp}"))?;
        Ok(())
    }

    pub fn remove_file() -> Result<()> {
        for f in [STATE_FILE.to_string(), format!("{STATE_FILE}.tmp")] {
            if Path::new(&f).exists() {
                std::fs::remove_file(&f).with_context(|| format!("removing {f}"))?;
            }
        }
        // Only succeeds if nothing else is left in it; that is the point.
        let _ = std::fs::remove_dir(STATE_DIR);
        Ok(())
    }
}
