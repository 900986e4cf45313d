//! The connection's byte stream as the supervisor watches it: when a head's first bytes
//! arrive (before decryption over TLS), and hyper's own empty-bodied `400`/`414`/`431`
//! answers given the contract's JSON body on their way out.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use proto::{ApiError, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::service::Activity;
use super::*;

/// A stream that counts the bytes read from it, and gives hyper's own error answers the
/// contract's JSON body ([`bare_answer_replacement`]).
/// The socket under TLS: counts the bytes that arrive before they are decrypted
/// (`Activity::raw_in`), so a head whose first TLS record is still arriving has begun
/// (black-box round 39: a record split across the idle timeout was cut by it).
pub(super) struct RawCounted<I> {
    pub(super) inner: I,
    pub(super) activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for RawCounted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            let a = &this.activity;
            let was = a.raw_in.fetch_add(read as u64, Ordering::Relaxed);
            if was == a.raw_at_finish.load(Ordering::Relaxed) {
                a.head_starts();
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for RawCounted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pub(super) struct Counted<I> {
    pub(super) inner: I,
    pub(super) activity: Arc<Activity>,
    pub(super) limits: Arc<Limits>,
    pub(super) on_refused: Option<RefusedHook>,
    /// An answer being written in place of one of hyper's bare ones.
    pub(super) replacing: Option<Replacing>,
    /// The HTTP/2 frames written so far, for the answers that went out to their end.
    pub(super) frames: FrameScan,
    /// The HTTP/2 frames read so far, for the bytes of request bodies among them.
    pub(super) frames_in: InScan,
    /// Whether the head being read began with `HEAD ` (HTTP/1.x): hyper's bare answer to
    /// it goes out with the JSON's length and without the JSON (RFC 9110 9.3.2).
    pub(super) head_request: bool,
    /// Whether the connection began with a TLS record (a handshake sent to a cleartext
    /// port): hyper's `400` then says so.
    pub(super) tls_hello: bool,
}

/// Reads the frames an HTTP/2 connection writes, to count the answers that ended: those
/// whose HEADERS went out without END_STREAM (an answer with a body), ended by a frame
/// with END_STREAM or by a reset of their stream. The connection's first write decides:
/// an HTTP/2 server begins with a SETTINGS frame; anything else (an HTTP/1.x answer) is
/// not read. Only the frame heads are kept (9 bytes); payloads are skipped.
#[derive(Debug, Default)]
pub(crate) struct FrameScan {
    /// Unknown until the first write, then whether the connection speaks HTTP/2.
    h2: Option<bool>,
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    /// Streams the connection reset (`RST_STREAM` written), for [`InScan::closed`].
    pub(super) resets: Vec<u32>,
    /// The lowest last stream id of the GOAWAY frames written, for [`InScan::going_away`].
    pub(super) goaway_last: Option<u32>,
    /// The first bytes of the current GOAWAY frame's payload (its last stream id, then its
    /// error code), how many came, and how many are wanted (8, or 4 of a short frame).
    goaway_id: Option<([u8; 8], usize, usize)>,
    /// A GOAWAY with an error code was written: the server ended the connection for a
    /// protocol error (h2's own guards: a rapid reset flood is `ENHANCE_YOUR_CALM`).
    pub(super) goaway_error: bool,
    /// Streams whose answer has begun (its HEADERS written without END_STREAM) and not
    /// ended: neither the DATA frame that ends it written nor the stream reset, by the
    /// server (a RST_STREAM written) or by the client ([`FrameScan::reset_by_client`]).
    /// Each is one of the connection's unsent answers (black-box round 200b: an answer
    /// whose HEADERS went out, its body held by a window of 0, stayed counted for good
    /// once the client reset its stream).
    answering: Vec<u32>,
}

/// HTTP/2 frame types and the END_STREAM flag (RFC 9113 6.1, 6.2, 6.5).
const FRAME_DATA: u8 = 0;
const FRAME_HEADERS: u8 = 1;
const FRAME_RST_STREAM: u8 = 3;
const FRAME_CONTINUATION: u8 = 9;
const FRAME_GOAWAY: u8 = 7;
const FRAME_SETTINGS: u8 = 4;
const FLAG_END_STREAM: u8 = 1;

impl FrameScan {
    /// Reads `written` (bytes the connection wrote, in order) and returns how many
    /// answers with a body their frames ended: first those written to their end
    /// (END_STREAM on a DATA frame, or on HEADERS after it: trailers), then those whose
    /// stream the server reset (not sent: no progress of the client's).
    pub(super) fn ended(&mut self, mut written: &[u8]) -> (u32, u32) {
        let h2 = *self.h2.get_or_insert_with(|| {
            written.len() >= 4 && written[3] == FRAME_SETTINGS && written[0] == 0
        });
        if !h2 {
            return (0, 0);
        }
        let (mut ended, mut reset) = (0, 0);
        while !written.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(written.len());
                // A GOAWAY's last stream id (its payload's first 4 bytes) and its error
                // code (the next 4).
                if let Some((id, got, want)) = self.goaway_id.as_mut() {
                    let take = (*want - *got).min(n);
                    let was = *got;
                    id[was..was + take].copy_from_slice(&written[..take]);
                    *got += take;
                    if was < 4 && *got >= 4 {
                        let last = u32::from_be_bytes([id[0], id[1], id[2], id[3]]) & 0x7fff_ffff;
                        self.goaway_last = Some(self.goaway_last.map_or(last, |l| l.min(last)));
                    }
                    if *got == 8 && u32::from_be_bytes([id[4], id[5], id[6], id[7]]) != 0 {
                        self.goaway_error = true;
                    }
                    if *got == *want {
                        self.goaway_id = None;
                    }
                }
                self.skip -= n;
                written = &written[n..];
                continue;
            }
            let n = (9 - self.head_len).min(written.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&written[..n]);
            self.head_len += n;
            written = &written[n..];
            if self.head_len == 9 {
                let h = self.head;
                let kind = h[3];
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                let ends = h[4] & FLAG_END_STREAM != 0;
                let begun = self.answering.iter().position(|s| *s == stream);
                match (kind, ends, begun) {
                    // An answer with a body begins (an answer whose HEADERS end its
                    // stream has none, and is not counted: [`Tracked`](super::Tracked)).
                    (FRAME_HEADERS, false, None) if self.answering.len() < RECENT_MAX => {
                        self.answering.push(stream);
                    }
                    // Written to its end.
                    (FRAME_DATA | FRAME_HEADERS, true, Some(at)) => {
                        self.answering.swap_remove(at);
                        ended += 1;
                    }
                    // Reset by the server.
                    (FRAME_RST_STREAM, _, Some(at)) => {
                        self.answering.swap_remove(at);
                        reset += 1;
                    }
                    // Its beginning not noted (more than RECENT_MAX at once): its end
                    // still counts.
                    (FRAME_DATA, true, None) => ended += 1,
                    _ => {}
                }
                if kind == FRAME_RST_STREAM && self.resets.len() < RECENT_MAX {
                    self.resets.push(stream);
                }
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.goaway_id = (kind == FRAME_GOAWAY && self.skip >= 4).then_some((
                    [0; 8],
                    0,
                    self.skip.min(8),
                ));
                self.head_len = 0;
            }
        }
        (ended, reset)
    }

