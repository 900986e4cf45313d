//! The admin listener's routes: `GET /metrics`, `POST /admin/reload` and the probes,
//! behind the admin bearer token (compared in constant time).

use super::*;

/// Largest admin request body (`POST /admin/reload` takes none; a stray body is bounded).
pub const ADMIN_BODY_BYTES_MAX: usize = 4 * 1024;

/// Is `presented` the admin token? Both sides are hashed first, so the comparison takes
/// the same time for every token of any length, and it never stops at the first
/// differing byte.
fn token_matches(expected: &[u8], presented: &[u8]) -> bool {
    let a: [u8; 32] = Sha256::digest(expected).into();
    let b: [u8; 32] = Sha256::digest(presented).into();
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Checks `Authorization: Bearer <admin token>`. A missing, repeated or unreadable
/// header, or a token of more words than any key, is told as the seller listener tells
/// it; a wrong token is only "wrong".
fn admin_authorized(rt: &Runtime, req: &Request<Incoming>) -> Result<(), ApiError> {
    let unauthorized = |message: String| ApiError::new(ErrorCode::Unauthorized, message);
    let presented = bearer_token(req.headers())
        .ok_or_else(|| unauthorized(seller::no_bearer_message(req.headers(), "admin token")))?;
    let wrong = || unauthorized("wrong Authorization: Bearer <admin token>".to_owned());
    let Some(expected) = &rt.config.admin.token else {
        return Err(wrong());
    };
    if token_matches(expected.as_bytes(), presented.as_bytes()) {
        Ok(())
    } else {
        Err(wrong())
    }
}

/// Routes one admin request: `GET /healthz` and `GET /readyz` (open, as on the seller
/// listener), and, with the admin token, `GET /metrics`, `POST /admin/reload` and
/// `POST /admin/models`. Without
/// the token every other path is `401` (the admin routes are not revealed). Never panics.
/// Probes and `401`s close their connection (see [`closing`]).
pub async fn handle_admin(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let route: &'static str = match req.uri().path() {
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/admin/reload" => "reload",
        "/admin/models" => "models",
        _ => "unknown",
    };
    // The probes are open, as on the seller listener (HEAD is GET without the body);
    // another method on them is `405`, token or not.
    match (route, req.method()) {
        ("healthz", m @ (&Method::GET | &Method::HEAD)) => {
            return closing(answer_to(
                m,
                json_response(200, br#"{"status":"ok"}"#.to_vec()),
            ))
        }
        ("readyz", m @ (&Method::GET | &Method::HEAD)) => {
            return closing(answer_to(m, readyz(&state)))
        }
        ("healthz" | "readyz", m) => {
            return closing(method_not_allowed(&state, m, req.uri().path(), "GET, HEAD"))
        }
        _ => {}
    }
    if let Some(e) = super::host_problem(&req) {
        return closing(error_response(&state, &e));
    }
    let rt = state.runtime.load_full();
    if let Err(e) = admin_authorized(&rt, &req) {
        return closing(error_response(&state, &e));
    }
    let Ok(_permit) = state.admin_in_flight.try_acquire() else {
        return error_response(
            &state,
            &ApiError::new(
                ErrorCode::Overloaded,
                "too many admin requests in flight; retry shortly",
            ),
        );
    };
    match (route, req.method()) {
        ("metrics", m @ (&Method::GET | &Method::HEAD)) => answer_to(m, metrics(&state)),
        ("reload", &Method::POST) => {
            let timeout = Duration::from_millis(rt.config.server.header_read_timeout_ms);
            // No body is needed; one that is sent must be JSON, as everywhere (well-formed:
            // malformed JSON is `400` and reloads nothing; its content is not read).
            let media = super::seller::json_body_problem(&req);
            match read_body(req, ADMIN_BODY_BYTES_MAX, timeout).await {
                Err(e) => return error_response(&state, &e),
                Ok(body) if !body.is_empty() => {
                    if let Some(problem) = media {
                        return error_response(
                            &state,
                            &ApiError::new(ErrorCode::UnsupportedMediaType, problem),
                        );
                    }
                    let mut body = body.to_vec();
                    if let Err(e) = proto::json::parse_value(&mut body) {
                        return error_response(&state, &e);
                    }
                }
                Ok(_) => {}
            }
            admin_reload(&state).await
        }
        ("models", &Method::POST) => {
            let media = super::seller::json_body_problem(&req);
            let timeout = Duration::from_millis(rt.config.server.header_read_timeout_ms);
            let body = match read_body(req, ADMIN_BODY_BYTES_MAX, timeout).await {
                Ok(b) => b,
                Err(e) => return error_response(&state, &e),
            };
            // No body at all is a missing body, whatever its (missing) type says
            // (black-box round 67d: it was `415`, which did not say the body is needed).
            if body.is_empty() {
                return error_response(
                    &state,
                    &ApiError::from_fields(
                        ErrorCode::InvalidRequest,
                        vec![proto::FieldProblem::new(
                            "body",
                            "is required: a JSON object {\"vertical\": \"...\", \"version\": \"...\" | null}",
                        )],
                    ),
                );
            }
            if let Some(problem) = media {
                return error_response(
                    &state,
                    &ApiError::new(ErrorCode::UnsupportedMediaType, problem),
                );
            }
            admin_models(&state, &body).await
        }
        ("unknown", _) => error_response(
            &state,
            &ApiError::new(
                ErrorCode::NotFound,
                // Not the path itself (black-box round 72d), as on the seller listener.
                "no such route (the admin listener serves GET /metrics, /healthz and \
                 /readyz, POST /admin/reload and /admin/models)",
            ),
        ),
        (_, m) => {
            let allow = if matches!(route, "reload" | "models") {
                "POST"
            } else {
                "GET, HEAD"
            };
            method_not_allowed(&state, m, req.uri().path(), allow)
        }
    }
}

/// `POST /admin/reload`: `{"generation": N}`, or every problem at once (`400
/// invalid_request` with `fields`) while the old runtime keeps serving.
async fn admin_reload(state: &Arc<AppState>) -> Response<Body> {
    let st = state.clone();
    // Reading the file blocks; reloads are serialized inside.
    let result = crate::models::learning::on_the_reload_thread("POST /admin/reload", move || {
        st.reload_by("POST /admin/reload")
    })
    .await;
    let result = match result {
        Ok(r) => r,
        // Reloads already fill the reload thread's queue: nothing was read or changed.
        Err(crate::models::learning::OffPathError::Busy) => {
            return error_response(
                state,
                &ApiError::new(ErrorCode::Overloaded, crate::state::RELOADS_WAITING),
            );
        }
        Err(crate::models::learning::OffPathError::Failed) => {
            Err(ReloadError::Failed(crate::state::RELOAD_NOT_RUN.into()))
        }
    };
    reload_answer(state, result)
}

/// `POST /admin/models` with `{"vertical": "auto_insurance", "version": "v3"}` serves
/// that model set (`"version": null`: no model); answers `{"generation": N, "vertical":
/// ..., "version": ...}`, or every problem at once while the serving model stays.
async fn admin_models(state: &Arc<AppState>, body: &[u8]) -> Response<Body> {
    let bad = |field: &str, problem: &str| {
        ApiError::from_fields(
            ErrorCode::InvalidRequest,
            vec![proto::FieldProblem::new(field, problem)],
        )
    };
    // The body's own JSON rules first, as on every route: a name twice in one object
    // (JSON readers disagree on which one counts: black-box round 15), depth, surrogates.
    if let Err(e) = proto::json::parse_value(&mut body.to_vec()) {
        return error_response(state, &e);
    }
    let v: serde_json::Value =
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return error_response(
                state,
                &bad(
                    "body",
                    "must be a JSON object {\"vertical\": \"...\", \"version\": \"...\" | null}",
                ),
            ),
        };
    let Some(obj) = v.as_object() else {
        return error_response(state, &bad("body", "must be a JSON object"));
    };
    let mut problems = Vec::new();
    for k in obj.keys() {
        if k != "vertical" && k != "version" {
            problems.push(proto::FieldProblem::new(
                proto::error::printable_name(k),
                proto::error::UNKNOWN_FIELD,
            ));
        }
    }
    // Every problem of the body at once: unknown fields, and each known field's own.
    let known_vertical = |s: &str| state.runtime.load().config.vertical_by_name.contains_key(s);
    let vertical = match obj.get("vertical") {
        Some(serde_json::Value::String(s)) if !known_vertical(s) => {
            problems.push(proto::FieldProblem::new(
                "vertical",
                format!("unknown vertical {:?}", truncate(s, 64)),
            ));
            None
        }
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        // Sent as null, said so, as in the seller's bodies (black-box round 106a).
        Some(serde_json::Value::Null) => {
            problems.push(proto::FieldProblem::new(
                "vertical",
                proto::error::REQUIRED_NULL,
            ));
            None
        }
        Some(_) => {
            problems.push(proto::FieldProblem::new("vertical", "must be a string"));
            None
        }
        None => {
            problems.push(proto::FieldProblem::new("vertical", "is required"));
            None
        }
    };
    let version = match obj.get("version") {
        Some(serde_json::Value::String(s)) if !crate::core::model::manifest::valid_version(s) => {
            problems.push(proto::FieldProblem::new(
                "version",
                format!(
                    "version {:?} is not a model version: {}",
                    truncate(s, 64),
                    crate::core::model::manifest::VERSION_RULE
                ),
            ));
            None
        }
        Some(serde_json::Value::String(s)) => Some(Some(s.clone())),
        Some(serde_json::Value::Null) => Some(None),
        Some(_) => {
            problems.push(proto::FieldProblem::new(
                "version",
                "must be a string or null",
            ));
            None
        }
        None => {
            problems.push(proto::FieldProblem::new(
                "version",
                "is required (null serves no model)",
            ));
            None
        }
    };
    if let (Some(vertical), Some(Some(version)), false) = (&vertical, &version, problems.is_empty())
    {
        // Refused for the body (an unknown field): the model set's own problems are
        // listed too, read off the auction path (black-box round 15: an unknown field hid
        // a broken set).
        let (st, vname, vver) = (state.clone(), vertical.clone(), version.clone());
        if let Ok(more) =
            crate::models::learning::off_the_auction_path("pingpost-model-check", move || {
                st.model_set_problems(&vname, &vver)
            })
            .await
        {
            problems.extend(more);
        }
    }
    let (Some(vertical), Some(version), true) = (vertical, version, problems.is_empty()) else {
        return error_response(
            state,
            &ApiError::from_fields(ErrorCode::InvalidRequest, problems),
        );
    };
    let st = state.clone();
    let (vname, vver) = (vertical.clone(), version.clone());
    // Parsing the models is megabytes of JSON: on an idle-priority thread, so the swap
    // takes no CPU from the auctions.
    let result = crate::models::learning::off_the_auction_path("pingpost-model-swap", move || {
        st.swap_models(&vname, vver.as_deref())
    })
    .await;
    let result = match result {
        Ok(r) => r,
        // Swaps and directory checks already fill the loader's queue: nothing was
        // loaded or changed; the same request may be sent again.
        Err(e @ crate::models::learning::OffPathError::Busy) => {
            return error_response(state, &ApiError::new(ErrorCode::Overloaded, e.to_string()));
        }
        Err(crate::models::learning::OffPathError::Failed) => Err(ReloadError::Failed(
            "the swap failed inside the exchange; the serving model stays".into(),
        )),
    };
    match result {
        Ok(generation) => {
            state
                .metrics
                .model_swaps
                .with_label_values(&["applied"])
                .inc();
            /// In the order API.md shows (a `json!` map is alphabetical: round 81b).
            #[derive(serde::Serialize)]
            struct Swapped<'a> {
                generation: u64,
                vertical: &'a str,
                version: Option<&'a str>,
            }
            let body = Swapped {
                generation,
                vertical: &vertical,
                version: version.as_deref(),
            };
            json_response(200, serde_json::to_vec(&body).unwrap_or_default())
        }
        Err(ReloadError::Invalid(fields)) => {
            state
                .metrics
                .model_swaps
                .with_label_values(&["refused"])
                .inc();
            tracing::warn!(
                problems = fields.len(),
                error = %crate::state::Problems(&fields),
                "model swap refused; the serving model stays"
            );
            error_response(
                state,
                &ApiError::from_fields(ErrorCode::InvalidRequest, fields),
            )
        }
        Err(ReloadError::NoSource) => error_response(
            state,
            &ApiError::new(ErrorCode::Conflict, "no model source"),
        ),
        Err(ReloadError::Failed(why)) => {
            state
                .metrics
                .model_swaps
                .with_label_values(&["refused"])
                .inc();
            tracing::error!(error = %why, "model swap failed; the serving model stays");
            error_response(state, &ApiError::new(ErrorCode::Internal, why))
        }
    }
}

/// The HTTP answer for a reload result (also counts it; [`AppState::reload_by`] logged
/// it).
pub fn reload_answer(state: &AppState, result: Result<u64, ReloadError>) -> Response<Body> {
    match result {
        Ok(generation) => {
            state.metrics.reloads.with_label_values(&["applied"]).inc();
            json_response(200, format!("{{\"generation\":{generation}}}").into_bytes())
        }
        Err(ReloadError::NoSource) => {
            state.metrics.reloads.with_label_values(&["refused"]).inc();
            error_response(
                state,
                &ApiError::new(
                    ErrorCode::Conflict,
                    "this exchange was not started from a configuration it can read again",
                ),
            )
        }
        Err(ReloadError::Failed(why)) => {
            state.metrics.reloads.with_label_values(&["refused"]).inc();
            error_response(state, &ApiError::new(ErrorCode::Internal, why))
        }
        Err(ReloadError::Invalid(fields)) => {
            state.metrics.reloads.with_label_values(&["refused"]).inc();
            error_response(
                state,
                &ApiError::from_fields(ErrorCode::InvalidRequest, fields),
            )
        }
    }
}
