//! Packet capture on a link of the local cluster (an AF_PACKET socket inside the namespace
//! that holds the link), to check what crosses it in clear.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use meshctl::cluster::netns;

/// Most bytes kept (bounded, whatever the traffic).
const LIMIT: usize = 64 << 20;

pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<Vec<u8>>>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Capture {
    /// Starts capturing every frame on `link` in namespace `ns`.
    pub fn start(ns: &str, link: &str) -> io::Result<Self> {
        let link = std::ffi::CString::new(link).map_err(io::Error::other)?;
        let socket = netns::run_in(ns, move || {
            // SAFETY: plain socket calls on a descriptor we own right away.
            unsafe {
                let fd = cvt(libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    (libc::ETH_P_ALL as u16).to_be() as i32,
                ))?;
                let fd = OwnedFd::from_raw_fd(fd);
                let index = libc::if_nametoindex(link.as_ptr());
                if index == 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
                addr.sll_ifindex = index as i32;
                cvt(libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                ))?;
                // Room for bursts while the reading thread waits for a core.
                let rcvbuf: libc::c_int = 8 << 20;
                cvt(libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&rcvbuf as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                ))?;
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                cvt(libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                ))?;
                Ok(fd)
            }
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut frame = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) && seen.len() < LIMIT {
                // SAFETY: reading into our buffer from our socket.
                let n = unsafe {
                    libc::recv(
                        socket.as_raw_fd(),
                        frame.as_mut_ptr().cast(),
                        frame.len(),
                        0,
                    )
                };
                if n > 0 {
                    seen.extend_from_slice(&frame[..n as usize]);
                }
            }
            Ok(seen)
        });
        // Let the socket settle before traffic starts.
        std::thread::sleep(Duration::from_millis(50));
        Ok(Self { stop, thread })
    }

    /// Stops and returns every byte seen (frames concatenated).
    pub fn finish(self) -> io::Result<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| io::Error::other("capture thread panicked"))?
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