    /// The client reset `stream`: whether an answer had begun on it and not ended (it is
    /// ended now: none of its frames will be written).
    pub(super) fn reset_by_client(&mut self, stream: u32) -> bool {
        match self.answering.iter().position(|s| *s == stream) {
            Some(at) => {
                self.answering.swap_remove(at);
                true
            }
            None => false,
        }
    }
}

/// Reads the frames an HTTP/2 client sends, to tell the bytes of request bodies (DATA
/// frames' data) from the rest: a PING, a WINDOW_UPDATE, SETTINGS, an empty or a padding-
/// only DATA frame keeps a connection busy without bringing any body nearer its end
/// (black-box round 114a: a PING every 200 ms held 256 bodiless streams for the whole
/// body budget instead of [`BODIES_STALL`]). A connection that does not begin with the
/// client preface (HTTP/1.x) is not read: all its bytes count.
#[derive(Debug, Default)]
pub(crate) struct InScan {
    /// Bytes of the preface matched so far; `None` once it did not match (HTTP/1.x).
    preface: Option<usize>,
    not_h2: bool,
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    /// Of them, the data bytes still to come (counted).
    data_left: usize,
    /// The current DATA frame is padded and its pad length byte is next.
    pad_next: bool,
    /// The current frame's stream.
    stream: u32,
    /// The last stream id of the server's GOAWAY: a stream above it is not served, so
    /// its bytes are no body's (black-box round 118a: after a 404's graceful GOAWAY, new
    /// streams the server ignored, sent a byte each, passed for the pending bodies).
    serves_up_to: Option<u32>,
    /// Whether the current frame's data is a pending body's (its stream is open).
    counting: bool,
    /// Streams whose request body is still coming as the client sends them: opened by a
    /// HEADERS frame without END_STREAM, closed by the client's END_STREAM or
    /// `RST_STREAM`, or by the server's `RST_STREAM` ([`InScan::closed`]). Only their
    /// bytes are a body arriving (round 117a: DATA sent on streams already closed passed
    /// for the pending bodies').
    open: Vec<u32>,
    /// Streams that sent body bytes, with when they last did (µs from the connection's
    /// accept): at most one entry per stream, the oldest pruned past [`RECENT_MAX`].
    recent: Vec<(u32, u64)>,
    /// The control frames the client sent (see [`CONTROL_FRAMES_BURST`]): a SETTINGS
    /// frame counts one plus one per setting in it.
    control: u64,
    /// Streams the client opened (HEADERS on a stream id above every one before).
    streams: u64,
    /// The highest stream id the client opened.
    last_stream: u32,
    /// Streams the client reset (`RST_STREAM` read), for [`FrameScan::reset_by_client`]
    /// (taken after each read).
    pub(super) resets: Vec<u32>,
}

