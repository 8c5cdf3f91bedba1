//! Finding the network namespaces of pods the agent was not told about through the CNI plugin:
//! pods that were running before the agent started, or while it was down. A pod is recognised
//! by its IP: each distinct namespace on the node (bind-mounted under the runtime's netns
//! directories, or held by a process in `/proc`) is entered once and its addresses are read.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::inpod::netns::Netns;

/// The namespaces found, by the addresses they hold: a path to each and the namespace's inode
/// (a `/proc/PID` path can come to name another namespace; check with [`still_names`]).
/// Bind-mounted paths are preferred to `/proc` ones.
pub fn scan(netns_dirs: &[PathBuf], processes: bool) -> HashMap<IpAddr, (PathBuf, u64)> {
    let own = std::fs::metadata("/proc/self/ns/net")
        .map(|m| inode_of(&m))
        .ok();
    let mut seen: HashSet<u64> = own.into_iter().collect();
    let mut found = HashMap::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    for dir in netns_dirs {
        if let Ok(entries) = std::fs::read_dir(dir) {
            candidates.extend(entries.flatten().map(|e| e.path()));
        }
    }
    if processes {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            candidates.extend(
                entries
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .map(|e| e.path().join("ns/net")),
            );
        }
    }
    for path in candidates {
        // metadata follows /proc's magic link to the nsfs inode; a bind mount is that inode.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let inode = inode_of(&meta);
        if !seen.insert(inode) {
            continue;
        }
        match addresses_in(&path) {
            Ok(ips) => {
                for ip in ips {
                    found.entry(ip).or_insert_with(|| (path.clone(), inode));
                }
            }
            Err(e) => tracing::debug!("netns {}: {e}", path.display()),
        }
    }
    found
}

/// Whether `path` still names the namespace with `inode`.
pub fn still_names(path: &Path, inode: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| inode_of(&m) == inode)
}

fn inode_of(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

/// The non-loopback addresses configured inside a namespace.
pub fn addresses_in(path: &Path) -> io::Result<Vec<IpAddr>> {
    Netns::open(path)?.run(interface_addresses)
}

/// getifaddrs(3) in the calling thread's namespace.
pub(crate) fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ips = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
            let ip = unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                    }
                    _ => None,
                }
            };
            if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
                ips.push(ip);
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_namespaces_addresses() {
        // Whatever this machine has, the call works and never reports loopback.
        let ips = interface_addresses().expect("getifaddrs");
        assert!(ips.iter().all(|ip| !ip.is_loopback()));
    }
}
