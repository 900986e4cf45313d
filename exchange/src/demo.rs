//! `pingpost --demo`: starts the example bidders (bidder-sdk) that the default
//! configuration points at, prints curl examples, and sends a small stream of sample
//! leads through the exchange, printing each ping, bid, post and sale. The sample leads
//! are made up; nothing here is ever pointed at anything but loopback.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bidder_sdk::examples::{FlatBidder, RateCard, ScorecardBidder};
use bidder_sdk::ServeOptions;
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proto::Micros;
use rand::Rng;
use serde_json::{json, Value};

use crate::config::Config;

/// Whether the demo has said that its output is gone ([`say!`]).
static OUTPUT_GONE_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints a line of the demo; when stdout is gone (`pingpost --demo | head`) the demo
/// stops there (the enclosing function returns), and the exchange with it, instead of a
/// panic that left the server running without its demo.
macro_rules! say {
    ($($arg:tt)*) => {
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            // Said on stderr, once (black-box round 99c: the demo ended, exit 0, with
            // nothing said but the log's own write errors; round 100a: said twice, by the
            // leads and by the lines printed beside them).
            if !OUTPUT_GONE_SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                let _ = writeln!(
                    std::io::stderr(),
                    "pingpost --demo: its output is closed ({e}); the demo stops, and the exchange with it"
                );
            }
            return;
        }
    };
}

/// The demo seller's key (config/default.toml stores only its SHA-256).
pub const DEMO_SELLER_KEY: &str = "demo-seller-key";
const DEMO_SECRET_PREFIX: &str = "PINGPOST_DEMO_SECRET_";

/// The demo buyers' secrets, used only when `--demo` is given and the variable is unset.
pub fn demo_secret(var: &str) -> Option<String> {
    var.strip_prefix(DEMO_SECRET_PREFIX)
        .map(|n| format!("pingpost-demo-secret-{n}"))
}

/// A fresh random admin token for one demo run (printed, so the demo can show how to
/// reach `/metrics` and `/admin/reload`), used only when the admin token variable is unset.
pub fn demo_admin_token() -> String {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    format!("demo-{:032x}", rng.gen::<u128>())
}

/// Where a demo bidder listens for a URL on a loopback host: that address and port, the
/// address as it is (`127.0.0.2`, `[::1]`; an IPv4-mapped one as its IPv4 address:
/// black-box round 172a, `[::ffff:127.0.0.1]` got no bidder, and round 176a,
/// `127.0.0.2` got none and `[::1]` one on `127.0.0.1` only), `localhost` as
/// `127.0.0.1`. `None` for another host, or a URL without its port.
fn loopback_addr(url: &str) -> Option<std::net::SocketAddr> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let ip = if host.eq_ignore_ascii_case("localhost") {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        crate::config::host_ip(host)?
    };
    if !ip.is_loopback() {
        return None;
    }
    Some(std::net::SocketAddr::new(ip, uri.port_u16()?))
}

/// A running demo bidder.
#[derive(Debug)]
pub struct DemoBidder {
    stop: tokio::sync::oneshot::Sender<()>,
    join: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl DemoBidder {
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.join.await;
    }
}

/// Each loopback address and port the buyers' URLs name, once, with the position of the
/// first buyer naming it: a buyer's ping URL's, then its post URL's when that is another
/// (black-box round 174a: a post port of its own got no bidder, and every lead that
/// buyer won went unsold).
fn bidder_addrs(cfg: &Config) -> Vec<(usize, std::net::SocketAddr)> {
    let mut out: Vec<(usize, std::net::SocketAddr)> = Vec::new();
    for (i, b) in cfg.buyers.iter().enumerate() {
        let urls = b
            .ping_url
            .as_deref()
            .into_iter()
            .chain([b.post_url.as_str()]);
        for addr in urls.filter_map(loopback_addr) {
            if !out.iter().any(|(_, a)| *a == addr) {
                out.push((i, addr));
            }
        }
    }
    out
}