/// The HTTP/2 control frames (SETTINGS, and each setting in it; PING; WINDOW_UPDATE;
/// PRIORITY; GOAWAY; frames of unknown types) a client may send before any allowance
/// for its requests or its time: past it, more than [`CONTROL_FRAMES_PER_STREAM`] per
/// stream it opened and [`CONTROL_FRAMES_PER_SECOND`] per second it has been connected,
/// the connection is ended (black-box round 143b: SETTINGS frames of 2,730 settings
/// each, sent without pause on one connection and without a key, kept a worker busy; a
/// flood of WINDOW_UPDATEs too; CVE-2019-9515). Stream resets, CONTINUATION and empty
/// DATA frames have the h2 layer's own bounds.
pub const CONTROL_FRAMES_BURST: u64 = 1_000;
/// The control frames each stream a client opens adds to its allowance: an honest client
/// sends one or two WINDOW_UPDATEs (the stream's and the connection's) and a PING now and
/// then (hyper's window sizing) per answer it reads.
pub const CONTROL_FRAMES_PER_STREAM: u64 = 8;
/// The control frames each second of a connection adds to its allowance (keep-alive
/// PINGs of an idle connection).
pub const CONTROL_FRAMES_PER_SECOND: u64 = 100;

/// Streams [`InScan`] remembers the last body bytes of; past it, those not heard from for
/// [`BODIES_STALL`] are forgotten (a connection has at most 256 streams open at once).
const RECENT_MAX: usize = 512;

/// The HTTP/2 client connection preface (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FLAG_PADDED: u8 = 0x8;

impl InScan {
    /// Reads `read` (bytes the client sent, in order) and returns how many of them are
    /// request body data: all of them on a connection that is not HTTP/2.
    #[cfg(test)]
    pub(super) fn body_bytes(&mut self, read: &[u8]) -> usize {
        self.body_bytes_at(read, 0)
    }

