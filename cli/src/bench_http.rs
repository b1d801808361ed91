//! The load generator's HTTP: many submissions in flight on a few threads.
//!
//! Why not `bizra-client`'s blocking calls on one thread per worker: on
//! this project's 2-core machines the nodes and the load generator share
//! the cores, and 500 blocking workers cost 500 threads, each woken by the
//! kernel for every answer (docs/PERFORMANCE.md, "The load generator on
//! async tasks"). Here each worker is a task with its own keep-alive
//! connection per node (hyper, HTTP/1.1). What to retry, when, and where is
//! still `bizra-client`'s: each submission drives its [`Attempts`] loop,
//! so retries, backoff, failover and breakers match a real client's.

use std::time::Duration;

use bizra_client::{answer_from_http, Attempts, Client, ClientError, Next, Outcome, SubmitReceipt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// The largest answer read: a submission's answer is a few hundred bytes,
/// so anything this big is not one.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// One worker's open connections, one per node URL it has used.
#[derive(Default)]
pub(crate) struct Connections {
    open: Vec<Connection>,
}

/// A keep-alive connection to one node, with its URL parsed once, when
/// the connection opened, not again for every request on it.
struct Connection {
    url: String,
    uri: http::Uri,
    host: http::HeaderValue,
    sender: SendRequest<Full<Bytes>>,
}

impl Connections {
    /// Submits `body` (a `poi_submit` request made by
    /// [`Client::submit_body`]) through `client`'s retry loop.
    pub(crate) async fn submit(&mut self, client: &Client, body: Bytes) -> Outcome<SubmitReceipt> {
        let connect_timeout = client.policy().connect_timeout;
        let mut attempts: Attempts<'_> = client.attempts();
        loop {
            match attempts.next_step()? {
                Next::Wait(wait) => tokio::time::sleep(wait).await,
                Next::Post { url, timeout } => {
                    let posted = self.post(url, body.clone(), timeout, connect_timeout).await;
                    if let Some(outcome) = attempts.posted_submit(posted) {
                        return outcome;
                    }
                }
            }
        }
    }

    /// One POST within `timeout`, sorted the way the blocking client sorts
    /// its answers: a connection-level failure is a transport error (retry
    /// elsewhere), the rest is judged by [`answer_from_http`].
    async fn post(
        &mut self,
        url: &str,
        body: Bytes,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<serde_json::Value, ClientError> {
        let exchange = self.exchange(url, body, connect_timeout);
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(transport(url, format!("timed out after {timeout:?}"), true)),
        };
        if matches!(result, Err(ClientError::Transport { .. })) {
            // The connection's state is unknown now; the next attempt on
            // this node starts a fresh one.
            self.open.retain(|c| c.url != url);
        }
        result
    }

    async fn exchange(
        &mut self,
        url: &str,
        body: Bytes,
        connect_timeout: Duration,
    ) -> Result<serde_json::Value, ClientError> {
        // A keep-alive connection the node has closed since (it answered
        // `connection: close`, or restarted) is replaced before use, not
        // counted as a failed attempt.
        let reused = match self.open.iter().position(|c| c.url == url) {
            Some(p) => {
                let ready = self.open[p].sender.ready().await.is_ok();
                if !ready {
                    self.open.swap_remove(p);
                }
                ready.then_some(p)
            }
            None => None,
        };
        let position = match reused {
            Some(p) => p,
            None => {
                let connection = open(url, connect_timeout).await?;
                self.open.push(connection);
                self.open.len() - 1
            }
        };
        let connection = &mut self.open[position];
        let request = http::Request::post(connection.uri.clone())
            .header(http::header::HOST, connection.host.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| config_error(format!("request to `{url}`: {e}")))?;
        let sender = &mut connection.sender;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport(url, format!("sending: {e}"), false))?;
        let status = response.status().as_u16();
        let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                transport(
                    url,
                    format!("reading the answer (at most {MAX_ANSWER_BYTES} bytes): {e}"),
                    false,
                )
            })?
            .to_bytes();
        answer_from_http(url, status, &answer)
    }
}

/// A new HTTP/1.1 connection to the node at `url`, ready for a request;
/// its driver runs as its own task and ends when the sender is dropped.
async fn open(url: &str, connect_timeout: Duration) -> Result<Connection, ClientError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| config_error(format!("`{url}` is not a URL: {e}")))?;
    let authority = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) => a.as_str().to_string(),
        _ => {
            return Err(config_error(format!(
                "`{url}`: bench speaks plain http:// only"
            )))
        }
    };
    let host = http::HeaderValue::from_str(&authority)
        .map_err(|e| config_error(format!("`{url}`: host {e}")))?;
    let stream = match tokio::time::timeout(
        connect_timeout,
        tokio::net::TcpStream::connect(authority.as_str()),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(transport(url, format!("connect: {e}"), false)),
        Err(_) => {
            return Err(transport(
                url,
                format!("connect timed out after {connect_timeout:?}"),
                true,
            ))
        }
    };
    // Requests are small and answered at once; do not let Nagle hold them.
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(url, format!("handshake: {e}"), false))?;
    tokio::spawn(async move {
        // Its error is the next request's error on this connection.
        let _ = connection.await;
    });
    sender
        .ready()
        .await
        .map_err(|e| transport(url, format!("connection: {e}"), false))?;
    Ok(Connection {
        url: url.to_string(),
        uri,
        host,
        sender,
    })
}

fn transport(url: &str, message: String, timeout: bool) -> ClientError {
    ClientError::Transport {
        url: url.to_string(),
        message,
        timeout,
    }
}

