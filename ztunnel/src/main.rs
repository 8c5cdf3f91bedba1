use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};
use ztunnel::admin::LogControl;
use ztunnel::Settings;

/// `/logging` support: the filter sits behind a reload handle.
struct ReloadableFilter {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogControl for ReloadableFilter {
    fn current(&self) -> String {
        self.current.lock().expect("log lock").clone()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.handle.reload(parsed).map_err(|e| e.to_string())?;
        *self.current.lock().expect("log lock") = filter.to_owned();
        Ok(())
    }
}

/// glibc serves allocations of 128 KiB and more with mmap and returns them with munmap, so
/// the data path's large transient buffers (TLS records, HTTP/2 frames of up to 1 MiB) cost a
/// page fault per 4 KiB on every reuse. Keeping them on the heap, and trimming the heap only
/// past 16 MiB of free space, removes that churn (measured: ~3.0 → ~2.1 CPU-s per GB through
/// both ztunnels; a 2 MiB trim threshold gave back most of the gain).
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only adjusts allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

/// Installs the log subscriber; the handle lets `/logging` change the filter.
fn init_logging(level: &str) -> Result<Arc<ReloadableFilter>, std::process::ExitCode> {
    let filter = EnvFilter::try_new(level).map_err(|e| {
        eprintln!("ztunnel: invalid log level {level:?}: {e}");
        std::process::ExitCode::from(2)
    })?;
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
        .init();
    Ok(Arc::new(ReloadableFilter {
        handle,
        current: Mutex::new(level.to_owned()),
    }))
}

fn main() -> std::process::ExitCode {
    tune_malloc();
    if std::env::args().nth(1).as_deref() == Some("node-agent") {
        return node_agent();
    }
    let meshcore::settings::Parsed { settings, warnings } = meshcore::settings::parse::<Settings>();
    if settings.check_config {
        return meshcore::settings::check_config_report("ztunnel", settings.validate(), &warnings);
    }
    let logging = match init_logging(&settings.log_level) {
        Ok(l) => l,
        Err(code) => return code,
    };
    warnings.iter().for_each(|w| tracing::warn!("{w}"));
    meshcore::rlimit::raise_nofile_and_log("ztunnel");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let shared = settings.proxy_mode == ztunnel::settings::ProxyMode::Shared;
        let started = if shared {
            ztunnel::inpod::node::start_node(settings, Some(logging))
                .await
                .map(Running::Node)
        } else {
            ztunnel::start(settings, Some(logging))
                .await
                .map(Running::Workload)
        };
        let zt = match started {
            Ok(zt) => zt,
            Err(e) => {
                tracing::error!("ztunnel cannot start: {e}");
                eprintln!("ztunnel: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let quit = async {
            match &zt {
                Running::Workload(z) => z.quit_requested().await,
                Running::Node(z) => z.quit_requested().await,
            }
        };
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            _ = quit => tracing::info!("/quitquitquit called"),
        }
        match zt {
            Running::Workload(z) => z.shutdown().await,
            Running::Node(z) => z.shutdown().await,
        }
        std::process::ExitCode::SUCCESS
    })
}

/// `ztunnel node-agent`: the node agent (see `ztunnel::agent::program`).
fn node_agent() -> std::process::ExitCode {
    use ztunnel::agent::program::{start_agent, AgentSettings};
    let meshcore::settings::Parsed { settings, warnings } =
        meshcore::settings::parse_from::<AgentSettings>(std::env::args_os().skip(1));
    if settings.check_config {
        return meshcore::settings::check_config_report(
            "ztunnel node-agent",
            settings.validate(),
            &warnings,
        );
    }
    if let Err(code) = init_logging(&settings.log_level) {
        return code;
    }
    warnings.iter().for_each(|w| tracing::warn!("{w}"));
    meshcore::rlimit::raise_nofile_and_log("ztunnel node-agent");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        // Before starting: a SIGTERM during start-up (the host rules are written then) must
        // still stop the agent through its clean-up, not kill it with the rules left behind.
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let agent = match start_agent(settings).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("node agent cannot start: {e}");
                eprintln!("ztunnel node-agent: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        }
        agent.shutdown_and_wait().await;
        std::process::ExitCode::SUCCESS
    })
}

/// The two modes' running ztunnels.
enum Running {
    Workload(ztunnel::Ztunnel),
    Node(ztunnel::inpod::node::NodeZtunnel),
}