    /// [`InScan::body_bytes`], noting at `now_us` the streams the body bytes were for.
    pub(super) fn body_bytes_at(&mut self, mut read: &[u8], now_us: u64) -> usize {
        if self.not_h2 {
            return read.len();
        }
        let seen = self.preface.unwrap_or(0);
        if seen < PREFACE.len() {
            let n = (PREFACE.len() - seen).min(read.len());
            if read[..n] != PREFACE[seen..seen + n] {
                // Not HTTP/2: the bytes taken for the preface's count too.
                self.not_h2 = true;
                return seen + read.len();
            }
            self.preface = Some(seen + n);
            read = &read[n..];
        }
        let mut body = 0;
        while !read.is_empty() {
            if self.skip > 0 {
                if self.pad_next {
                    self.pad_next = false;
                    self.skip -= 1;
                    self.data_left = self.skip.saturating_sub(usize::from(read[0]));
                    read = &read[1..];
                    continue;
                }
                let n = self.skip.min(read.len());
                let data = n.min(self.data_left);
                if data > 0 {
                    self.heard(now_us);
                }
                body += data;
                self.data_left -= data;
                self.skip -= n;
                read = &read[n..];
                continue;
            }
            let n = (9 - self.head_len).min(read.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&read[..n]);
            self.head_len += n;
            read = &read[n..];
            if self.head_len == 9 {
                let h = self.head;
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.skip = len;
                self.head_len = 0;
                let (kind, flags) = (h[3], h[4]);
                let data = kind == FRAME_DATA;
                self.stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                match kind {
                    FRAME_RST_STREAM => {
                        if self.resets.len() < RECENT_MAX {
                            self.resets.push(self.stream);
                        }
                    }
                    FRAME_DATA | FRAME_CONTINUATION => {}
                    FRAME_HEADERS => {
                        if self.stream > self.last_stream {
                            self.last_stream = self.stream;
                            self.streams += 1;
                        }
                    }
                    // Each setting is 6 bytes.
                    FRAME_SETTINGS => self.control += 1 + (len / 6) as u64,
                    _ => self.control += 1,
                }
                let is_open = self.open.contains(&self.stream);
                self.counting = data && is_open;
                let ends = flags & FLAG_END_STREAM != 0;
                let served = self.serves_up_to.is_none_or(|last| self.stream <= last);
                if kind == FRAME_HEADERS
                    && !ends
                    && !is_open
                    && served
                    && self.open.len() < RECENT_MAX
                {
                    self.open.push(self.stream);
                } else if ((data || kind == FRAME_HEADERS) && ends) || kind == FRAME_RST_STREAM {
                    self.closed(self.stream);
                }
                self.pad_next = self.counting && flags & FLAG_PADDED != 0 && len > 0;
                self.data_left = if self.counting && !self.pad_next {
                    len
                } else {
                    0
                };
            }
        }
        body
    }

    /// Whether the client has sent more control frames than its allowance before its
    /// time is counted: [`CONTROL_FRAMES_BURST`] and [`CONTROL_FRAMES_PER_STREAM`] for
    /// each stream it opened (a look at two counters, for every read).
    pub(super) fn control_over_streams(&self) -> bool {
        self.control
            > CONTROL_FRAMES_BURST
                .saturating_add(self.streams.saturating_mul(CONTROL_FRAMES_PER_STREAM))
    }

    /// Whether the client has sent more control frames than its whole allowance, its
    /// time connected (`now_us` from its accept) included: a flood.
    pub(super) fn control_flood(&self, now_us: u64) -> bool {
        let per_time = (now_us / 1_000_000).saturating_mul(CONTROL_FRAMES_PER_SECOND);
        self.control_over_streams()
            && self.control
                > CONTROL_FRAMES_BURST
                    .saturating_add(self.streams.saturating_mul(CONTROL_FRAMES_PER_STREAM))
                    .saturating_add(per_time)
    }

    /// The server sent GOAWAY with `last` as its last stream id: streams above it are
    /// not served, and none of their bytes is a body's.
    pub(super) fn going_away(&mut self, last: u32) {
        self.serves_up_to = Some(self.serves_up_to.map_or(last, |l| l.min(last)));
        self.open.retain(|s| *s <= last);
        self.recent.retain(|(s, _)| *s <= last);
    }

    /// `stream`'s body comes no more (its end, or a reset by either side).
    pub(super) fn closed(&mut self, stream: u32) {
        self.open.retain(|s| *s != stream);
        self.recent.retain(|(s, _)| *s != stream);
    }

