//! Every fuzz target on stable Rust: its checked-in corpus (`fuzz/corpus/<target>/`), then a
//! bounded run of mutations of it (bit flips, byte changes, insertions, deletions, splices; a
//! fixed seed, so a failure reproduces), each target's loop capped in count and time. A failing
//! input is written to `target/fuzz-failures/` and named in the failure. The coverage-guided
//! fuzzer is `scripts/fuzz` (cargo-fuzz, libFuzzer); this keeps CI honest without it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("cni", mesh_fuzz::cni),
    ("csr", mesh_fuzz::csr),
    ("dns", mesh_fuzz::dns),
    ("egress_policy", mesh_fuzz::egress_policy),
    ("hbone_headers", mesh_fuzz::hbone_headers),
    ("jwt", mesh_fuzz::jwt),
    ("local_config", mesh_fuzz::local_config),
    ("manifests", mesh_fuzz::manifests),
    ("socks5", mesh_fuzz::socks5),
    ("waypoint_config", mesh_fuzz::waypoint_config),
    ("xds", mesh_fuzz::xds),
    ("zds", mesh_fuzz::zds),
];

/// Mutations per target (FUZZ_REPLAY_MUTATIONS overrides) and the time cap on them.
const MUTATIONS: usize = 20_000;
const TIME_CAP: Duration = Duration::from_secs(5);
/// One input taking longer than this is a hang: the input is saved and the run aborted.
const HANG: Duration = Duration::from_secs(10);

/// The input being run and since when, for the hang watchdog.
static CURRENT: std::sync::Mutex<Option<(&'static str, Vec<u8>, Instant)>> =
    std::sync::Mutex::new(None);

fn watchdog() {
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_secs(1));
        let current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((name, input, since)) = current.as_ref() {
            if since.elapsed() > HANG {
                let file = save(name, input);
                eprintln!(
                    "fuzz target {name} hangs (> {HANG:?}) on an input saved as {}",
                    file.display()
                );
                std::process::abort();
            }
        }
    });
}

fn save(name: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{name}-{:016x}", fxhash(input)));
    let _ = std::fs::write(&file, input);
    file
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (every target needs a corpus)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'\n', b':', b'{', b'[', b'"', b'.', b'*',
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        let last = data.len().saturating_sub(1);
        match rng.below(6) {
            0 if !data.is_empty() => data[at.min(last)] ^= 1 << rng.below(8),
            1 if !data.is_empty() => data[at.min(last)] = INTERESTING[rng.below(INTERESTING.len())],
            2 => data.insert(at, rng.next() as u8),
            3 if at < data.len() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from + 1);
                data.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => data.truncate(at),
        }
    }
    data
}

fn run_one(name: &'static str, target: Target, input: &[u8]) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((name, input.to_vec(), Instant::now()));
    let outcome = catch_unwind(AssertUnwindSafe(|| target(input)));
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if outcome.is_err() {
        let file = save(name, input);
        panic!(
            "fuzz target {name} failed on an input saved as {} (again: FUZZ_REPLAY_TARGET={name} FUZZ_REPLAY_FILE={} cargo test -p mesh-fuzz --test replay)",
            file.display(),
            file.display()
        );
    }
}

fn fxhash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    let mutations = std::env::var("FUZZ_REPLAY_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MUTATIONS);
    // Panics are caught and reported with their input; keep the default hook's noise out.
    std::panic::set_hook(Box::new(|_| {}));
    watchdog();
    let only = std::env::var("FUZZ_REPLAY_TARGET").ok();
    // One input (a saved failure) against one target.
    if let (Some(name), Some(file)) = (&only, std::env::var_os("FUZZ_REPLAY_FILE")) {
        let (_, target) = TARGETS
            .iter()
            .find(|(n, _)| n == name)
            .expect("a known target");
        target(&std::fs::read(file).expect("the input file"));
        return;
    }
    for &(name, target) in TARGETS {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "{name}: empty corpus");
        for seed in &seeds {
            run_one(name, target, seed);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ fxhash(name.as_bytes()));
        let start = Instant::now();
        let mut ran = 0;
        while ran < mutations && start.elapsed() < TIME_CAP {
            let input = mutate(&mut rng, &seeds);
            run_one(name, target, &input);
            ran += 1;
        }
        println!(
            "{name}: {} corpus inputs, {ran} mutations in {:?}",
            seeds.len(),
            start.elapsed()
        );
    }
    let _ = std::panic::take_hook();
}
