//! `[admin]`: the admin listener and its token.

use std::net::SocketAddr;

use super::reader::{Problems, Section};
use super::NAME_LEN_MAX;
use crate::config::{defaults, AdminConfig, AdminToken};

/// Shortest admin token accepted: a guessable token on the admin port is worse than none.
const ADMIN_TOKEN_LEN_MIN: usize = 16;
/// Longest admin token (it travels in a header).
const ADMIN_TOKEN_LEN_MAX: usize = 1024;

fn default_admin_listen() -> SocketAddr {
    defaults::ADMIN_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8081)))
}

pub(super) fn read_admin(
    mut s: Section<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> AdminConfig {
    let listen = match s.opt("listen") {
        None => default_admin_listen(),
        Some((path, v)) => match v.as_str().map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) => addr,
            _ => {
                p.at(&path, "must be a socket address such as \"127.0.0.1:8081\" (an IP address and a port: a host name such as localhost is not looked up)");
                default_admin_listen()
            }
        },
    };
    let token_env = match s.str_opt(p, "token_env") {
        None => defaults::ADMIN_TOKEN_ENV.to_string(),
        Some(name) if super::reader::is_env_name(name) && name.len() <= NAME_LEN_MAX => {
            name.to_string()
        }
        Some(_) => {
            p.at(
                &s.path_of("token_env"),
                format!("{}; up to 64", super::reader::ENV_NAME_RULE),
            );
            defaults::ADMIN_TOKEN_ENV.to_string()
        }
    };
    // The token's value never appears in a message, only the variable's name.
    let shown = crate::config::shown_env_name(&token_env);
    let value = env(&token_env).filter(|t| !t.is_empty());
    let set = value.is_some();
    let token = match value {
        // Set, but not text: refused as a token that is not visible ASCII is (round
        // 57a: it was taken as unset, and the listener stayed off without a word).
        None if crate::config::env_is_not_text(&token_env) => {
            p.at(
                &s.path_of("token_env"),
                format!("the token in ${shown} must be visible ASCII characters"),
            );
            None
        }
        None => None,
        Some(t) if t.len() < ADMIN_TOKEN_LEN_MIN || t.len() > ADMIN_TOKEN_LEN_MAX => {
            p.at(
                &s.path_of("token_env"),
                format!(
                    "the token in ${shown} must be {ADMIN_TOKEN_LEN_MIN} to \
                     {ADMIN_TOKEN_LEN_MAX} characters"
                ),
            );
            None
        }
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            p.at(
                &s.path_of("token_env"),
                format!("the token in ${shown} must be visible ASCII characters"),
            );
            None
        }
        Some(t) => Some(AdminToken::new(t)),
    };
    if token.is_none() && !listen.ip().to_canonical().is_loopback() {
        // Without a token the admin listener does not start; on a non-loopback address
        // that is almost certainly a mistake, so say so rather than run without it. A
        // token refused above is said to be set (black-box round 146b: this read as if
        // the variable were unset, beside the token's own problem).
        p.at(
            &s.path_of("listen"),
            if set {
                format!("is not a loopback address, so ${shown} must hold a valid admin token (the one it holds is refused: see token_env)")
            } else {
                format!("is not a loopback address, so ${shown} must hold the admin token")
            },
        );
    }
    s.finish(p);
    AdminConfig {
        listen,
        token_env,
        token,
    }
}