    /// The current frame's stream sent body bytes at `now_us`.
    fn heard(&mut self, now_us: u64) {
        let stream = self.stream;
        match self.recent.iter_mut().find(|(s, _)| *s == stream) {
            Some(entry) => entry.1 = now_us,
            None => {
                if self.recent.len() >= RECENT_MAX {
                    let since = now_us.saturating_sub(stall_us());
                    self.recent.retain(|(_, at)| *at >= since);
                    if self.recent.len() >= RECENT_MAX {
                        self.recent.remove(0);
                    }
                }
                self.recent.push((stream, now_us));
            }
        }
    }

    /// How many streams whose body is still coming sent some of it within
    /// [`BODIES_STALL`] of `now_us` (a body that came to its end is no longer waited
    /// for: its bytes are none of the others').
    pub(super) fn streams_heard(&self, now_us: u64) -> usize {
        let since = now_us.saturating_sub(stall_us());
        self.recent
            .iter()
            .filter(|(s, at)| *at >= since && self.open.contains(s))
            .count()
    }
}

fn stall_us() -> u64 {
    u64::try_from(BODIES_STALL.as_micros()).unwrap_or(u64::MAX)
}

impl<I> Counted<I> {
    /// Takes the answers `written` ended off the connection's unsent ones (HTTP/2).
    fn wrote(&mut self, written: &[u8]) {
        let (ended, reset) = self.frames.ended(written);
        for stream in self.frames.resets.drain(..) {
            self.frames_in.closed(stream);
        }
        if let Some(last) = self.frames.goaway_last.take() {
            self.frames_in.going_away(last);
        }
        if self.frames.goaway_error {
            self.activity.protocol_error.store(true, Ordering::Release);
        }
        if ended > 0 {
            self.activity.answers_sent(ended);
        }
        if reset > 0 {
            self.activity.answers_dropped(reset);
        }
    }
}

/// The bytes written in place of hyper's, how many are out, and the length of hyper's
/// buffer they stand for (reported written once all of them are).
pub(super) struct Replacing {
    pub(super) bytes: Vec<u8>,
    pub(super) sent: usize,
    pub(super) stands_for: usize,
}

/// The longest request target (path and query) the `http` crate parses, in bytes
/// (`u16::MAX - 1`): hyper answers a longer one `414`.
pub(super) const URI_LEN_MAX: usize = 65_534;

/// The largest `Content-Length` hyper holds (`u64::MAX - 2`): past it, it answers `431`
/// as for a head over its bounds (and `400` from 2^64 on, which is no number it reads).
pub(super) const CONTENT_LENGTH_READ_MAX: u64 = u64::MAX - 2;

/// The largest head hyper writes for an answer of its own (status line, `connection`,
/// `content-length`, `date`): anything longer is not one.
pub(super) const BARE_HEAD_MAX: usize = 256;