/// The demo bidders' ports that cannot be listened on now, each said as a start would
/// say it (`--check-config --demo`; black-box round 242b: it said OK, and the start then
/// failed on a bidder port another process held).
pub fn bidder_port_problems(cfg: &Config) -> Vec<String> {
    bidder_addrs(cfg)
        .into_iter()
        .filter_map(|(i, at)| {
            std::net::TcpListener::bind(at)
                .err()
                .map(|e| format!("{at} (buyer {}'s url): {e}", cfg.buyers[i].id))
        })
        .collect()
}

/// What to do when a demo bidder's port is taken (README: another copy of the file).
pub const BIDDER_PORT_ADVICE: &str = "copy the configuration, change the buyers' ping_url and post_url ports (and server.listen and admin.listen if they are taken too), and run --demo --config with the copy; or run a configuration with buyers of your own without --demo";

/// Starts one example bidder per loopback port the configured buyers' URLs name: the scorecard
/// bidder for pinged buyers with an even position, a flat bidder for the others (fixed
/// price buyers are served by a flat bidder that accepts posts).
pub async fn start_bidders(cfg: &Config) -> std::io::Result<Vec<DemoBidder>> {
    let mut handles = Vec::new();
    // The ids' column as wide as the longest (round 55b: long ids broke the alignment).
    let width = cfg
        .buyers
        .iter()
        .map(|b| b.id.len())
        .max()
        .unwrap_or(0)
        .max(10);
    for (i, at) in bidder_addrs(cfg) {
        let b = &cfg.buyers[i];
        let listener = tokio::net::TcpListener::bind(at).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("{at} (buyer {}'s url): {e}", b.id))
        })?;
        let addr = listener.local_addr()?;
        let options = ServeOptions::new(b.secret.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let states: Vec<String> = b.states_include.clone();
        let kind;
        let join = if i % 2 == 0 && b.ping_url.is_some() {
            kind = "scorecard";
            tokio::spawn(bidder_sdk::serve(
                listener,
                Arc::new(ScorecardBidder::new(RateCard::default())),
                options,
                shutdown,
            ))
        } else {
            kind = "flat";
            let price = b
                .fixed_price
                .unwrap_or(Micros(9_000_000 + 1_000_000 * i as i64));
            let states = if states.is_empty() {
                proto::schema::US_STATES
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                states
            };
            tokio::spawn(bidder_sdk::serve(
                listener,
                Arc::new(FlatBidder::new(price, states)),
                options,
                shutdown,
            ))
        };
        // Output gone: the demo's next line stops it (`run`).
        let _ = writeln!(
            std::io::stdout().lock(),
            "demo bidder  {:<width$} {kind:<9} listening on http://{addr}",
            b.id
        );
        handles.push(DemoBidder { stop: tx, join });
    }
    Ok(handles)
}

const STATES: &[&str] = &["TX", "TX", "CA", "FL", "NY", "IL", "OH", "GA"];
const CREDIT: &[&str] = &["poor", "fair", "good", "good", "excellent"];
const FIRST: &[&str] = &["Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace"];
const LAST: &[&str] = &["Diaz", "Nguyen", "Okafor", "Smith", "Kowalski", "Ito"];

/// A JSON price as the API gave it, to the micro (`20.2125`, `20.00`): black-box round
/// 71a saw `20.21` for a sale of 20.2125.
fn price(v: &Value) -> String {
    v.as_f64()
        .and_then(|p| Micros::from_decimal_f64(p).ok())
        .map_or_else(|| "?".to_string(), |m| crate::finance::money(m.0))
}

