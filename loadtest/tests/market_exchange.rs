//! The market against a real exchange (in process, on 127.0.0.1:0), today's
//! configuration: the price-only leg realizes exactly what the idealized replay of the
//! same draws says, lead for lead (ranking, fallbacks, seller price, accounting), so the
//! replay is a fair reference for the other legs.

use std::sync::Arc;

use loadtest::market::accounting::{replay_lead, summarize, Rank};
use loadtest::market::buyers::start_leg_fleet;
use loadtest::market::config::{leg_config, Leg, LegConfig};
use loadtest::market::run::{LegDriver, MARKET_SELLER_KEY};
use loadtest::market::world::{default_buyers, lead, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_price_leg_matches_its_replay_lead_for_lead() {
    let world = Arc::new(World::new(5, default_buyers(), None, 1));
    let fleet = start_leg_fleet(&world).await.unwrap();
    let dir = std::env::temp_dir().join(format!("market-test-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys: Vec<String> = (0..world.buyers.len())
        .map(|k| format!("buyer-key-{k}"))
        .collect();
    let (toml, env) = leg_config(&LegConfig {
        leg: Leg::Price,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ledger_path: dir.join("ledger"),
        models_dir: dir.join("models"),
        buyers: &fleet.infos,
        ids: &world.ids,
        buyer_keys: &keys,
        seller_key: MARKET_SELLER_KEY,
        // The price leg's `award = "price"` (routing), no buyer keys (no dispositions).
        pieces: loadtest::market::Pieces {
            routing: true,
            learning: false,
            dispositions: false,
        },
        retrain_after: None,
        explore_share: 0.0,
        ping_timeout_ms: 500,
    });
    let lookup = |name: &str| env.iter().find(|(v, _)| v == name).map(|(_, s)| s.clone());
    let config = match pingpost::config::load_str_with_env(&toml, &lookup) {
        Ok(c) => c,
        Err(e) => panic!("{e}\n{toml}"),
    };
    let running = pingpost::app::start(config, pingpost::clock::Clock::system())
        .await
        .unwrap();
    let mut driver = LegDriver::new(
        running.addr,
        Arc::clone(&fleet.book),
        keys,
        MARKET_SELLER_KEY,
    );
    let mut live = Vec::new();
    for i in 0..150 {
        live.push(driver.run_lead(&world, i, false).await);
    }
    // Dispositions from buyers the configuration gives no key: each sale's report is
    // refused (401), counted, and changes nothing else.
    let mut sold = 0;
    for i in 150..170 {
        let o = driver.run_lead(&world, i, true).await;
        assert_eq!(
            o,
            replay_lead(&world, i, &lead(world.seed, i).features, Rank::Price)
        );
        sold += u64::from(o.sold);
    }
    assert!(sold > 0);
    assert_eq!(driver.disposition_errors, sold);
    let first = driver.first_disposition_error.clone().unwrap_or_default();
    assert!(first.starts_with("401"), "{first}");
    let replay: Vec<_> = (0..150)
        .map(|i| replay_lead(&world, i, &lead(world.seed, i).features, Rank::Price))
        .collect();
    running.shutdown().await.unwrap();
    fleet.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    for (a, b) in live.iter().zip(&replay) {
        assert!(!a.error, "lead {}: an error", a.lead);
        assert_eq!(a, b, "lead {}: live vs replay", a.lead);
    }
    let s = summarize(&live, world.buyers.len());
    // The run exercised sales, returns and rejected posts (fallbacks).
    assert!(s.sold > 100 && s.kept > 20 && s.returned > 20, "{s:?}");
    assert!(s.rejected_posts > 5, "{s:?}");
    assert!(s.realized_per_lead > 5.0, "{s:?}");
}