/// What goes on the wire instead of hyper's own answer to a head it could not read, if
/// `head` is one: hyper answers a request line or header field that does not parse with
/// `400`, a target over the `http` crate's [`URI_LEN_MAX`] bytes with `414`, and a head
/// over its read buffer or field count (both well past `header_bytes_max` and
/// `headers_max`) with `431`, each with an empty body and `connection: close`. The
/// contract gives every bad input its JSON error body, so the same answer goes out with
/// one: `400 invalid_request`, or `431 headers_too_large` for both of the last, each
/// saying which limit it is. An answer of the
/// service always has a `content-type`, so it is never taken for one of these; the
/// status and the other fields (`connection: close`, `date`) are kept.
///
/// To a `HEAD` request (`head_request`), the answer has the same status and headers, the
/// JSON's length in `content-length`, and no body (black-box round 138a).
pub(super) fn bare_answer_replacement(
    head: &[u8],
    limits: &Limits,
    head_request: bool,
    tls_hello: bool,
) -> Option<(Vec<u8>, bool)> {
    if head.len() > BARE_HEAD_MAX
        || head.len() < 13
        || !(head.starts_with(b"HTTP/1.1 4") || head.starts_with(b"HTTP/1.0 4"))
        || !head.ends_with(b"\r\n\r\n")
    {
        return None;
    }
    let (version, status) = (&head[..9], &head[9..12]);
    let (too_large, long_target) = match status {
        b"400" => (false, false),
        b"414" => (true, true),
        b"431" => (true, false),
        _ => return None,
    };
    let text = std::str::from_utf8(&head[..head.len() - 4]).ok()?;
    let mut lines = text.split("\r\n");
    lines.next()?;
    let mut kept = Vec::new();
    let mut empty_body = false;
    let mut says_close = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-type") {
            return None;
        }
        if name.eq_ignore_ascii_case("connection") {
            says_close |= value.trim().eq_ignore_ascii_case("close");
        }
        if name.eq_ignore_ascii_case("content-length") {
            if value.trim() != "0" {
                return None;
            }
            empty_body = true;
            continue;
        }
        kept.push(line);
    }
    if !empty_body {
        return None;
    }
    let error = if long_target {
        // Black-box round 218c: told as a head over `header_bytes_max`, which a target
        // this long is not when that limit is set above 64 KiB.
        ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request target (path and query) is longer than {URI_LEN_MAX} bytes, the most this server reads"
            ),
        )
    } else if too_large {
        // hyper gives the same answer to a `Content-Length` too large for it to hold
        // (2^64 - 2 and 2^64 - 1): said too (black-box round 249c: told as a long head).
        ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request head is over {} bytes or has more than {} header fields, or its Content-Length is over {CONTENT_LENGTH_READ_MAX}, the most this server reads",
                limits.header_bytes_max, limits.headers_max
            ),
        )
    } else if tls_hello {
        // Black-box round 146b: told as a malformed head, where the client only needs to
        // use the other scheme.
        ApiError::new(
            ErrorCode::InvalidRequest,
            "a TLS handshake reached this port, which speaks cleartext HTTP: use http://, not https://",
        )
    } else {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "the request head could not be read as HTTP/1.1 (its request line or a header field is malformed, or its Content-Length is invalid, or repeated with another value)",
        )
    };
    let body = error.to_json();
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(version);
    out.extend_from_slice(if too_large {
        b"431 Request Header Fields Too Large\r\n".as_slice()
    } else {
        b"400 Bad Request\r\n".as_slice()
    });
    for line in kept {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // hyper closes the connection after these, and says so, except in an answer it
    // writes as HTTP/1.0 (after an HTTP/1.0 keep-alive request on the connection), where
    // closing is the default: the answer says it anyway, as every closing answer of the
    // listener does (black-box round 16).
    if !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"content-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    if !head_request {
        out.extend_from_slice(&body);
    }
    Some((out, too_large))
}

impl<I: AsyncWrite + Unpin> Counted<I> {
    /// Starts replacing `buf` if it is one of hyper's bare answers (HTTP/1.x only).
    pub(super) fn check_bare(&mut self, buf: &[u8]) {
        if self.replacing.is_some()
            || buf.len() > BARE_HEAD_MAX
            || !buf.starts_with(b"HTTP/1.")
            || self.activity.h2.load(Ordering::Relaxed)
        {
            return;
        }
        if let Some((bytes, too_large)) =
            bare_answer_replacement(buf, &self.limits, self.head_request, self.tls_hello)
        {
            if too_large {
                if let Some(hook) = &self.on_refused {
                    hook();
                }
            }
            self.replacing = Some(Replacing {
                bytes,
                sent: 0,
                stands_for: buf.len(),
            });
        }
    }

