//! What a buyer's server may send on a connection before the exchange ends it, read above
//! TLS (the bytes hyper parses):
//!
//! - **HTTP/1.1:** at most [`H1_READ_PER_REQUEST_MAX`] bytes after each request (its
//!   answer's head and body, and any `1xx` answers before it). hyper reads `1xx` answers
//!   in a loop as long as bytes keep coming, and a buyer that wrote `103 Early Hints`
//!   without pause kept a worker thread parsing millions of them for a second or more,
//!   past every timer on that thread: every seller's auctions on it waited (black-box
//!   round 241c: pings answered in 0.6-2.2 s, `/healthz` in 1.4 s).
//! - **HTTP/2:** at most as many control frames (SETTINGS, each setting in one, PING,
//!   WINDOW_UPDATE, PRIORITY, RST_STREAM, GOAWAY, frames of unknown types; h2 itself
//!   ends the connection at a PUSH_PROMISE, push being off)
//!   as the exchange's own listeners allow a client ([`CONTROL_FRAMES_BURST`], and
//!   [`CONTROL_FRAMES_PER_STREAM`] for each answer begun, [`CONTROL_FRAMES_PER_SECOND`]
//!   for each second connected). Round 241c: SETTINGS frames of 2,730 settings each, sent
//!   without pause, took half a core for as long as the buyer sent them, and the
//!   connection was never closed.
//!
//! Past either bound the connection's next read fails: the call on it, if any, ends as
//! an `error`, the connection is dropped, and the next call opens a new one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bidder_sdk::listener::{
    CONTROL_FRAMES_BURST, CONTROL_FRAMES_PER_SECOND, CONTROL_FRAMES_PER_STREAM,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes an HTTP/1.1 buyer may send after a request before the next one: four
/// times an answer of [`ANSWER_BYTES_MAX`](proto::buyer::ANSWER_BYTES_MAX), so an answer
/// in any sane framing is judged by its body's limit (`too_large`) first. Parsing this
/// many bytes of `103`s (about 6,900 of them) takes a worker a few milliseconds.
pub const H1_READ_PER_REQUEST_MAX: u64 = 256 << 10;

/// HTTP/2 frame types (RFC 9113 6).
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const CONTINUATION: u8 = 9;

/// Which bound a connection is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// The count behind the bounds, for one connection.
#[derive(Debug)]
pub struct Allowance {
    protocol: Protocol,
    /// HTTP/1.1: bytes read since the last request was written.
    since_request: u64,
    /// HTTP/2: the current frame's head, as much of it as has come.
    head: [u8; 9],
    head_len: usize,
    /// HTTP/2: payload bytes of the current frame still to skip.
    skip: usize,
    /// HTTP/2: control frames read, answers begun (HEADERS on a stream above every one
    /// before), and the highest such stream.
    control: u64,
    answers: u64,
    last_stream: u32,
    opened: tokio::time::Instant,
}

impl Allowance {
    pub fn new(protocol: Protocol) -> Allowance {
        Allowance {
            protocol,
            since_request: 0,
            head: [0; 9],
            head_len: 0,
            skip: 0,
            control: 0,
            answers: 0,
            last_stream: 0,
            opened: tokio::time::Instant::now(),
        }
    }

    /// The connection wrote bytes (HTTP/1.1: a request; hyper writes the next one only
    /// once the answer before it has been read).
    pub fn wrote(&mut self) {
        self.since_request = 0;
    }

    /// The connection read `bytes`: `Err` (why, in words) once they pass its bound.
    pub fn read(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self.protocol {
            Protocol::Http1 => {
                self.since_request = self.since_request.saturating_add(bytes.len() as u64);
                if self.since_request > H1_READ_PER_REQUEST_MAX {
                    return Err(format!(
                        "its server sent more than {H1_READ_PER_REQUEST_MAX} bytes after one request (1xx answers without end, or bytes nobody asked for)"
                    ));
                }
                Ok(())
            }
            Protocol::Http2 => {
                self.frames(bytes);
                let secs = self.opened.elapsed().as_secs();
                let allowed = CONTROL_FRAMES_BURST
                    .saturating_add(self.answers.saturating_mul(CONTROL_FRAMES_PER_STREAM))
                    .saturating_add(secs.saturating_mul(CONTROL_FRAMES_PER_SECOND));
                if self.control > allowed {
                    return Err(format!(
                        "its HTTP/2 server sent {} control frames (SETTINGS, PING, WINDOW_UPDATE, ...), past the allowance of {allowed} for {} answers in {secs} s",
                        self.control, self.answers
                    ));
                }
                Ok(())
            }
        }
    }

    /// Reads the frame heads in `bytes` (payloads skipped).
    fn frames(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.head_len).min(bytes.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
            self.head_len += n;
            bytes = &bytes[n..];
            if self.head_len < 9 {
                break;
            }
            self.head_len = 0;
            let h = self.head;
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            self.skip = len;
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            match h[3] {
                DATA | CONTINUATION => {}
                HEADERS => {
                    if stream > self.last_stream {
                        self.last_stream = stream;
                        self.answers += 1;
                    }
                }
                // Each setting is 6 bytes.
                SETTINGS => self.control = self.control.saturating_add(1 + (len / 6) as u64),
                _ => self.control = self.control.saturating_add(1),
            }
        }
    }
}

