//! RequestMirror: a copy of the request head goes to the mirror backend, fire and forget.
//! The response is read and discarded; failures are logged at debug level only.

use pingora::http::RequestHeader;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn send(addr: SocketAddr, req: &RequestHeader, host: &str) {
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    for (name, value) in req.headers.iter() {
        let n = name.as_str();
        if matches!(n, "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade") {
            continue;
        }
        if let Ok(v) = value.to_str() {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    head.push_str(&format!("host: {host}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"));
    tokio::spawn(async move {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(head.as_bytes()).await?;
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
}