    /// Writes the replacement out; ready with the length of hyper's buffer once it is.
    pub(super) fn poll_replacing(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Option<Poll<io::Result<usize>>> {
        let replacing = self.replacing.as_mut()?;
        while replacing.sent < replacing.bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &replacing.bytes[replacing.sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => replacing.sent += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        let written = replacing.stands_for;
        self.replacing = None;
        Some(Poll::Ready(Ok(written)))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before_len = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before_len);
        if read > 0 {
            let a = &this.activity;
            // Body bytes arriving while HTTP/2 bodies are pending are their progress
            // (DATA frames' data, not PINGs or empty frames): only a connection that sends
            // none while more than BODIES_PENDING_MAX wait is a stalled one (black-box
            // round 112a: bodies arriving slowly, on a slow link, were closed as "none
            // arriving"; round 114a: PINGs passed for progress).
            // Past BODIES_PENDING_MAX, they are progress only when enough streams bring
            // them: all but BODIES_PENDING_MAX of the pending bodies heard from within
            // BODIES_STALL (round 116a: a byte every 200 ms on one stream held 255
            // others for the body budget).
            let pending = a.bodies_pending.load(Ordering::Relaxed);
            let now_us = if pending > 0 { a.now_us() } else { 0 };
            let body = this
                .frames_in
                .body_bytes_at(&buf.filled()[before_len..], now_us);
            // Answers whose stream the client reset once they had begun end here: none of
            // their frames will be written (black-box round 200b).
            let mut reset = 0u32;
            for stream in this.frames_in.resets.drain(..) {
                reset += u32::from(this.frames.reset_by_client(stream));
            }
            if reset > 0 {
                a.answers_dropped(reset);
            }
            // More control frames than the client's allowance: the connection ends here,
            // as on a read error (see `CONTROL_FRAMES_BURST`).
            if this.frames_in.control_over_streams() && this.frames_in.control_flood(a.now_us()) {
                a.flooded.store(true, Ordering::Release);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP/2 control frame flood",
                )));
            }
            if body > 0 && pending > 0 {
                let enough = pending <= BODIES_PENDING_MAX
                    || this.frames_in.streams_heard(now_us) as u64 + u64::from(BODIES_PENDING_MAX)
                        >= u64::from(pending);
                if enough {
                    a.bodies_progress_us.store(now_us, Ordering::Release);
                }
            }
            let before = a.bytes_in.fetch_add(read as u64, Ordering::Relaxed);
            // The first bytes after the last finished request: a new head starts, and its
            // budget counts from now (not from the end of the request before, which may
            // lie a long, legitimate idle time back).
            if before == a.bytes_at_finish.load(Ordering::Relaxed) {
                a.head_starts();
                let first = &mut buf.filled_mut()[before_len..];
                this.head_request = is_head_request(first);
                // The connection's first bytes: a TLS record (handshake, TLS 1.x).
                if before == 0 {
                    this.tls_hello = first.starts_with(&[0x16, 0x03]);
                } else {
                    spoil_late_preface(first);
                }
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_bare(buf);
        if let Some(polled) = this.poll_replacing(cx) {
            return polled;
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.wrote(&buf[..n.min(buf.len())]);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            this.check_bare(only);
        }
        if let Some(polled) = this.poll_replacing(cx) {
            return polled;
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            for b in bufs {
                if n == 0 {
                    break;
                }
                let take = n.min(b.len());
                this.wrote(&b[..take]);
                n -= take;
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The HTTP/2 preface as a later request of an HTTP/1.1 connection (`first`: the bytes
/// that begin a head after an answer) is made a head that does not parse: hyper closes
/// the connection on a preface without a word (it is how a server that speaks both tells
/// HTTP/2 at a connection's start), and a head that does not parse gets the contract's
/// JSON `400` (black-box round 223c: an empty reply). Its first byte becomes `(`, which
/// no method has. The preface at a connection's start is HTTP/2 and is not touched; one
/// split across two reads (its first 16 bytes not in one) is not seen.
pub(super) fn spoil_late_preface(first: &mut [u8]) {
    if first.starts_with(&PREFACE[..16]) {
        first[0] = b'(';
    }
}

/// Whether the first bytes of an HTTP/1.x head ask `HEAD` (empty lines before a request
/// line are allowed, RFC 9112 2.2). A method split across two reads is not seen.
pub(super) fn is_head_request(first: &[u8]) -> bool {
    let start = first.iter().position(|b| !matches!(b, b'\r' | b'\n'));
    start.is_some_and(|i| first[i..].starts_with(b"HEAD "))
}

/// Accept errors that concern one peer only (it gave up before we accepted).
pub(super) fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
