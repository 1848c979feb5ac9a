//! The load generator's HTTP publisher, made cheap so a load measures the
//! server: a publish is a body written with `format!` and sent on one of a
//! fixed set of keep-alive HTTP/1.1 connections (hyper's plain client
//! connection, no pool), each driven by one task, and answered by its status
//! alone. Before this, each publish spawned a task, built a JSON value, went
//! through `reqwest`'s pool and parsed the answer: about as much CPU as the
//! server spent on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

/// One publish: where, and what.
pub struct Publish {
    pub path: String,
    pub body: String,
}

/// Connections to one server and the tasks that drive them.
pub struct Publisher {
    lanes: Vec<mpsc::Sender<Publish>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    next: usize,
}

/// What the publisher counted.
#[derive(Default)]
pub struct Counts {
    pub answered: AtomicU64,
    pub refused: AtomicU64,
}

impl Publisher {
    /// Opens `connections` connections to `addr` (`host:port`).
    pub async fn connect(addr: &str, connections: usize, counts: Arc<Counts>) -> Result<Self, String> {
        let mut lanes = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let (tx, mut rx) = mpsc::channel::<Publish>(8);
            let (host, counts) = (addr.to_owned(), counts.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(publish) = rx.recv().await {
                    let request = hyper::Request::post(publish.path)
                        .header("host", &host)
                        .header("authorization", "Bearer dev-publish-key")
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(publish.body)));
                    let answered = match request {
                        Ok(request) if sender.ready().await.is_ok() => match sender.send_request(request).await {
                            Ok(response) => {
                                let ok = response.status().is_success();
                                let _ = response.into_body().collect().await;
                                ok
                            }
                            Err(_) => false,
                        },
                        _ => false,
                    };
                    let counter = if answered { &counts.answered } else { &counts.refused };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
            lanes.push(tx);
        }
        Ok(Self { lanes, tasks, next: 0 })
    }

    /// Queues `publish` on the next connection, waiting while its queue is full.
    pub async fn send(&mut self, publish: Publish) -> Result<(), String> {
        let lane = &self.lanes[self.next % self.lanes.len()];
        self.next = self.next.wrapping_add(1);
        lane.send(publish).await.map_err(|_| "a publishing connection stopped".to_owned())
    }

    /// Waits until everything queued is answered.
    pub async fn finish(self) {
        drop(self.lanes);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
