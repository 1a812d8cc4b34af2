//! RequestMirror, fire and forget: a copy of the request goes to the mirror backend,
//! body included, without ever slowing the real request. The body is teed chunk by chunk
//! through a small bounded channel; if the mirror cannot keep up, its copy is abandoned
//! (the connection is dropped mid-body, so the mirror never sees a truncated body as
//! complete). The mirror's response is read and discarded; failures are debug logs.

use bytes::Bytes;
use pingora::http::RequestHeader;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub enum BodyChunk {
    Data(Bytes),
    End,
}

/// The request side of one mirror: body chunks go here.
pub struct MirrorBody {
    tx: Option<mpsc::Sender<BodyChunk>>,
}

impl MirrorBody {
    /// Copies a chunk; never waits. A full channel abandons this mirror copy.
    pub fn tee(&mut self, chunk: &Bytes, end: bool) {
        let Some(tx) = &self.tx else { return };
        let ok = (chunk.is_empty() || tx.try_send(BodyChunk::Data(chunk.clone())).is_ok())
            && (!end || tx.try_send(BodyChunk::End).is_ok());
        if !ok || end {
            self.tx = None;
        }
    }
}

/// Starts the mirror request. `has_body`: the request announces a body, which will be
/// fed through the returned `MirrorBody`.
pub fn send(addr: SocketAddr, req: &RequestHeader, host: &str, has_body: bool) -> MirrorBody {
    let mut head = format!(
        "{} {} HTTP/1.1\r\n",
        req.method,
        req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    for (name, value) in req.headers.iter() {
        let n = name.as_str();
        if matches!(
            n,
            "host"
                | "connection"
                | "content-length"
                | "transfer-encoding"
                | "keep-alive"
                | "upgrade"
                | "expect"
        ) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    let framing = if has_body {
        "transfer-encoding: chunked"
    } else {
        "content-length: 0"
    };
    head.push_str(&format!(
        "host: {host}\r\n{framing}\r\nconnection: close\r\n\r\n"
    ));
    let (tx, mut rx) = mpsc::channel::<BodyChunk>(16);
    tokio::spawn(async move {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(head.as_bytes()).await?;
            if has_body {
                loop {
                    match rx.recv().await {
                        Some(BodyChunk::Data(d)) => {
                            stream
                                .write_all(format!("{:x}\r\n", d.len()).as_bytes())
                                .await?;
                            stream.write_all(&d).await?;
                            stream.write_all(b"\r\n").await?;
                        }
                        Some(BodyChunk::End) => {
                            stream.write_all(b"0\r\n\r\n").await?;
                            break;
                        }
                        None => {
                            return Err(std::io::Error::other(
                                "mirror abandoned: it could not keep up",
                            ))
                        }
                    }
                }
            }
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(30), attempt).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "mirror request failed"),
            Err(_) => tracing::debug!(%addr, "mirror request timed out"),
        }
    });
    MirrorBody {
        tx: has_body.then_some(tx),
    }
}
