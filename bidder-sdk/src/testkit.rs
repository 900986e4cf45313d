//! What a buyer uses to test its own bidder: a [`TestClient`] that signs and sends pings
//! and posts the way the exchange does, over HTTP/1.1 or HTTP/2, and reads the answers the
//! way the exchange does ([`proto::buyer::parse_bid_answer`] /
//! [`proto::buyer::parse_post_answer`]); plus [`sample_ping`] and
//! [`sample_post`] for an auto-insurance lead.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use bidder_sdk::testkit::{sample_ping, SampleLead, TestClient};
//! use bidder_sdk::{proto::buyer::BidOutcome, Secret};
//!
//! let client = TestClient::new("http://127.0.0.1:9101", Secret::new("my-secret-0123456789")?);
//! let answer = client.ping(&sample_ping(&SampleLead::default())).await?;
//! assert!(matches!(answer.outcome, BidOutcome::Bid { .. }));
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proto::buyer::{parse_bid_answer, parse_post_answer, BidOutcome, PostOutcome};
use proto::signing::{Secret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use proto::Micros;
use serde::Serialize;
use serde_json::{json, Value};

use crate::server::{PING_PATH_DEFAULT, POST_PATH_DEFAULT};

/// The HTTP types [`TestClient::send`] takes and [`RawAnswer`] holds, so a bidder's tests
/// need no `http` dependency of their own (black-box round 86a).
pub use http::{Method, StatusCode, Version};

/// Default time a [`TestClient`] waits for a whole answer, in ms.
pub const TEST_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Why a [`TestClient`] request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The base URL and path do not make a valid URI.
    #[error("invalid URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL tried.
        url: String,
        /// Why it is invalid.
        source: http::uri::InvalidUri,
    },
    /// The request could not be built (a header value the caller chose is invalid).
    #[error("request could not be built: {0}")]
    Request(#[from] http::Error),
    /// The body could not be serialized to JSON.
    #[error("body could not be serialized: {0}")]
    Json(#[from] serde_json::Error),
    /// Connecting, sending or receiving headers failed.
    #[error("request failed: {0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    /// Reading the answer's body failed.
    #[error("reading the answer failed: {0}")]
    Body(#[from] hyper::Error),
    /// No whole answer within the client's timeout.
    #[error("no answer within {timeout_ms} ms")]
    Timeout {
        /// The timeout in force.
        timeout_ms: u64,
    },
}

/// How [`TestClient::send`] signs a request: correctly, or wrongly in one chosen way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    /// Signed with the client's secret at the current time, as the exchange does.
    Valid,
    /// Signed with the client's secret as of `timestamp_s` (Unix seconds): use an old one
    /// to check that stale requests are refused.
    At {
        /// The `webhook-timestamp` written and signed.
        timestamp_s: i64,
    },
    /// Signed with another secret: the signature cannot verify.
    WrongSecret,
    /// No webhook headers at all.
    Unsigned,
    /// Signed with the client's secret with this `webhook-id` and timestamp: send it
    /// twice to check that a replay is refused.
    WithId {
        /// The `webhook-id` written and signed.
        id: String,
        /// The `webhook-timestamp` written and signed.
        timestamp_s: i64,
    },
}

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// The status.
    pub status: StatusCode,
    /// The HTTP version the answer came over.
    pub version: Version,
    /// The `Content-Type` header, if any and readable.
    pub content_type: Option<String>,
    /// The whole body.
    pub body: Bytes,
}

