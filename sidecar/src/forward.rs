//! Moving a request body up and a response down, shared by both listeners.
//!
//! The response is streamed: its header goes to the client with the first body bytes, or as
//! soon as the upstream makes the client wait, and each body read is written on at once,
//! straight from the upstream connection's buffer. The request body is read from the client
//! while it is sent, and kept (copied) when the table lets a retry send it again.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use crate::h1::client::Client;
use crate::h1::server::{Out, Server};
use crate::http::Reframe;

/// The request body, as the tries of one request send it.
pub struct ReqBody {
    /// Whether the request has a body at all.
    present: bool,
    /// Chunks read so far, kept for a retry; `None` once the body cannot be replayed.
    kept: Option<Vec<Bytes>>,
    /// Bytes have been read from the client (so without `kept` they cannot be sent again).
    consumed: bool,
    /// The whole body has been read from the client.
    done: bool,
    /// The client waits for `100 Continue` before it sends the body.
    expects_continue: bool,
}

/// Which side broke while the body was being moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Reading from the client failed: the client is gone or sent a malformed body.
    Client,
    /// Writing to the upstream failed.
    Upstream,
}

impl ReqBody {
    /// The body of the request `s` has read; `replay_limit` is the largest body kept for a
    /// retry (`None`: never kept, as on the inbound side).
    pub fn of(s: &Server, replay_limit: Option<u64>) -> ReqBody {
        let req = s.req_header();
        let crate::http::Framing {
            has_body: present,
            length: len,
        } = crate::http::framing(req);
        let keep = present && replay_limit.is_some_and(|limit| len.is_some_and(|l| l <= limit));
        let expects_continue = present
            && req
                .get("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        ReqBody {
            present,
            kept: keep.then(Vec::new),
            consumed: false,
            done: !present,
            expects_continue,
        }
    }

    /// No body (hedged tries, which never have one).
    pub fn none() -> ReqBody {
        ReqBody {
            present: false,
            kept: None,
            consumed: false,
            done: true,
            expects_continue: false,
        }
    }

    /// Whether another try can send the whole body again.
    pub fn replayable(&self) -> bool {
        !self.present || self.kept.is_some() || !self.consumed
    }

    pub fn present(&self) -> bool {
        self.present
    }

    /// The client's `Expect: 100-continue` is answered here (as Envoy does by default), so it is
    /// not forwarded.
    pub fn expects_continue(&self) -> bool {
        self.expects_continue
    }

    /// Sends the body on `up`: what was kept from an earlier try, then the rest as the client
    /// sends it.
    pub async fn send(&mut self, down: &mut Server, up: &mut Client) -> Result<(), BodyError> {
        if !self.present {
            // The request header goes out now, on its own.
            return up.finish_body().await.map_err(|_| BodyError::Upstream);
        }
        if let Some(kept) = &self.kept {
            for chunk in kept {
                up.write_body(chunk)
                    .await
                    .map_err(|_| BodyError::Upstream)?;
            }
        }
        if !self.done {
            if self.expects_continue {
                self.expects_continue = false;
                down.write_continue().await.map_err(|_| BodyError::Client)?;
            }
            loop {
                match down.read_body().await {
                    Ok(Some(chunk)) => {
                        self.consumed = true;
                        let sent = up.write_body(chunk).await;
                        if let Some(kept) = self.kept.as_mut() {
                            kept.push(Bytes::copy_from_slice(chunk));
                        }
                        sent.map_err(|_| BodyError::Upstream)?;
                    }
                    Ok(None) => {
                        self.done = true;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the request body from the client");
                        return Err(BodyError::Client);
                    }
                }
            }
        }
        up.finish_body().await.map_err(|_| BodyError::Upstream)?;
        Ok(())
    }
}

/// How forwarding a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// The whole response reached the client.
    Complete,
    /// The upstream broke off in the body (or its reads timed out): the client's connection is
    /// closed so it cannot take a short body for a whole one.
    UpstreamBroke,
    /// The client went away.
    ClientGone,
}

/// Writes the upstream's response to the client, with `fields` (the `x-mesh-*` ones) in place
/// of any the upstream sent, and streams the body. A body of unknown length (chunked or
/// close-delimited upstream) is sent chunked to an HTTP/1.1 client and close-delimited to an
/// HTTP/1.0 one (RFC 9112 6.3). Each body read waits up to `idle` for data; what has been read
/// is sent before waiting, so a slow body reaches the client as it comes.
pub async fn response(
    down: &mut Server,
    up: &mut Client,
    fields: &[(HeaderName, HeaderValue)],
    idle: Duration,
) -> Forwarded {
    let resp = up.response().expect("a response header was read");
    let req = down.req_header();
    let bodiless = matches!(resp.status, 100..=199 | 204 | 304) || req.method == http::Method::HEAD;
    let http10 = req.http10;
    // `None` when a Transfer-Encoding overrides the length (the parse saw to that).
    let (out, reframe) = match resp.framing.content_length {
        _ if bodiless => (Out::Empty, Reframe::Same),
        Some(n) => (Out::Length(n), Reframe::Same),
        None if http10 => (Out::Close, Reframe::Close),
        None => (Out::Chunked, Reframe::Chunked),
    };
    down.begin_response(resp.status, resp.reason(), out, |o| {
        crate::http::write_downstream_fields(resp, fields, reframe, o)
    });
    loop {
        if !up.body_ready() && down.flush().await.is_err() {
            return Forwarded::ClientGone;
        }
        match up.read_body(idle).await {
            Ok(Some(chunk)) => {
                if down.write_body(chunk).await.is_err() {
                    return Forwarded::ClientGone;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "the upstream broke off its response body");
                down.set_keep_alive(false);
                let _ = down.flush().await;
                return Forwarded::UpstreamBroke;
            }
        }
    }
    match down.finish().await {
        Ok(()) => Forwarded::Complete,
        Err(_) => Forwarded::ClientGone,
    }
}
