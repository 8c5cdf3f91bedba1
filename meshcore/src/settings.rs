//! Rules every binary of the mesh applies to its settings, as Istio's components do:
//!
//! - an environment variable set to the empty string counts as unset (Istio documents
//!   `XDS_ADDRESS="" LOCAL_XDS_PATH=… ztunnel`), so a chart or shell can blank a setting;
//! - `--check-config` parses and validates the settings, reports, and exits without starting
//!   (CI runs each rendered container's command through it);
//! - an environment variable that is not a setting but is one or two letters away from one
//!   (`XDS_ADRESS`) is reported, since clap would silently ignore it.

use std::ffi::OsString;

use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};

/// Settings as parsed, with the warnings worth showing once logging is up.
pub struct Parsed<T> {
    pub settings: T,
    /// Environment variables that look like misspelt settings.
    pub warnings: Vec<String>,
}

/// The environment variable names of `cmd`'s arguments (and its subcommands').
pub fn env_names(cmd: &Command) -> Vec<String> {
    let mut names: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for sub in cmd.get_subcommands() {
        names.extend(env_names(sub));
    }
    names.sort();
    names.dedup();
    names
}

/// Of `env`, the names among `known` whose value is empty: these are treated as unset.
pub fn empty_settings<'a>(
    known: &[String],
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    env.into_iter()
        .filter(|(k, v)| v.is_empty() && known.iter().any(|n| n == k))
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// For each name of `env` that is not in `known` but close to one of them, a message naming
/// both. Names under ten characters must be within one edit, longer ones within two; names
/// under five characters, and the variables Kubernetes and Istio set on pods by convention,
/// are never flagged.
pub fn misspellings<'a>(known: &[String], env: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    for name in env {
        if name.len() < 5 || known.iter().any(|k| k == name) || CONVENTIONAL.contains(&name) {
            continue;
        }
        let limit = if name.len() < 10 { 1 } else { 2 };
        if let Some(meant) = known
            .iter()
            .filter(|k| k.len() >= 5)
            .map(|k| (edit_distance(name, k), k))
            .filter(|(d, _)| *d <= limit)
            .min()
            .map(|(_, k)| k)
        {
            out.push(format!(
                "environment variable {name} is not a setting; did you mean {meant}?"
            ));
        }
    }
    out
}

/// Set on pods by Kubernetes' downward API in Istio's charts, whatever a binary reads.
const CONVENTIONAL: &[&str] = &[
    "POD_NAME",
    "POD_NAMESPACE",
    "POD_IP",
    "NODE_NAME",
    "INSTANCE_IP",
    "SERVICE_ACCOUNT",
    "HOSTNAME",
];

/// Levenshtein distance with adjacent transpositions counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev2 = vec![0usize; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// Parses `T` from the process's arguments and environment under the rules above. Call it
/// first thing in `main`, before any thread exists: empty settings are removed from the
/// process environment so clap falls back to their defaults.
pub fn parse<T: CommandFactory + FromArgMatches>() -> Parsed<T> {
    parse_from(std::env::args_os())
}

/// As [`parse`], with explicit arguments (the first is the program name).
pub fn parse_from<T: CommandFactory + FromArgMatches>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Parsed<T> {
    let cmd = T::command();
    let known = env_names(&cmd);
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().unwrap_or_default())))
        .collect();
    for name in empty_settings(&known, env.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        // Before any other thread exists (see above), so nothing reads the environment
        // concurrently.
        std::env::remove_var(name);
    }
    let warnings = misspellings(&known, env.iter().map(|(k, _)| k.as_str()));
    // clap reads an argument's environment variable when the argument is built: build the
    // command again now that empty settings are gone.
    let matches: ArgMatches = T::command().get_matches_from(args);
    let settings = T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Parsed { settings, warnings }
}

/// What `--check-config` prints and returns: success only when `validated` is Ok and no
/// environment variable looks misspelt.
pub fn check_config_report(
    program: &str,
    validated: Result<(), String>,
    warnings: &[String],
) -> std::process::ExitCode {
    let mut ok = true;
    if let Err(e) = validated {
        eprintln!("{program}: invalid configuration: {e}");
        ok = false;
    }
    for w in warnings {
        eprintln!("{program}: {w}");
        ok = false;
    }
    if ok {
        println!("{program}: configuration OK");
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        [
            "XDS_ADDRESS",
            "LOCAL_XDS_PATH",
            "CA_ADDRESS",
            "RUST_LOG",
            "PROXY_MODE",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn empty_values_of_settings_count_as_unset_and_others_are_left_alone() {
        let env = [
            ("XDS_ADDRESS", ""),
            ("LOCAL_XDS_PATH", "/etc/z.yaml"),
            ("HOME", ""),
            ("CA_ADDRESS", "istiod:15012"),
        ];
        assert_eq!(empty_settings(&known(), env), vec!["XDS_ADDRESS"]);
    }

    #[test]
    fn near_misses_of_setting_names_are_reported_with_the_likely_name() {
        let env = [
            "XDS_ADRESS",     // one letter dropped
            "LOCAL_XSD_PATH", // transposed
            "PROXY_MOD",      // short name, one edit
            "RUST_LOG",       // a setting
            "PATH",           // too short to judge
            "NODE_NAME",      // conventional
            "CA_ADDRES",      // nine letters: one edit
            "CA_ADDRESS_X",   // two edits from CA_ADDRESS
        ];
        let found = misspellings(&known(), env);
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found[0].contains("XDS_ADRESS") && found[0].contains("did you mean XDS_ADDRESS"));
        assert!(found[1].contains("LOCAL_XDS_PATH"));
        assert!(found[2].contains("PROXY_MODE"));
        assert!(found[3].contains("CA_ADDRES "));
        assert!(found[4].contains("CA_ADDRESS_X") && found[4].ends_with("CA_ADDRESS?"));
    }

    #[test]
    fn edit_distance_counts_transpositions_once() {
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "acb"), 1);
        assert_eq!(edit_distance("abc", "ab"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
