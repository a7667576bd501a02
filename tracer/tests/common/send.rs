//! Senders for the end-to-end tests: real traffic from inside a namespace (a container,
//! the lab's internet, the host), each after the network safety check.

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::Duration,
};

use super::Lab;

/// Runs `f` on a thread inside the network namespace at `path`.
pub fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: valid fd; changes only this thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("sender thread")
    })
}

/// Where a test sends from.
#[derive(Clone, Debug)]
pub enum From {
    Container(String),
    Internet,
    /// The host itself (the tests' own namespace), by the lab's uplink.
    Host,
}

impl From {
    fn netns(&self, lab: &Lab) -> String {
        match self {
            Self::Container(name) => format!("/proc/{}/ns/net", lab.container_pid(name)),
            Self::Internet => format!("/run/netns/{}", lab.inet_netns()),
            Self::Host => "/proc/self/ns/net".to_owned(),
        }
    }
}

/// One TCP exchange (connect, send, read the echo, close). Returns the local port, or the
/// error (a dropped SYN times out).
pub fn tcp(lab: &Lab, from: &From, dst: IpAddr, port: u16) -> Result<u16, String> {
    tcp_sized(lab, from, dst, port, b"flowtrace\n")
}

/// Like [`tcp`], with `payload` as the message (the responder echoes it).
pub fn tcp_sized(
    lab: &Lab,
    from: &From,
    dst: IpAddr,
    port: u16,
    payload: &[u8],
) -> Result<u16, String> {
    lab.assert_safe(from, dst);
    in_netns(&from.netns(lab), || {
        let addr = SocketAddr::new(dst, port);
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        let local = s.local_addr().map_err(|e| e.to_string())?.port();
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(payload).map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < payload.len() {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        if got != payload {
            return Err(format!("unexpected echo of {} bytes", got.len()));
        }
        Ok(local)
    })
}

/// One UDP datagram and its echo. Returns the local port.
pub fn udp(lab: &Lab, from: &From, dst: IpAddr, port: u16) -> Result<u16, String> {
    udp_from(lab, from, 0, dst, port)
}

/// Like [`udp`], from local port `sport` (0: any).
pub fn udp_from(lab: &Lab, from: &From, sport: u16, dst: IpAddr, port: u16) -> Result<u16, String> {
    lab.assert_safe(from, dst);
    in_netns(&from.netns(lab), || {
        let s = UdpSocket::bind(("0.0.0.0", sport)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.send_to(b"flowtrace\n", SocketAddr::new(dst, port))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(s.local_addr().map_err(|e| e.to_string())?.port())
    })
}

/// One UDP datagram with the given IP TTL, no reply expected. Returns the local port.
pub fn udp_ttl(lab: &Lab, from: &From, dst: IpAddr, port: u16, ttl: u32) -> u16 {
    lab.assert_safe(from, dst);
    in_netns(&from.netns(lab), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_ttl(ttl).expect("IP_TTL");
        s.send_to(b"flowtrace-ttl\n", SocketAddr::new(dst, port))
            .expect("send");
        s.local_addr().expect("local").port()
    })
}

/// `n` UDP datagrams of `payload` from inside a container, as fast as it can (send errors
/// under a flood are retried, so exactly `n` leave). After the safety check.
pub fn udp_burst(lab: &Lab, container: &str, dst: IpAddr, port: u16, n: u64, payload: &[u8]) {
    lab.assert_safe(&From::Container(container.to_owned()), dst);
    let pid = lab.container_pid(container);
    in_netns(&format!("/proc/{pid}/ns/net"), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..n {
            while s.send_to(payload, (dst, port)).is_err() {}
        }
    });
}

/// ICMP echo from inside a container (busybox ping, which the lab image has).
pub fn ping(lab: &Lab, container: &str, dst: IpAddr, count: u32) -> bool {
    lab.assert_safe(&From::Container(container.to_owned()), dst);
    Command::new("docker")
        .args([
            "exec",
            container,
            "ping",
            "-c",
            &count.to_string(),
            "-W",
            "2",
            &dst.to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
