//! Architecture invariant: the core does no I/O. This test walks `Cargo.lock` from
//! `pingpost-core` through every dependency it can reach (normal, build and dev alike,
//! which is stricter than needed) and fails if an async runtime, an HTTP stack, a socket
//! library or a TLS stack is among them.

use std::collections::{BTreeSet, HashMap};

/// Crates that mean I/O, an async runtime or threads of their own.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "tokio-util",
    "mio",
    "socket2",
    "hyper",
    "hyper-util",
    "hyper-rustls",
    "h2",
    "h3",
    "h3-quinn",
    "quinn",
    "quinn-proto",
    "reqwest",
    "rustls",
    "async-std",
    "smol",
    "futures-executor",
    "rayon",
    "crossbeam-channel",
];

#[test]
fn core_dependency_tree_has_no_io_crates() {
    let lock_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock");
    let text = std::fs::read_to_string(lock_path).expect("Cargo.lock is readable");
    let lock: toml::Table = text.parse().expect("Cargo.lock is TOML");
    let packages = lock
        .get("package")
        .and_then(|p| p.as_array())
        .expect("Cargo.lock has packages");

    // name -> the names of its dependencies (every version of a name merged: stricter).
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    for p in packages {
        let name = p["name"].as_str().expect("package name").to_string();
        let list = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|d| {
                d.iter()
                    .filter_map(|v| v.as_str())
                    .map(|s| s.split(' ').next().unwrap_or(s).to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        deps.entry(name).or_default().extend(list);
    }
    assert!(
        deps.contains_key("pingpost-core"),
        "pingpost-core is in Cargo.lock"
    );

    let mut seen = BTreeSet::new();
    let mut stack = vec!["pingpost-core".to_string()];
    while let Some(n) = stack.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        for d in deps.get(&n).into_iter().flatten() {
            stack.push(d.clone());
        }
    }
    let bad: Vec<&str> = FORBIDDEN
        .iter()
        .copied()
        .filter(|f| seen.contains(*f))
        .collect();
    assert!(
        bad.is_empty(),
        "pingpost-core reaches I/O crates {bad:?}; move that code to the shell"
    );
    // The walk really followed edges (a broken parse would pass vacuously).
    assert!(seen.contains("proto") && seen.contains("chrono-tz"));
}