/// A connection held to its [`Allowance`]: a read past it fails (`ConnectionAborted`),
/// and so does every read after that.
pub struct Guarded<I> {
    inner: I,
    allowance: Allowance,
    over: bool,
    /// The buyer's host, for `said`.
    host: Box<str>,
    /// Says why the connection passed its bound (the host, the reason), once.
    said: fn(&str, &str),
    /// HTTP/1.1: the bytes read since the last request was written, for the pool
    /// ([`Guarded::with_heard`]).
    heard: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl<I> Guarded<I> {
    pub fn new(inner: I, protocol: Protocol, host: &str, said: fn(&str, &str)) -> Guarded<I> {
        Guarded {
            inner,
            allowance: Allowance::new(protocol),
            over: false,
            host: host.into(),
            said,
            heard: None,
        }
    }

    /// Keeps `heard` at the count of bytes read since the last request was written
    /// (HTTP/1.1), so the connection's owner can tell a connection that ended before any
    /// answer came from one that ended in the middle of one. Set when a write takes
    /// bytes and when a read brings some; the owner sets it to 0 before a request, so a
    /// request whose write fails (a reset) and whose connection then ends reads as
    /// unanswered.
    pub fn with_heard(mut self, heard: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.heard = Some(heard);
        self
    }

    fn note_heard(&self) {
        if let Some(heard) = &self.heard {
            heard.store(
                self.allowance.since_request,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

impl<I> Guarded<I> {
    /// A write that took bytes begins the next request's count.
    fn note_write(&mut self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.allowance.wrote();
            self.note_heard();
        }
    }
}

fn aborted(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, why)
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.over {
            return Poll::Ready(Err(aborted(
                "the connection passed its bound before".into(),
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if let Err(why) = this.allowance.read(&buf.filled()[before..]) {
                this.over = true;
                (this.said)(&this.host, &why);
                // The bytes read are not handed on: the connection ends here.
                buf.set_filled(before);
                return Poll::Ready(Err(aborted(why)));
            }
            // Bytes, not an end of input: a request whose write failed (the count not
            // begun again) reads as unanswered ([`Guarded::with_heard`]).
            if buf.filled().len() > before {
                this.note_heard();
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: usize) -> Vec<u8> {
        let mut f = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            0,
        ];
        f.extend_from_slice(&stream.to_be_bytes());
        f.resize(9 + payload, 0);
        f
    }

    #[test]
    fn an_http1_answer_is_bounded_per_request_not_per_connection() {
        let mut a = Allowance::new(Protocol::Http1);
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..4 {
            a.read(&chunk).unwrap();
        }
        assert!(a.read(b"y").unwrap_err().contains("more than 262144 bytes"));
        // A request written: the next answer has its own bound.
        let mut a = Allowance::new(Protocol::Http1);
        for _ in 0..100 {
            a.read(&chunk).unwrap();
            a.wrote();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn http2_control_frames_past_the_allowance_end_the_connection() {
        let mut a = Allowance::new(Protocol::Http2);
        // The server's SETTINGS (6 settings) and its ACK, then one answer per stream with
        // a WINDOW_UPDATE and a PING each: an honest connection, for as long as it lasts.
        let mut bytes = frame(SETTINGS, 0, 36);
        bytes.extend(frame(SETTINGS, 0, 0));
        a.read(&bytes).unwrap();
        for stream in (1..4_000u32).step_by(2) {
            let mut f = frame(HEADERS, stream, 20);
            f.extend(frame(DATA, stream, 100));
            f.extend(frame(8, 0, 4));
            f.extend(frame(6, 0, 8));
            // Split anywhere: frame heads across reads.
            let (x, y) = f.split_at(5);
            a.read(x).unwrap();
            a.read(y).unwrap();
        }
        // A flood of SETTINGS of 2,730 settings each: ended within a few frames.
        let mut a = Allowance::new(Protocol::Http2);
        let flood = frame(SETTINGS, 0, 2_730 * 6);
        let mut n = 0;
        let why = loop {
            n += 1;
            if let Err(why) = a.read(&flood) {
                break why;
            }
        };
        assert_eq!(n, 1, "1 + 2,730 control frames are past 1,000");
        assert!(why.contains("control frames"), "{why}");
        // PINGs: 1,000 at once pass; the 1,001st does not, until time adds to the
        // allowance.
        let mut a = Allowance::new(Protocol::Http2);
        let ping = frame(6, 0, 8);
        for _ in 0..1_000 {
            a.read(&ping).unwrap();
        }
        assert!(a.read(&ping).is_err());
        let mut a = Allowance::new(Protocol::Http2);
        for _ in 0..1_000 {
            a.read(&ping).unwrap();
        }
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        for _ in 0..100 {
            a.read(&ping).unwrap();
        }
        assert!(a.read(&ping).is_err());
    }

    /// A read past the bound fails, hands on none of its bytes, and so does every read
    /// after it.
    #[tokio::test]
    async fn a_read_past_the_bound_fails_and_stays_failed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, client) = tokio::io::duplex(4 << 20);
        let mut guarded = Guarded::new(client, Protocol::Http1, "b", |_, _| {});
        guarded.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let early = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        let flood: Vec<u8> = early
            .iter()
            .copied()
            .cycle()
            .take(early.len() * 40_000)
            .collect();
        server.write_all(&flood).await.unwrap();
        let mut buf = vec![0; 64 * 1024];
        let mut read = 0u64;
        let err = loop {
            match guarded.read(&mut buf).await {
                Ok(n) => read += n as u64,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(read <= H1_READ_PER_REQUEST_MAX, "{read}");
        assert!(guarded.read(&mut buf).await.is_err());
    }
}
