use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use meshctl::echo::{self, Identity};
use tokio::net::TcpListener;

/// meshctl: the mesh's command line.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Echo server for tests and demos: HTTP/1.1, h2c and gRPC answered with what the server
    /// saw (its pod, the client's address, method, URL, headers); raw TCP echoed back.
    Echo {
        /// HTTP/1.1 + h2c + gRPC listeners (repeatable).
        #[arg(long = "http", default_value = "0.0.0.0:8080")]
        http: Vec<SocketAddr>,
        /// Raw TCP echo listeners (repeatable).
        #[arg(long = "tcp", default_value = "0.0.0.0:9090")]
        tcp: Vec<SocketAddr>,
        /// The pod name reported (`Hostname=`).
        #[arg(long, env = "POD_NAME", default_value = "")]
        pod: String,
        /// The namespace reported (`Namespace=`).
        #[arg(long, env = "POD_NAMESPACE", default_value = "")]
        namespace: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Echo {
                http,
                tcp,
                pod,
                namespace,
            } => {
                let id = Arc::new(Identity { pod, namespace });
                for addr in http {
                    match TcpListener::bind(addr).await {
                        Ok(l) => {
                            tokio::spawn(echo::serve_http(l, id.clone()));
                        }
                        Err(e) => {
                            eprintln!("meshctl echo: binding HTTP on {addr}: {e}");
                            return std::process::ExitCode::FAILURE;
                        }
                    }
                }
                for addr in tcp {
                    match TcpListener::bind(addr).await {
                        Ok(l) => {
                            tokio::spawn(echo::serve_tcp(l));
                        }
                        Err(e) => {
                            eprintln!("meshctl echo: binding TCP on {addr}: {e}");
                            return std::process::ExitCode::FAILURE;
                        }
                    }
                }
                let _ = tokio::signal::ctrl_c().await;
                std::process::ExitCode::SUCCESS
            }
        }
    })
}