/// A made-up lead: the ping part and the full lead.
fn sample_lead(rng: &mut impl Rng) -> (Value, Value) {
    let state = STATES[rng.gen_range(0..STATES.len())];
    let zip = match state {
        "TX" => format!("76{:03}", rng.gen_range(0..1000)),
        "CA" => format!("90{:03}", rng.gen_range(0..1000)),
        "FL" => format!("33{:03}", rng.gen_range(0..1000)),
        "NY" => format!("10{:03}", rng.gen_range(0..1000)),
        "IL" => format!("60{:03}", rng.gen_range(0..1000)),
        "OH" => format!("44{:03}", rng.gen_range(0..1000)),
        "GA" => format!("30{:03}", rng.gen_range(0..1000)),
        _ => format!("{:05}", rng.gen_range(30000..70000)),
    };
    let ping = json!({
        "state": state, "zip": zip, "age": rng.gen_range(18..80),
        "homeowner": rng.gen_bool(0.6), "credit": CREDIT[rng.gen_range(0..CREDIT.len())],
        "insured": rng.gen_bool(0.7), "vehicle_year": rng.gen_range(2005..2026),
    });
    let mut full = ping.clone();
    if let Value::Object(m) = &mut full {
        m.insert(
            "first_name".into(),
            json!(FIRST[rng.gen_range(0..FIRST.len())]),
        );
        m.insert(
            "last_name".into(),
            json!(LAST[rng.gen_range(0..LAST.len())]),
        );
        // Fictional numbers (the 555 exchange) in many area codes, and addresses at
        // example.com: sample consumers seldom repeat, so few are `duplicate` (the demo
        // vertical de-duplicates for 30 days, over restarts too).
        m.insert(
            "phone".into(),
            json!(format!(
                "+1{}555{:04}",
                rng.gen_range(201..990),
                rng.gen_range(0..10000)
            )),
        );
        m.insert(
            "email".into(),
            json!(format!(
                "demo{}@example.com",
                rng.gen_range(0..1_000_000_000u64)
            )),
        );
    }
    (ping, full)
}

type DemoClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(
    client: &DemoClient,
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> Option<(u16, Value)> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header(header::AUTHORIZATION, format!("Bearer {DEMO_SELLER_KEY}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).ok()?)))
        .ok()?;
    let resp = client.request(req).await.ok()?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// The vertical of the demo's sample leads.
pub const DEMO_VERTICAL: &str = "auto_insurance";

/// Why `cfg` cannot take the demo's sample leads (an `auto_insurance` vertical, and a
/// seller whose key is [`DEMO_SELLER_KEY`] and who sells in it; a plain-HTTP seller
/// listener), if it cannot.
pub fn sample_leads_problem(cfg: &Config) -> Option<String> {
    use sha2::Digest as _;
    // The demo's sample leads and the commands it prints speak plain HTTP (black-box round
    // 47: with `[server.tls]` every sample lead failed as "exchange unreachable").
    if cfg.server.listener.tls.is_some() {
        return Some(
            "the demo sends its sample leads, and prints its commands, over plain HTTP, and \
             this configuration's listeners speak HTTPS only ([server.tls]); run the demo \
             without [server.tls]"
                .into(),
        );
    }
    let Some(&vertical) = cfg.vertical_by_name.get(DEMO_VERTICAL) else {
        return Some(format!(
            "the sample leads are `{DEMO_VERTICAL}` leads, and this configuration has no \
             `{DEMO_VERTICAL}` vertical"
        ));
    };
    let digest: [u8; 32] = sha2::Sha256::digest(DEMO_SELLER_KEY.as_bytes()).into();
    let seller = cfg
        .sellers
        .iter()
        .find(|s| s.key_sha256 == digest || s.key_sha256_next == Some(digest));
    match seller {
        None => Some(format!(
            "the sample leads come from the demo seller (key `{DEMO_SELLER_KEY}`), and no \
             seller of this configuration has that key"
        )),
        Some(s) if !s.verticals.contains(&vertical) => Some(format!(
            "the demo seller (key `{DEMO_SELLER_KEY}`) is seller `{}`, which does not sell \
             in `{DEMO_VERTICAL}`",
            s.id
        )),
        Some(_) => cfg.verticals.get(vertical).and_then(sample_fields_problem),
    }
}

/// Why the configuration file `text` could not run the demo even once its other
/// problems are fixed (no `auto_insurance` vertical, no seller with the demo's key), read
/// from its TOML alone: said beside a file that does not load, so that an operator is not
/// sent to set its buyers' secrets first (black-box round 110c). `None` when the text is
/// not TOML or has both.
pub fn file_sample_leads_problem(text: &str) -> Option<String> {
    use sha2::Digest as _;
    let root: toml::Table = text.parse().ok()?;
    let table = |v: Option<&toml::Value>| v.and_then(toml::Value::as_table).cloned();
    let verticals = table(root.get("verticals")).unwrap_or_default();
    if !verticals.contains_key(DEMO_VERTICAL) {
        return Some(format!(
            "the sample leads are `{DEMO_VERTICAL}` leads, and this configuration has no \
             `{DEMO_VERTICAL}` vertical"
        ));
    }
    let digest = hex::encode(sha2::Sha256::digest(DEMO_SELLER_KEY.as_bytes()));
    let has_key = table(root.get("sellers"))
        .unwrap_or_default()
        .values()
        .any(|s| {
            ["key_sha256", "key_sha256_next"].iter().any(|k| {
                s.get(*k)
                    .and_then(toml::Value::as_str)
                    .is_some_and(|v| v.eq_ignore_ascii_case(&digest))
            })
        });
    (!has_key).then(|| {
        format!(
            "the sample leads come from the demo seller (key `{DEMO_SELLER_KEY}`), and no \
             seller of this configuration has that key"
        )
    })
}

/// How many made-up leads [`sample_fields_problem`] checks (each field's values vary).
const SAMPLES_CHECKED: u64 = 64;

/// Why `v`'s fields cannot take the demo's leads (the sample leads, ping and full, and
/// the ones its printed commands send), if they cannot (black-box round 49: a vertical
/// of that name without the default's fields let the demo start, and every lead was
/// refused).
fn sample_fields_problem(v: &crate::config::Vertical) -> Option<String> {
    use proto::schema::LeadMode;
    if !v.consent_required.is_empty() {
        return Some(format!(
            "the `{DEMO_VERTICAL}` vertical requires consent ({}), which the sample leads do \
             not carry",
            v.consent_required.join(", ")
        ));
    }
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(49);
    let mut leads: Vec<(&str, String, LeadMode)> = vec![
        ("printed ping", CURL_PING_LEAD.to_string(), LeadMode::Ping),
        ("printed post", CURL_POST_LEAD.to_string(), LeadMode::Full),
    ];
    for _ in 0..SAMPLES_CHECKED {
        let (ping, full) = sample_lead(&mut rng);
        leads.push(("sample ping", ping.to_string(), LeadMode::Ping));
        leads.push(("sample full lead", full.to_string(), LeadMode::Full));
    }
    for (what, text, mode) in leads {
        let mut bytes = text.into_bytes();
        let problems = match proto::json::parse_value(&mut bytes) {
            Ok(value) => match v.schema.validate(&value, mode, "lead") {
                Ok(_) => continue,
                Err(p) => p.problems,
            },
            Err(e) => vec![proto::error::FieldProblem::new("lead", e.to_string())],
        };
        let first = problems
            .first()
            .map_or_else(String::new, |p| format!("{}: {}", p.field, p.problem));
        let more = match problems.len() {
            0 | 1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        return Some(format!(
            "the `{DEMO_VERTICAL}` vertical's fields do not take the demo's leads (a {what} \
             is refused: {first}{more}); the demo's leads are made for the fields of \
             config/default.toml's `{DEMO_VERTICAL}`"
        ));
    }
    None
}

/// The demo vertical's de-duplication window, when posting the printed lead again would
/// be found a duplicate: the vertical de-duplicates, and on the lead's `phone` (for the
/// note the demo prints; black-box round 50: said with keys on the e-mail only, which
/// the printed post does not carry).
pub fn dedup_window_ms(cfg: &Config) -> Option<u64> {
    let v = cfg
        .verticals
        .get(*cfg.vertical_by_name.get(DEMO_VERTICAL)?)?;
    let on_phone = v
        .dedup_keys
        .iter()
        .any(|k| k.field.as_deref() == Some("phone"));
    v.dedup.as_ref().filter(|_| on_phone).map(|d| d.window_ms)
}

/// Where the demo's admin listener is, and its token: the one the demo made up, printed;
/// or, when the operator set the token's variable, only that variable's name (its value
/// is never printed or logged).
#[derive(Debug, Clone)]
pub struct DemoAdmin {
    pub addr: SocketAddr,
    /// The token the demo made up; `None` when the operator's variable holds it.
    pub made_up: Option<String>,
    /// The variable the token is read from (`admin.token_env`).
    pub token_env: String,
}

/// The lead of the ping the demo prints for the reader to try.
const CURL_PING_LEAD: &str =
    r#"{"state":"TX","zip":"76180","age":42,"homeowner":true,"credit":"good"}"#;
/// The full lead of the post the demo prints.
const CURL_POST_LEAD: &str = r#"{"state":"TX","zip":"76180","age":42,"homeowner":true,"credit":"good","first_name":"Ana","last_name":"Diaz","phone":"+18175550123"}"#;

fn print_curl(addr: SocketAddr, admin: Option<&DemoAdmin>, dedup_window_ms: Option<u64>) {
    say!("");
    say!("Try it yourself (the demo seller key is `{DEMO_SELLER_KEY}`):");
    say!(
        "  curl -s http://{addr}/v1/ping -H 'Authorization: Bearer {DEMO_SELLER_KEY}' -H 'Content-Type: application/json' \\\n    -d '{{\"vertical\":\"{DEMO_VERTICAL}\",\"lead\":{CURL_PING_LEAD}}}'"
    );
    say!(
        "  curl -s http://{addr}/v1/post -H 'Authorization: Bearer {DEMO_SELLER_KEY}' -H 'Content-Type: application/json' \\\n    -d '{{\"ping_id\":\"<ping_id from above>\",\"lead\":{CURL_POST_LEAD}}}'"
    );
    // Said only when the vertical de-duplicates, with its own window (black-box round
    // 49: said of a vertical without `[dedup]`).
    if let Some(ms) = dedup_window_ms {
        let window = if ms % 86_400_000 == 0 {
            format!("{} days", ms / 86_400_000)
        } else {
            format!("{} hours", ms.div_ceil(3_600_000))
        };
        // A new ping first: the same `ping_id` posted again gets its first answer again
        // (black-box round 104c: re-running the post printed `sold` twice).
        say!("  (the demo vertical sells a consumer once per {window}: ping again, then post Ana");
        say!(
            "   with the new ping_id, and the post answers \"duplicate\" (the same ping_id posted"
        );
        say!("   again gets its first answer again); change the phone to sell another, see");
        say!("   docs/API.md, De-duplication)");
    }
    match admin {
        Some(DemoAdmin {
            addr: admin,
            made_up,
            token_env,
        }) => {
            // The operator's own token stays in its variable: the commands name it.
            let (said, header) = match made_up {
                Some(token) => (
                    format!("token `{token}` (made up for this run)"),
                    format!("'Authorization: Bearer {token}'"),
                ),
                None => (
                    format!("token in ${token_env}"),
                    format!("\"Authorization: Bearer ${token_env}\""),
                ),
            };
            say!("Admin listener (metrics, reload) on {admin}, {said}:");
            say!("  curl -s http://{admin}/metrics -H {header} | grep pingpost_auctions_total");
            say!("  curl -s -X POST http://{admin}/admin/reload -H {header}");
        }
        None => say!("(the admin listener is off: no admin token)"),
    }
    say!("");
}

/// Sends `count` sample leads (0 = until the task is dropped), one every `interval_ms`,
/// printing what happens to each. The caller starts the bidders ([`start_bidders`],
/// before the exchange, so a port that is taken stops the demo before the exchange
/// listens or writes its ledger) and stops them after the exchange has drained, so they
/// answer the posts still in flight. It checks [`sample_leads_problem`] first: with a
/// configuration that cannot take the sample leads, every one of them would be refused.
pub async fn run(
    addr: SocketAddr,
    admin: Option<DemoAdmin>,
    interval_ms: u64,
    count: u64,
    dedup_window_ms: Option<u64>,
) {
    leads(addr, admin, interval_ms, count, dedup_window_ms).await;
}

/// [`start_bidders`], or the message (naming the taken port and its buyer) that the demo
/// exits 1 with.
pub async fn start_bidders_or_say(cfg: &Config) -> Result<Vec<DemoBidder>, String> {
    start_bidders(cfg).await.map_err(|e| {
        format!(
            "demo: could not start the example bidders on the ports the configuration's buyers name: {e} \
             (--demo starts an example bidder on every loopback port a buyer's url names: \
             {BIDDER_PORT_ADVICE})"
        )
    })
}

/// Sends the sample leads and prints what happens to each (returns early when stdout
/// is gone).
async fn leads(
    addr: SocketAddr,
    admin: Option<DemoAdmin>,
    interval_ms: u64,
    count: u64,
    dedup_window_ms: Option<u64>,
) {
    print_curl(addr, admin.as_ref(), dedup_window_ms);
    let client: DemoClient = Client::builder(TokioExecutor::new()).build_http();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(10)));
    loop {
        tick.tick().await;
        if count > 0 && sent >= count {
            break;
        }
        sent += 1;
        let (ping_lead, full) = sample_lead(&mut rng);
        let summary = format!(
            "{} {} age {} credit {}",
            ping_lead["state"].as_str().unwrap_or("?"),
            ping_lead["zip"].as_str().unwrap_or("?"),
            ping_lead["age"],
            ping_lead["credit"].as_str().unwrap_or("?")
        );
        let t0 = tokio::time::Instant::now();
        let Some((status, answer)) = call(
            &client,
            addr,
            "/v1/ping",
            &json!({"vertical": DEMO_VERTICAL, "lead": ping_lead}),
        )
        .await
        else {
            say!("lead {sent:>3}  ping failed: exchange unreachable");
            continue;
        };
        let took = t0.elapsed();
        if status != 200 {
            // Refused: say why (the contract's error body), not "no bid".
            say!(
                "lead {sent:>3}  PING {summary:<34} -> refused {status} {}: {}",
                answer["error"]["code"].as_str().unwrap_or("?"),
                answer["error"]["message"].as_str().unwrap_or("?")
            );
            continue;
        }
        if answer["status"] != "bid" {
            say!(
                "lead {sent:>3}  PING {summary:<34} -> no bid ({}) in {:.1} ms",
                answer["reason"].as_str().unwrap_or("?"),
                took.as_secs_f64() * 1e3
            );
            continue;
        }
        say!(
            "lead {sent:>3}  PING {summary:<34} -> BID {} {} firm until {} ({:.1} ms)",
            price(&answer["price"]),
            answer["currency"].as_str().unwrap_or(""),
            answer["expires_at"].as_str().unwrap_or("?"),
            took.as_secs_f64() * 1e3
        );
        let post = json!({"ping_id": answer["ping_id"], "lead": full});
        match call(&client, addr, "/v1/post", &post).await {
            Some((200, a)) if a["status"] == "sold" => {
                say!(
                    "          POST full lead -> SOLD to {} for {} (lead {})",
                    a["buyer"].as_str().unwrap_or("?"),
                    price(&a["price"]),
                    a["lead_id"].as_str().unwrap_or("?")
                );
            }
            Some((200, a)) if a["status"].is_string() => say!(
                "          POST full lead -> {} ({})",
                a["status"].as_str().unwrap_or("?").to_uppercase(),
                a["reason"].as_str().unwrap_or("no reason given")
            ),
            Some((s, a)) => say!("          POST full lead -> {s} {a}"),
            None => say!("          POST failed: exchange unreachable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Black-box round 174a: a buyer whose post URL names a port of its own got no
    /// bidder there; every address a buyer's URLs name gets one, once.
    #[test]
    fn every_address_a_buyer_s_urls_name_gets_a_bidder_once() {
        let mut cfg =
            crate::config::load_str_with_env(crate::app::DEFAULT_CONFIG, &demo_secret).unwrap();
        let before = bidder_addrs(&cfg);
        assert_eq!(before.len(), cfg.buyers.len(), "{before:?}");
        cfg.buyers[0].post_url = "http://127.0.0.1:9199/post".into();
        let after = bidder_addrs(&cfg);
        assert_eq!(after.len(), before.len() + 1, "{after:?}");
        assert!(
            after.contains(&(0, "127.0.0.1:9199".parse().unwrap())),
            "{after:?}"
        );
        // An address two buyers name is served once.
        cfg.buyers[1].post_url = "http://[::ffff:127.0.0.1]:9199/post".into();
        assert_eq!(bidder_addrs(&cfg), after);
        // Another loopback address on the same port is another bidder.
        cfg.buyers[1].post_url = "http://127.0.0.2:9199/post".into();
        assert!(bidder_addrs(&cfg).contains(&(1, "127.0.0.2:9199".parse().unwrap())));
    }

    /// Black-box rounds 172a and 176a: a buyer at `[::ffff:127.0.0.1]` or `127.0.0.2` got
    /// no demo bidder, and one at `[::1]` a bidder on `127.0.0.1` only.
    #[test]
    fn the_demo_listens_where_each_loopback_url_points() {
        for (url, at) in [
            ("http://127.0.0.1:9101/ping", "127.0.0.1:9101"),
            ("http://localhost:9101/ping", "127.0.0.1:9101"),
            ("http://[::1]:9101/ping", "[::1]:9101"),
            ("http://[::ffff:127.0.0.1]:9101/ping", "127.0.0.1:9101"),
            ("http://[::ffff:7f00:1]:9101/ping", "127.0.0.1:9101"),
            ("http://127.0.0.2:9101/ping", "127.0.0.2:9101"),
        ] {
            assert_eq!(loopback_addr(url), Some(at.parse().unwrap()), "{url}");
        }
        for url in [
            "http://[::ffff:10.0.0.1]:9101/ping",
            "https://buyer.example:9101/ping",
            "http://127.0.0.1/ping",
        ] {
            assert_eq!(loopback_addr(url), None, "{url}");
        }
    }

    #[test]
    fn a_price_is_shown_to_the_micro() {
        assert_eq!(price(&json!(20.2125)), "20.2125");
        assert_eq!(price(&json!(20)), "20.00");
        assert_eq!(price(&json!(16.9)), "16.90");
        assert_eq!(price(&json!(0.000001)), "0.000001");
        assert_eq!(price(&json!("x")), "?");
    }

    fn default_with(edit: impl Fn(&str) -> String) -> Config {
        let text = edit(crate::app::DEFAULT_CONFIG);
        crate::config::load_str_with_env(&text, &|n: &str| Some(format!("demo-test-secret-{n}")))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The note that Ana posted again (after a new ping) answers duplicate is given only when it would: the
    /// vertical de-duplicates on the printed post's phone (black-box rounds 49-50: said
    /// without `[dedup]`, and with keys on the e-mail only).
    #[test]
    fn the_dedup_note_is_given_only_when_the_printed_post_would_be_a_duplicate() {
        let day = 86_400_000;
        assert_eq!(
            dedup_window_ms(&default_with(str::to_string)),
            Some(30 * day)
        );
        let keys = "keys = { phone_sha256 = \"phone\", email_sha256 = \"email\" }";
        let email_only = default_with(|t| {
            assert!(t.contains(keys));
            t.replacen(keys, "keys = { email_sha256 = \"email\" }", 1)
        });
        assert_eq!(dedup_window_ms(&email_only), None);
        let sellers_hash = default_with(|t| t.replacen(keys, "keys = { phone_sha256 = \"\" }", 1));
        assert_eq!(dedup_window_ms(&sellers_hash), None);
        let week = default_with(|t| t.replacen("window_days = 30", "window_days = 7", 1));
        assert_eq!(dedup_window_ms(&week), Some(7 * day));
    }
}