fn config_error(message: String) -> ClientError {
    ClientError::Config {
        field: "rpc",
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use bizra_client::{Policy, Wait};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A scripted node: each request gets the next (status, body, close
    /// the connection after it) answer. Counts accepted connections.
    struct Script {
        answers: Mutex<VecDeque<(u16, String, bool)>>,
        accepted: AtomicUsize,
    }

    async fn scripted(answers: Vec<(u16, String, bool)>) -> (String, Arc<Script>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let script = Arc::new(Script {
            answers: Mutex::new(answers.into()),
            accepted: AtomicUsize::new(0),
        });
        let s = script.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, s.clone()));
            }
        });
        (url, script)
    }

    async fn serve(mut stream: TcpStream, script: Arc<Script>) {
        let mut buf = Vec::new();
        loop {
            // Read one request: the head, then content-length bytes.
            let (head_end, length) = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (end + 4, length);
                }
                if !read_more(&mut stream, &mut buf).await {
                    return;
                }
            };
            while buf.len() < head_end + length {
                if !read_more(&mut stream, &mut buf).await {
                    return;
                }
            }
            buf.drain(..head_end + length);
            let Some((status, body, close)) = script.answers.lock().unwrap().pop_front() else {
                return;
            };
            let connection = if close { "connection: close\r\n" } else { "" };
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n{connection}\r\n{body}",
                body.len()
            );
            if stream.write_all(answer.as_bytes()).await.is_err() || close {
                return;
            }
        }
    }

    /// Appends what the stream has; false at its end or on an error.
    async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn receipt() -> String {
        json!({"jsonrpc": "2.0", "id": 1, "result": {
            "id": format!("0x{}", "ab".repeat(32)), "status": "committed",
            "height": 7, "index": 0, "duplicate": false}})
        .to_string()
    }

    fn client(urls: &[&str]) -> Client {
        let policy = Policy {
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            ..Policy::default()
        };
        Client::new(urls.iter().copied(), policy).unwrap()
    }

    fn body(client: &Client) -> Bytes {
        client
            .submit_body(&json!({"attester": "0x00"}), Wait::Committed)
            .into()
    }

    #[tokio::test]
    async fn a_refused_submission_is_retried_on_the_same_connection() {
        let overloaded = json!({"jsonrpc": "2.0", "id": 1, "error": {
            "code": -32006, "message": "queue full",
            "data": {"code": "OVERLOADED", "retry_after_ms": 1}}})
        .to_string();
        let (url, script) = scripted(vec![(200, overloaded, false), (200, receipt(), false)]).await;
        let client = client(&[&url]);
        let reply = Connections::default()
            .submit(&client, body(&client))
            .await
            .unwrap();
        assert_eq!(reply.value.height, Some(7));
        assert_eq!(reply.stats.attempts, 2);
        assert_eq!(script.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_final_error_is_not_retried() {
        let invalid = json!({"jsonrpc": "2.0", "id": 1, "error": {
            "code": -32001, "message": "bad signature", "data": {"code": "INVALID_SIGNATURE"}}})
        .to_string();
        let (url, _script) = scripted(vec![(200, invalid, false), (200, receipt(), false)]).await;
        let client = client(&[&url]);
        let failure = Connections::default()
            .submit(&client, body(&client))
            .await
            .unwrap_err();
        assert_eq!(failure.error.name(), "INVALID_SIGNATURE");
        assert_eq!(failure.stats.attempts, 1);
    }

    #[tokio::test]
    async fn a_closed_keep_alive_connection_is_replaced_without_a_retry() {
        let (url, script) = scripted(vec![(200, receipt(), true), (200, receipt(), false)]).await;
        let client = client(&[&url]);
        let mut connections = Connections::default();
        for _ in 0..2 {
            let reply = connections.submit(&client, body(&client)).await.unwrap();
            assert_eq!(reply.stats.attempts, 1);
        }
        assert_eq!(script.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_dead_node_and_a_5xx_without_json_fail_over_to_the_next() {
        // A port that was free a moment ago: nothing listens there.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        };
        let (url, _script) = scripted(vec![(200, receipt(), false)]).await;
        let client = client(&[&dead, &url]);
        let reply = Connections::default()
            .submit(&client, body(&client))
            .await
            .unwrap();
        assert_eq!((reply.stats.attempts, reply.stats.failovers), (2, 1));
        assert_eq!(reply.stats.endpoint.as_deref(), Some(url.as_str()));

        let (proxy, _s1) = scripted(vec![(502, "bad gateway".into(), false)]).await;
        let (live, _s2) = scripted(vec![(200, receipt(), false)]).await;
        let client = self::client(&[&proxy, &live]);
        let reply = Connections::default()
            .submit(&client, body(&client))
            .await
            .unwrap();
        assert_eq!(reply.stats.endpoint.as_deref(), Some(live.as_str()));
    }

    #[tokio::test]
    async fn an_oversized_answer_is_a_transport_error_not_a_read_without_end() {
        let huge = "x".repeat(MAX_ANSWER_BYTES + 1);
        let (url, _script) = scripted(vec![(200, huge, false)]).await;
        let client = Client::new(
            [url.as_str()],
            Policy {
                max_attempts: 1,
                ..Policy::default()
            },
        )
        .unwrap();
        let failure = Connections::default()
            .submit(&client, body(&client))
            .await
            .unwrap_err();
        assert!(
            failure.error.to_string().contains("at most 1048576 bytes"),
            "{}",
            failure.error
        );
    }
}