impl RawAnswer {
    /// The `error.code` of a contract error body, if the body is one.
    pub fn error_code(&self) -> Option<String> {
        let value: Value = serde_json::from_slice(&self.body).ok()?;
        value
            .get("error")?
            .get("code")?
            .as_str()
            .map(str::to_string)
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The answer to a ping: the HTTP answer and what the exchange makes of it.
#[derive(Debug, Clone)]
pub struct PingAnswer {
    /// What the exchange would read: a bid, a pass, or an invalid answer (no bid).
    pub outcome: BidOutcome,
    /// The HTTP answer itself.
    pub raw: RawAnswer,
}

/// The answer to a post: the HTTP answer and what the exchange makes of it.
#[derive(Debug, Clone)]
pub struct PostAnswer {
    /// What the exchange would read: accepted, rejected, or an invalid answer (rejection).
    pub outcome: PostOutcome,
    /// The HTTP answer itself.
    pub raw: RawAnswer,
}

/// Signs and sends pings and posts to a bidder, as the exchange would.
#[derive(Debug, Clone)]
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base_url: String,
    secret: Secret,
    ping_path: String,
    post_path: String,
    timeout_ms: u64,
}

impl TestClient {
    /// A client speaking HTTP/1.1 to `base_url` (such as `http://127.0.0.1:9101`), signing
    /// with `secret`, using the default `/ping` and `/post` paths.
    pub fn new(base_url: impl Into<String>, secret: Secret) -> TestClient {
        TestClient::build(base_url.into(), secret, false)
    }

    /// The same, speaking HTTP/2 cleartext with prior knowledge (no upgrade dance).
    pub fn new_http2(base_url: impl Into<String>, secret: Secret) -> TestClient {
        TestClient::build(base_url.into(), secret, true)
    }

    fn build(base_url: String, secret: Secret, http2_only: bool) -> TestClient {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2_only)
            .build_http();
        TestClient {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            secret,
            ping_path: PING_PATH_DEFAULT.to_string(),
            post_path: POST_PATH_DEFAULT.to_string(),
            timeout_ms: TEST_TIMEOUT_MS_DEFAULT,
        }
    }

    /// Uses other ping and post paths (as in the bidder's `ServeOptions`).
    pub fn with_paths(
        mut self,
        ping_path: impl Into<String>,
        post_path: impl Into<String>,
    ) -> TestClient {
        self.ping_path = ping_path.into();
        self.post_path = post_path.into();
        self
    }

    /// Waits at most `timeout_ms` for each whole answer.
    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> TestClient {
        self.timeout_ms = timeout_ms;
        self
    }

    /// Sends a signed ping (any JSON of the ping's shape, such as [`sample_ping`]).
    pub async fn ping(&self, ping: &impl Serialize) -> Result<PingAnswer, TestError> {
        let body = serde_json::to_vec(ping)?;
        let raw = self
            .send(Method::POST, &self.ping_path, body, Signing::Valid)
            .await?;
        let mut scratch = raw.body.to_vec();
        let outcome = parse_bid_answer(
            raw.status.as_u16(),
            raw.content_type.as_deref(),
            &mut scratch,
        );
        Ok(PingAnswer { outcome, raw })
    }

    /// Sends a signed post (any JSON of the post's shape, such as [`sample_post`]).
    pub async fn post(&self, post: &impl Serialize) -> Result<PostAnswer, TestError> {
        let body = serde_json::to_vec(post)?;
        let raw = self
            .send(Method::POST, &self.post_path, body, Signing::Valid)
            .await?;
        let mut scratch = raw.body.to_vec();
        let outcome = parse_post_answer(
            raw.status.as_u16(),
            raw.content_type.as_deref(),
            &mut scratch,
        );
        Ok(PostAnswer { outcome, raw })
    }

