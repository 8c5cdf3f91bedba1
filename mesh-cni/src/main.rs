//! `mesh-cni`: the chained CNI plugin binary. The runtime calls it with the CNI environment and
//! the network configuration on stdin; see the library for what it does.

use std::io::Read;

fn main() -> std::process::ExitCode {
    let vars = std::env::vars().collect();
    let mut stdin = String::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if command != "VERSION" {
        if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
            println!(
                "{}",
                mesh_cni::CniError {
                    code: mesh_cni::code::DECODE,
                    msg: "cannot read stdin".into(),
                    details: e.to_string(),
                }
                .to_json("1.0.0")
            );
            return std::process::ExitCode::FAILURE;
        }
    }
    match mesh_cni::run(&vars, &stdin) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err((version, e)) => {
            println!("{}", e.to_json(&version));
            eprintln!("mesh-cni: {}: {}", e.msg, e.details);
            std::process::ExitCode::FAILURE
        }
    }
}
