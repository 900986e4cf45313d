//! Reloads from several callers at once are logged in the order they were applied. One
//! test in a binary of its own: it captures the log through the process's global tracing
//! dispatcher, which no other test may share. Real sockets on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// Black-box round 114c: reloads from two callers at once were logged out of order
/// (generation 693 before 692), and a refusal's line could name a generation a reload
/// after it made. Each reload is logged before the next can run: the applied ones in
/// increasing generations, and each refusal with the generation of the applied line
/// before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reloads_are_logged_in_the_order_they_were_applied() {
    let a = ScriptedBidder::bidding(30.0);
    let (ab, _ha) = serve("a", &a).await;
    let ex = TestConfig::new().buyer(ab).start().await;
    let good = std::fs::read_to_string(&ex.config_path).unwrap();
    let log = CapturedLog::default();
    // The process's only dispatcher, set once as the global default: this binary has
    // this one test, so no other dispatcher comes or goes while it runs. (In reload.rs,
    // other tests' scoped dispatchers made and dropped at the same time made tracing's
    // callsite interest miss this one for a moment, and CI runs lost "reloaded" lines.)
    tracing::dispatcher::set_global_default(log.dispatch()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let state = ex.state.clone();
            let (path, good) = (ex.config_path.clone(), good.clone());
            std::thread::spawn(move || {
                for i in 0..100 {
                    // One thread breaks the file now and then, another mends it.
                    if t == 0 && i % 5 == 0 {
                        std::fs::write(&path, "[server]\nlisten = 5\n").unwrap();
                    } else if t == 1 && i % 5 == 2 {
                        std::fs::write(&path, &good).unwrap();
                    }
                    let _ = state.reload_by("test");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let said = log.text();
    let generation_in = |line: &str| -> u64 {
        let at = line.find("generation=").unwrap() + "generation=".len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (mut last, mut applied, mut refused) = (1u64, 0, 0);
    for line in said.lines() {
        if line.contains("test: configuration reloaded") {
            let g = generation_in(line);
            assert_eq!(g, last + 1, "applied out of order: {line}\n{said}");
            last = g;
            applied += 1;
        } else if line.contains("test: configuration reload refused") {
            assert_eq!(generation_in(line), last, "{line}\n{said}");
            refused += 1;
        }
    }
    assert_eq!(applied + refused, 400, "{said}");
    assert!(
        applied > 0 && refused > 0,
        "{applied} applied, {refused} refused"
    );
    assert_eq!(ex.state.generation(), last);
}