    /// Sends any body to any path with any method, signed as `signing` says: for checking
    /// that a bidder refuses what it should.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        signing: Signing,
    ) -> Result<RawAnswer, TestError> {
        let url = format!("{}{}", self.base_url, path);
        let uri: Uri = url.parse().map_err(|source| TestError::InvalidUrl {
            url: url.clone(),
            source,
        })?;
        let body: Bytes = body.into();
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut id = format!("msg_{:016x}", rand::random::<u64>());
        let signed = match signing {
            Signing::WithId {
                id: given,
                timestamp_s,
            } => {
                id = given;
                Some((self.secret.clone(), timestamp_s))
            }
            Signing::Valid => Some((self.secret.clone(), unix_now_s())),
            Signing::At { timestamp_s } => Some((self.secret.clone(), timestamp_s)),
            Signing::WrongSecret => Secret::new("not-the-secret-you-are-looking-for")
                .ok()
                .map(|s| (s, unix_now_s())),
            Signing::Unsigned => None,
        };
        if let Some((secret, timestamp_s)) = signed {
            request = request
                .header(HEADER_ID, id.as_str())
                .header(HEADER_TIMESTAMP, timestamp_s.to_string())
                .header(HEADER_SIGNATURE, secret.sign(&id, timestamp_s, &body));
        }
        let request = request.body(Full::new(body))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let version = response.version();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, TestError>(RawAnswer {
                status,
                version,
                content_type,
                body,
            })
        };
        tokio::time::timeout(Duration::from_millis(self.timeout_ms), exchange)
            .await
            .map_err(|_| TestError::Timeout {
                timeout_ms: self.timeout_ms,
            })?
    }
}

fn unix_now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// An auto-insurance lead for [`sample_ping`] and [`sample_post`]. The default is the
/// contract's example (Ana Diaz, TX 76180, 42, homeowner, good credit); change fields with
/// struct update syntax: `SampleLead { state: "CA".into(), ..SampleLead::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleLead {
    /// Two-letter state code.
    pub state: String,
    /// Five-digit ZIP code.
    pub zip: String,
    /// Age in years.
    pub age: u32,
    /// Whether the driver owns a home.
    pub homeowner: bool,
    /// Credit tier: `poor`, `fair`, `good` or `excellent`.
    pub credit: String,
    /// First name (PII: post only).
    pub first_name: String,
    /// Last name (PII: post only).
    pub last_name: String,
    /// Phone number in E.164 (PII: post only).
    pub phone: String,
    /// Email address (PII: post only).
    pub email: String,
}

impl Default for SampleLead {
    fn default() -> SampleLead {
        SampleLead {
            state: "TX".into(),
            zip: "76180".into(),
            age: 42,
            homeowner: true,
            credit: "good".into(),
            first_name: "Ana".into(),
            last_name: "Diaz".into(),
            phone: "+18175550123".into(),
            email: "ana@example.com".into(),
        }
    }
}

/// `au_` and 32 hex digits, as the exchange's (docs/API.md, "Ping").
fn auction_id() -> String {
    format!("au_{:032x}", rand::random::<u128>())
}

/// A ping for `lead` as the exchange sends it: the PII-free fields only, `tmax_ms: 150`,
/// a fresh `auction_id`.
pub fn sample_ping(lead: &SampleLead) -> Value {
    json!({
        "auction_id": auction_id(),
        "vertical": "auto_insurance",
        "lead": {
            "state": lead.state,
            "zip": lead.zip,
            "age": lead.age,
            "homeowner": lead.homeowner,
            "credit": lead.credit,
        },
        "score": 78,
        "tmax_ms": 150,
        "test": true,
    })
}

/// A post of `lead` at `price` as the exchange sends it to the winner: the full lead,
/// a fresh `auction_id` and `lead_id`, a `bid_id` and a consent certificate.
pub fn sample_post(lead: &SampleLead, price: Micros) -> Value {
    json!({
        "auction_id": auction_id(),
        "lead_id": format!("ld_{:032x}", rand::random::<u128>()),
        "bid_id": "b-test",
        "price": price,
        "vertical": "auto_insurance",
        "lead": {
            "first_name": lead.first_name,
            "last_name": lead.last_name,
            "phone": lead.phone,
            "email": lead.email,
            "state": lead.state,
            "zip": lead.zip,
            "age": lead.age,
            "homeowner": lead.homeowner,
            "credit": lead.credit,
        },
        "consent": {"trustedform_cert_url": "https://cert.trustedform.com/0000000000000000000000000000000000000000"},
        "tmax_ms": 2000,
        "test": true,
    })
}
