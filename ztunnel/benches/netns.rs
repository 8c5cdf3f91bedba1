//! What a socket made inside a pod's network namespace costs (node mode makes one for every
//! connection to a pod's application, every plain connection from a pod, and every new HBONE
//! connection): a plain socket in ztunnel's own namespace (the baseline), a short-lived thread
//! per socket that enters the pod's namespace (`Netns::run`), the pod's socket thread asked for
//! each socket, and `Netns::socket` as the data path calls it (IPv4 TCP from the ready sockets,
//! refilled by that thread in the background; an empty pool falls back to asking). Needs root (it makes a namespace); prints
//! SKIPPED otherwise. Bounded: a fixed number of sockets per way.
//!
//!     cargo bench -p ztunnel --bench netns

use std::process::Command;
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};
use ztunnel::inpod::netns::Netns;

const SOCKETS: u32 = 20_000;

thread_local! {
    /// Seconds spent inside `Netns::socket` in the paced run (its sleeps excluded).
    static PACED: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

fn per_socket_us(mut make: impl FnMut() -> Socket) -> f64 {
    // Warm up, then time.
    for _ in 0..500 {
        drop(make());
    }
    let start = Instant::now();
    for _ in 0..SOCKETS {
        drop(make());
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(SOCKETS)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: needs root to create a network namespace");
        return;
    }
    let name = format!("zt-bench-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &name]).status();
    if !made.is_ok_and(|s| s.success()) {
        println!("SKIPPED: `ip netns add` failed (is iproute2 installed?)");
        return;
    }
    let netns = Netns::open(std::path::Path::new(&format!("/run/netns/{name}"))).unwrap();
    let tcp = || Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP));

    let baseline = per_socket_us(|| tcp().unwrap());
    let thread_per_socket = per_socket_us(|| netns.run(tcp).unwrap());
    let socket_thread = per_socket_us(|| {
        netns
            .socket_from_thread(Domain::IPV4, Type::STREAM, Protocol::TCP)
            .unwrap()
    });
    let ready = per_socket_us(|| {
        netns
            .socket(Domain::IPV4, Type::STREAM, Protocol::TCP)
            .unwrap()
    });
    // At the data path's pace: a socket now and then, the pool refilled in between.
    let paced = per_socket_us(|| {
        std::thread::sleep(std::time::Duration::from_micros(200));
        let start = Instant::now();
        let s = netns
            .socket(Domain::IPV4, Type::STREAM, Protocol::TCP)
            .unwrap();
        PACED.with(|t| t.set(t.get() + start.elapsed().as_secs_f64()));
        s
    });
    let _ = paced;
    let paced = PACED.with(|t| t.get()) * 1e6 / f64::from(SOCKETS + 500);
    let _ = Command::new("ip").args(["netns", "del", &name]).status();

    println!("{SOCKETS} TCP sockets each way; µs per socket and ratio to the baseline:");
    println!("| way | µs/socket | × baseline |");
    println!("| --- | ---: | ---: |");
    for (way, us) in [
        ("own namespace (baseline)", baseline),
        ("a thread per socket, inside the pod", thread_per_socket),
        ("the pod's socket thread, asked each time", socket_thread),
        ("ready sockets, taken back to back", ready),
        ("ready sockets, one every 200 µs (the data path)", paced),
    ] {
        println!("| {way} | {us:.2} | {:.1}× |", us / baseline);
    }
}
