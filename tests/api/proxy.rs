//! A TCP proxy the tests can cut: in front of PostgreSQL or Redis, to show what the
//! service does when a dependency stops answering or refuses connections.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow both ways.
    Open,
    /// Connections stay up but nothing is delivered: a database that stopped answering.
    Blackhole,
    /// Every connection is closed and new ones are refused at once.
    Refuse,
}

pub struct TcpProxy {
    pub port: u16,
    link: watch::Sender<Link>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, watcher) = watch::channel(Link::Open);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watcher.borrow() == Link::Refuse {
                    continue;
                }
                tokio::spawn(pipe(client, upstream, watcher.clone()));
            }
        });
        Self { port, link }
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

async fn pipe(client: TcpStream, upstream: SocketAddr, link: watch::Receiver<Link>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut refused = link.clone();
    tokio::select! {
        () = forward(client_read, server_write, link.clone()) => {}
        () = forward(server_read, client_write, link) => {}
        _ = refused.wait_for(|l| *l == Link::Refuse) => {}
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if link.wait_for(|l| *l != Link::Blackhole).await.is_err() || *link.borrow() == Link::Refuse
        {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

pub fn upstream_and_proxied_url(url: &str, proxy_port: u16) -> (SocketAddr, String) {
    let mut parsed = url::Url::parse(url).unwrap();
    let host = parsed.host_str().unwrap().to_owned();
    let port = parsed.port().unwrap_or(5432);
    let upstream = format!(
        "{}:{port}",
        if host == "localhost" {
            "127.0.0.1"
        } else {
            &host
        }
    )
    .parse()
    .unwrap();
    parsed.set_port(Some(proxy_port)).unwrap();
    (upstream, parsed.to_string())
}
