//! Network namespaces for the local cluster: creating links with `ip`, running code and
//! processes inside a namespace, and small HTTP requests from inside one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where `ip netns` keeps named namespaces.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{name}"))
}

/// Runs `ip ARGS`; the error names the command and carries ip's message.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e} (is iproute2 installed?)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The names of existing namespaces starting with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Processes whose network namespace is `netns` (what `ip netns pids` reports).
pub fn pids(netns: &str) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(path(netns)) else {
        return Vec::new();
    };
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev())
        })
        .collect()
}

fn open(netns: &str) -> io::Result<OwnedFd> {
    std::fs::File::open(path(netns))
        .map(Into::into)
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace {netns}: {e}")))
}

/// Runs `f` on a fresh thread that has entered `netns`.
pub fn run_in<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let fd = open(netns)?;
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a namespace fd we own.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("thread panicked"))?
}

/// Gives the calling process a private mount namespace in which `resolv_conf` is mounted over
/// /etc/resolv.conf: a pod's own DNS settings, as the kubelet gives each pod. Only syscalls,
/// so it may run between fork and exec.
///
/// # Safety
/// Changes the calling process's mount namespace; call it in a child about to exec, or in a
/// single-threaded process.
pub unsafe fn mount_resolv_conf(resolv_conf: &std::ffi::CStr) -> io::Result<()> {
    if libc::unshare(libc::CLONE_NEWNS) != 0 {
        return Err(io::Error::last_os_error());
    }
    // Private, so the bind mount below never propagates back to the host.
    if libc::mount(
        c"none".as_ptr(),
        c"/".as_ptr(),
        std::ptr::null(),
        libc::MS_REC | libc::MS_PRIVATE,
        std::ptr::null(),
    ) != 0
    {
        return Err(io::Error::last_os_error());
    }
    if libc::mount(
        resolv_conf.as_ptr(),
        c"/etc/resolv.conf".as_ptr(),
        std::ptr::null(),
        libc::MS_BIND,
        std::ptr::null(),
    ) != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A path as a C string, for code that runs between fork and exec.
pub fn c_path(path: &Path) -> Result<std::ffi::CString, String> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: path contains a NUL byte", path.display()))
}

/// Starts `argv` inside `netns`, in its own session (it outlives meshctl), with stdout and
/// stderr appended to `log`; with `resolv_conf`, that file is its /etc/resolv.conf (see
/// [`mount_resolv_conf`]). Returns its pid.
pub fn spawn(
    netns: &str,
    argv: &[String],
    env: &[(String, String)],
    log: &Path,
    resolv_conf: Option<&Path>,
) -> Result<u32, String> {
    spawn_with_fds(netns, argv, env, log, resolv_conf, &[])
}

/// [`spawn`], handing the child `fds` as its descriptors 3, 4... (sockets made in this
/// namespace, used by a process living in another).
pub fn spawn_with_fds(
    netns: &str,
    argv: &[String],
    env: &[(String, String)],
    log: &Path,
    resolv_conf: Option<&Path>,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<u32, String> {
    // Copies above any target number, so moving them to 3, 4... never overwrites one.
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| fd.try_clone_to_owned())
        .collect::<io::Result<_>>()
        .map_err(|e| format!("duplicating a listener: {e}"))?;
    let high: Vec<OwnedFd> = high
        .into_iter()
        .map(|fd| {
            // SAFETY: fcntl on a descriptor we own; the result is a new descriptor we own.
            let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `n` was just returned by fcntl and is owned by nobody else.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
        })
        .collect::<io::Result<_>>()
        .map_err(|e| format!("duplicating a listener: {e}"))?;
    let raw_high: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
    let resolv = resolv_conf.map(c_path).transpose()?;
    let fd = open(netns).map_err(|e| e.to_string())?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: only async-signal-safe calls (setns, unshare, mount, dup2, setsid) between fork and
    // exec; the C strings were made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(resolv) = &resolv {
                mount_resolv_conf(resolv)?;
            }
            for (i, &fd) in raw_high.iter().enumerate() {
                // dup2 leaves the copy without close-on-exec: the child inherits it.
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", argv.join(" ")))?;
    drop(fd);
    drop(high);
    Ok(child.id())
}

pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// SIGTERM, then SIGKILL after `grace`; reaps it if it is our child.
pub fn stop(pid: u32, grace: Duration) {
    stop_all(&[pid], grace)
}

/// SIGTERM to all, then SIGKILL to those still alive after `grace`; reaps our children.
pub fn stop_all(pids: &[u32], grace: Duration) {
    let reap = |pid: u32| {
        // SAFETY: non-blocking reap of a possible child of ours.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
    };
    for &pid in pids {
        // SAFETY: signalling a process the cluster started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + grace;
    loop {
        pids.iter().for_each(|&p| reap(p));
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            for pid in left {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                reap(pid);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` over HTTP/1.0 from inside `netns`: (status, body).
pub fn http_get(netns: &str, addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let raw = run_in(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(raw)
    })?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer from {addr}")))?;
    Ok((status, body.to_owned()))
}
